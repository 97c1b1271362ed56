"""What a transformers release lets a family run that would be silently wrong: one table, keyed by family
and release, consulted wherever a backend is chosen (the run and the family sweep through
:func:`~qk_sniffer.capture.models.choose_attn_implementation`, the Python API through :func:`check_loaded`).

A model class declares the backends it supports (``_supports_sdpa``, ``_supports_flash_attn``); some releases
declared one that drops part of the family's attention, and a later release withdrew the flag or fixed the
path. On the older release nothing in transformers stops the wrong backend: this table does. Each row names
the first release where the backend is right or no longer declared (bisected over the releases' own
modeling code, and for Doge measured against its eager forward), why, and the backend to use instead. The
default choice never picks a listed backend; a request for one is a UserError naming the family, the
release and the backend to use.

Also here: the versions a capture runs with (:func:`capture_versions`), so the metadata and the card say
which releases produced the rows, and what a resumed capture on another release must agree on
(:func:`check_resume`).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

from packaging.version import Version

from ..core.errors import UserError


@dataclass(frozen=True)
class BackendFact:
    """``backends`` declared but wrong for ``families`` on every release before ``fixed_in``."""

    families: tuple[str, ...]  # model types (the loaded config's, so a wrapper is listed as itself)
    backends: tuple[str, ...]
    fixed_in: str  # the first release where the backend is right, or no longer declared
    why: str
    use: str  # the backend to use instead

    def applies(self, model_type: str, release: str) -> bool:
        return model_type in self.families and Version(release) < Version(self.fixed_in)


_FLASH = ("flash_attention_2", "flash_attention_3")

FACTS: tuple[BackendFact, ...] = (
    BackendFact(
        ("gemma2", "vaultgemma"),
        ("sdpa",),
        fixed_in="5.21.0",
        why="sdpa drops its attention logit softcapping, so every vector after the first layer is wrong",
        use="eager",
    ),
    BackendFact(
        ("doge",),
        ("sdpa",),
        fixed_in="5.18.0",
        why="under sdpa it skips the causal mask its dynamic mask is added onto, so the dynamic mask is "
        "dropped (measured: layer-1 queries off by 2.5 against its eager forward on 5.17.0)",
        use="eager",
    ),
    BackendFact(
        ("mllama",),
        _FLASH,
        fixed_in="5.23.0",
        why="it builds 4D attention masks, which flash attention cannot take (transformers withdrew the flag "
        "in 5.23.0)",
        use="sdpa",
    ),
    BackendFact(
        ("gemma3", "shieldgemma2", "gemma4", "gemma4_unified", "paligemma"),
        _FLASH,
        fixed_in="5.24.0",
        why="flash attention drops the bidirectional mask over image tokens (transformers withdrew the flag "
        "in 5.24.0)",
        use="sdpa",
    ),
)


def installed_release() -> str:
    """The transformers release this process runs (the imported module's, whatever put it on the path)."""
    import transformers

    return str(transformers.__version__)


def wrong_backends(model_type: str, release: str | None = None) -> dict[str, BackendFact]:
    """Backend -> the fact that makes it wrong for ``model_type`` on ``release`` (default: the installed)."""
    release = release or installed_release()
    return {backend: fact for fact in FACTS if fact.applies(model_type, release) for backend in fact.backends}


def facts_in_force(model_type: str, release: str) -> list[str]:
    """The facts that hold for ``model_type`` on ``release``, as sentences (metadata, resume comparison)."""
    return [
        f"{'/'.join(f.backends)} is wrong before transformers {f.fixed_in}: {f.why}; use {f.use}"
        for f in FACTS
        if f.applies(model_type, release)
    ]


def refusal(model_type: str, backend: str, key: str, release: str | None = None) -> UserError | None:
    """The one message for ``backend`` on a release where it is wrong for the family (None: it is not).

    ``key`` is where the backend was asked for: ``model.attn_implementation`` (the run's config, where null
    lets the project pick) or ``attn_implementation`` (``from_pretrained``'s argument, for the Python API).
    """
    release = release or installed_release()
    fact = wrong_backends(model_type, release).get(backend)
    if fact is None:
        return None
    pick = " (null picks it)" if key.startswith("model.") else ""
    return UserError(
        f"{key}={backend!r}: model family {model_type!r} on transformers {release} declares {backend} "
        f"support, but {fact.why}; use {key}={fact.use!r}{pick}, or transformers {fact.fixed_in} or later"
    )


def check_loaded(model_type: str, backend: str) -> None:
    """Refuse a model someone else loaded with a backend this release runs wrong for its family (the API)."""
    error = refusal(model_type, backend, "attn_implementation")
    if error is not None:
        raise error


def check_resume(model_type: str, written_on: str | None, running_on: str, where: str) -> str | None:
    """A run into ``where``, whose rows ``written_on`` captured: a note when the releases differ (None when
    they do not, or the dir does not say), and a UserError when the backend facts of ``model_type`` differ
    between the two, as the rows of one dataset would then come from backends that are not the same."""
    if written_on is None or Version(written_on) == Version(running_on):
        return None
    before, now = facts_in_force(model_type, written_on), facts_in_force(model_type, running_on)
    if before != now:
        raise UserError(
            f"{where} holds rows captured with transformers {written_on} and this run uses {running_on}, "
            f"but the backends of model family {model_type!r} differ between the two "
            f"({'; '.join(before + now)}); resume it with transformers {written_on}, or use another "
            "output.dir"
        )
    return (
        f"{where} holds rows captured with transformers {written_on}; this run uses {running_on} (the "
        f"backend facts of model family {model_type!r} are the same on both)"
    )


def capture_versions() -> dict[str, str]:
    """The releases a capture runs with (the imported modules'), as the metadata and the card record them."""
    import huggingface_hub
    import tokenizers
    import torch

    try:
        own = metadata.version("qk-sniffer")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        own = "unknown"
    return {
        "transformers": installed_release(),
        "torch": str(torch.__version__),
        "tokenizers": str(tokenizers.__version__),
        "huggingface_hub": str(huggingface_hub.__version__),
        "qk_sniffer": own,
    }
