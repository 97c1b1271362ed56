"""What differs between model families, kept to the few facts a config states in a family's own words.

Everything generic (head counts, head_dim, sliding windows, RoPE parameters) is read in :mod:`models`; the
capture itself goes through the one attention-registry seam in :mod:`patching` for every family. This
module only answers three questions the generic reading cannot:

- which layers apply no rotation (their pre-RoPE vectors equal their post-RoPE ones);
- which layers are cross-attention (they attend to image features, never to the text, and are skipped);
- whether a family can be captured exactly at all: the support matrix (``resources/families.json``,
  measured by :mod:`qk_sniffer.sweep` on tiny models of every family) says so, and a family it does not list
  falls back to whether its class routes attention through transformers' ``AttentionInterface``.

Run as ``python -m qk_sniffer.families`` it prints the matrix (``sweep=true``: measured live;
``write=true``: also rewrites the shipped matrix, ``docs/families.md`` and the README's family table, which
``make sweep`` does).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig

from .compat import routes_attention as compat_routes_attention
from .errors import UserError
from .registry import Registry

LayerSet = tuple[int, ...]

MATRIX_PATH = Path(__file__).resolve().parent / "resources" / "families.json"


@cache
def support_matrix() -> dict[str, Any]:
    """The shipped support matrix: ``{"transformers": version, "families": {model_type: entry}}``."""
    matrix: dict[str, Any] = json.loads(MATRIX_PATH.read_text())
    return matrix


def matrix_entry(model_type: str) -> dict[str, Any] | None:
    """The family's measured entry (status, reason, backend, quirks, worst_error, tiny_config), if any."""
    entry: dict[str, Any] | None = support_matrix()["families"].get(model_type)
    return entry


# Families with an exactness test against their own eager forward (tests/integration/test_architectures.py).
VERIFIED_FAMILIES = (
    "llama", "mistral", "ministral", "ministral3", "qwen2", "qwen3", "qwen3_moe", "gemma2", "gemma3_text",
    "glm", "glm4", "smollm3", "phi3", "olmo2", "mixtral", "cohere2", "gpt_oss",
    "mistral3", "mllama", "mllama_text_model", "gemma3",
)  # fmt: skip

# Per-family NoPE rules for configs that do not say it with a generic key (``no_rope_layers``).
NOPE_RULES: Registry[Callable[[PretrainedConfig], LayerSet]] = Registry("NoPE rule")


def _full_layers_nope(cfg: PretrainedConfig) -> LayerSet:
    # These families rotate only on their sliding-window layers; full-attention layers see no positions.
    return tuple(i for i, kind in enumerate(cfg.layer_types or []) if kind == "full_attention")


# Each one measured by the family sweep (its "rotation where the config says none" check).
for _family in ("cohere2", "cohere2_moe", "exaone4", "exaone_moe", "afmoe", "lara_mini", "kolibri1", "beam"):
    NOPE_RULES.register(_family)(_full_layers_nope)


def nope_layers(cfg: PretrainedConfig) -> LayerSet:
    """Layers that never call the rotary function (text config in, layer indices out)."""
    if cfg.model_type in NOPE_RULES:
        return NOPE_RULES.get(cfg.model_type)(cfg)
    # SmolLM3 and Llama 4 spell it the same way: one flag per layer, 1 = rotate, 0 = NoPE.
    flags = getattr(cfg, "no_rope_layers", None)
    if flags:
        return tuple(i for i, use_rope in enumerate(flags[: cfg.num_hidden_layers]) if not use_rope)
    if not any(getattr(cfg, key, None) for key in _ROTATION_KEYS):
        # No rotation parameters at all (Jamba: positions come from its Mamba layers): no layer rotates.
        return tuple(range(cfg.num_hidden_layers))
    return ()


# Config keys that say a family rotates (the sweep checks every family's prediction against its forward).
_ROTATION_KEYS = ("rope_parameters", "rope_theta", "rope_scaling", "rotary_dim", "rotary_emb_base")


def cross_attention_layers(cfg: PretrainedConfig) -> LayerSet:
    """Layers that attend to another modality (Mllama); they carry no text self-attention to capture."""
    return tuple(sorted(int(i) for i in getattr(cfg, "cross_attention_layers", None) or ()))


# Words in a per-layer type that name a token mixer without Q/K (Qwen3-Next's linear_attention, Zamba's
# mamba, LFM2's conv). Every other type (full, sliding, chunked, indexed, Falcon-H1's attention + Mamba
# "hybrid") is softmax attention; the family sweep checks this against the layers that ran attention.
NON_SOFTMAX_WORDS = ("linear", "mamba", "conv", "ssm", "recurrent", "deltanet", "rwkv")


