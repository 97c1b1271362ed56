"""What differs between model families, kept to the few facts a config states in a family's own words.

Everything generic (head counts, head_dim, sliding windows, RoPE parameters) is read in :mod:`models`; the
capture itself goes through the one attention-registry seam in :mod:`.tap` for every family. This
module only answers three questions the generic reading cannot:

- which layers apply no rotation (their pre-RoPE vectors equal their post-RoPE ones);
- which layers are cross-attention (they attend to image features, never to the text, and are skipped);
- whether a family can be captured exactly at all: the support matrix (``resources/families.json``,
  measured by ``python -m qk_sniffer.families sweep=true`` on tiny models of every family) says so, and a
  family it does not list falls back to whether its class routes attention through transformers'
  ``AttentionInterface`` (and a self-check against eager after loading).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig

from ..core.errors import UserError
from ..core.registry import Registry

LayerSet = tuple[int, ...]

MATRIX_PATH = Path(__file__).resolve().parent.parent / "resources" / "families.json"


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
    # Imported here: the compat module loads transformers' modeling code, which a dry run never needs.
    from .compat import routes_attention as compat_routes_attention

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
