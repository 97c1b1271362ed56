"""qk_sniffer: capture the query/key vectors a Hugging Face decoder model uses in attention.

From the command line: ``python -m qk_sniffer`` (Hydra; see the README). From Python, on a model you
already loaded (or the offline default: ``model, tokenizer = qk_sniffer.embedded_model()``)::

    import qk_sniffer

    with qk_sniffer.attach(model, tokenizer, sampler="all", layers=[0]) as cap:
        cap.run(["some text", "another text"])
    tables = cap.tables()       # {(layer, head, "q" | "k"): pyarrow.Table}
    cap.write("out")            # Parquet layout + dataset card, as the CLI writes them

    rows = qk_sniffer.load("out", "l00h00q")   # numpy: rows.vectors (N, head_dim), rows.positions, ...

``help(qk_sniffer.attach)`` and ``help(qk_sniffer.Recording)`` describe every option.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .core.errors import UserError

if TYPE_CHECKING:
    from .analysis.loading import load
    from .api import Recording, attach
    from .capture.tap import CaptureSessionActiveError
    from .pipeline.embedded import embedded_model

__all__ = ["Recording", "CaptureSessionActiveError", "UserError", "attach", "embedded_model", "load"]

# Imported on first use: the CLI composes configs (and `--cfg job` prints them) without loading torch.
_LAZY = {
    "attach": "api",
    "Recording": "api",
    "CaptureSessionActiveError": "capture.tap",
    "load": "analysis.loading",
    "embedded_model": "pipeline.embedded",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