def linear_attention_layers(cfg: PretrainedConfig) -> LayerSet:
    """Layers of a hybrid model whose token mixer is not softmax attention (read from its per-layer types)."""
    for key in ("layer_types", "layers_block_type"):
        kinds = getattr(cfg, key, None)
        if kinds and isinstance(kinds, (list, tuple)):
            return tuple(
                i
                for i, kind in enumerate(kinds[: cfg.num_hidden_layers])
                if any(word in str(kind) for word in NON_SOFTMAX_WORDS)
            )
    return ()


def routes_attention(model_class: type) -> bool:
    """Whether the modeling code dispatches attention through transformers' registry (our only seam)."""
    return compat_routes_attention(model_class)


def unsupported_family_error(model_type: str, model_class_name: str, reason: str) -> UserError:
    return UserError(
        f"model family {model_type!r} ({model_class_name}) cannot be captured: {reason}. qk_sniffer sees Q/K "
        "through transformers' AttentionInterface, which this family's modeling code does not use. "
        f"Verified families: {', '.join(sorted(VERIFIED_FAMILIES))}"
    )


def matrix_refusal(model_type: str, model_class_name: str, entry: dict[str, Any]) -> UserError:
    """The refusal of a family the support matrix measured as not capturable exactly."""
    version = support_matrix()["transformers"]
    return UserError(
        f"model family {model_type!r} ({model_class_name}) cannot be captured exactly: {entry['status']}: "
        f"{entry['reason']} (measured by the family sweep on transformers {version}; see docs/families.md)"
    )


# --- python -m qk_sniffer.families ----------------------------------------------------------------------


def run_families(cfg: Any) -> dict[str, Any]:
    """The matrix to print: the shipped one, or one measured now (and written, with ``write=true``)."""
    only = list(cfg.only) if cfg.only else None
    if cfg.write and not cfg.sweep:
        raise UserError("write=true needs sweep=true: only a measured matrix is written")
    if cfg.write and only:
        raise UserError("write=true cannot be combined with only=...: the shipped matrix lists every family")
    if cfg.sweep:
        from . import sweep  # the sweep loads models; printing the shipped matrix needs none of it

        unknown = sorted(set(only or ()) - set(sweep.candidates()))
        if unknown:
            raise UserError(f"only: unknown model types {unknown}; see transformers' causal-LM mapping")
        matrix = sweep.sweep(only, log=lambda line: print(line, file=sys.stderr, flush=True))
        if cfg.write:
            write_matrix(matrix, sweep.STATUSES, sweep.QUIRKS)
        return matrix
    matrix = support_matrix()
    if only:
        unknown = sorted(set(only) - set(matrix["families"]))
        if unknown:
            raise UserError(f"only: model types {unknown} are not in the support matrix")
        matrix = {**matrix, "families": {k: matrix["families"][k] for k in only}}
    return matrix


def write_matrix(matrix: dict[str, Any], statuses: dict[str, str], quirks: dict[str, str]) -> None:
    """The shipped matrix, docs/families.md and the README table, from one measured matrix."""
    from .family_docs import docs_page, replace_readme_table

    repo = MATRIX_PATH.parent.parent.parent
    shipped = {**matrix, "families": {k: {f: v for f, v in e.items() if f != "seconds"} for k, e in
                                      matrix["families"].items()}}  # fmt: skip
    MATRIX_PATH.write_text(matrix_json(shipped))
    (repo / "docs").mkdir(exist_ok=True)
    (repo / "docs" / "families.md").write_text(docs_page(shipped, statuses, quirks))
    readme = repo / "README.md"
    readme.write_text(replace_readme_table(readme.read_text(), shipped))


def matrix_json(matrix: dict[str, Any]) -> str:
    """The matrix as JSON with one line per family, so a re-measurement diffs family by family."""
    rows = ",\n".join(
        f"  {json.dumps(name)}: {json.dumps(entry, sort_keys=True)}"
        for name, entry in sorted(matrix["families"].items())
    )
    head = {k: v for k, v in matrix.items() if k != "families"}
    return json.dumps(head, sort_keys=True)[:-1] + ',\n "families": {\n' + rows + "\n }\n}\n"


def summary(matrix: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for entry in matrix["families"].values():
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    parts = ", ".join(f"{status} {n}" for status, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"transformers {matrix['transformers']}: {len(matrix['families'])} model types: {parts}"


def main() -> None:
    import hydra

    from .cli import CONF_DIR, report_user_errors
    from .config import register_configs

    register_configs()

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="families")
    def app(cfg: Any) -> None:
        with report_user_errors():
            matrix = run_families(cfg)
        print(summary(matrix))
        record = {"transformers": matrix["transformers"], "families": matrix["families"]}
        print(json.dumps(record), flush=True)

    app()


if __name__ == "__main__":
    main()
