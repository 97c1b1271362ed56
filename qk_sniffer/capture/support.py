"""What differs between model families, kept to the few facts a config states in a family's own words.

Everything generic (head counts, head_dim, sliding windows, RoPE parameters) is read in :mod:`models`; the
capture goes through the attention-registry seam in :mod:`.tap`, or, for attention written outside the
registry, through the module's own seams in :mod:`.module_tap`. This module only answers the questions the
generic reading cannot:

- which layers apply no rotation (their pre-RoPE vectors equal their post-RoPE ones);
- how the model tells positions apart (rotation, an absolute table, ALiBi, nothing) and how many key/value
  heads a multi-query family runs;
- whether the modeling code scales the query before its attention function (OPT, XGLM);
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
from .alibi import uses_alibi
from .matrices import matrix_choice

LayerSet = tuple[int, ...]


def support_matrix() -> dict[str, Any]:
    """The support matrix of the installed release, or of the nearest older one measured (:mod:`.matrices`):
    ``{"transformers": version, "families": {model_type: entry}}``."""
    return _read_matrix(matrix_choice().path)


@cache
def _read_matrix(path: Path) -> dict[str, Any]:
    matrix: dict[str, Any] = json.loads(path.read_text())
    return matrix


def matrix_entry(model_type: str) -> dict[str, Any] | None:
    """The family's measured entry (status, reason, backend, quirks, worst_error, tiny_config), if any."""
    entry: dict[str, Any] | None = support_matrix()["families"].get(model_type)
    return entry


# Families with an exactness test against their own eager forward through the real runner
# (tests/integration/test_architectures.py; the absolute-position, ALiBi and outside-registry ones in
# tests/integration/test_position_families.py, also against their own attention probabilities).
VERIFIED_FAMILIES = (
    "llama", "mistral", "ministral", "ministral3", "qwen2", "qwen3", "qwen3_moe", "gemma2", "gemma3_text",
    "glm", "glm4", "smollm3", "phi3", "olmo2", "mixtral", "cohere2", "gpt_oss",
    "mistral3", "mllama", "mllama_text_model", "gemma3",
    "gpt2", "gpt_bigcode", "opt", "biogpt", "falcon", "bloom", "mpt", "gpt_neo", "xglm", "openai-gpt",
)  # fmt: skip

# Per-family NoPE rules for configs that do not say it with a generic key (``no_rope_layers``).
NOPE_RULES: Registry[Callable[[PretrainedConfig], LayerSet]] = Registry("NoPE rule")


def _full_layers_nope(cfg: PretrainedConfig) -> LayerSet:
    # These families rotate only on their sliding-window layers; full-attention layers see no positions.
    return tuple(i for i, kind in enumerate(cfg.layer_types or []) if kind == "full_attention")


# Each one measured by the family sweep (its "rotation where the config says none" check).
_FULL_LAYERS_NOPE = ("cohere2", "cohere2_moe", "exaone4", "exaone_moe", "afmoe", "lara_mini", "kolibri1",
                     "beam")  # fmt: skip
for _family in _FULL_LAYERS_NOPE:
    NOPE_RULES.register(_family)(_full_layers_nope)


@NOPE_RULES.register("kolibri1_1")
def _only_sliding_layers_rotate(cfg: PretrainedConfig) -> LayerSet:
    # Kolibri 1.1 rotates on its sliding layers only; its indexed-attention layers see no positions.
    return tuple(i for i, kind in enumerate(cfg.layer_types or []) if kind != "sliding_attention")


@NOPE_RULES.register("zamba2")
def _shared_block_without_rope(cfg: PretrainedConfig) -> LayerSet:
    # Zamba2's shared attention blocks rotate only with use_mem_rope (off by default), whatever rope_theta
    # says.
    return () if cfg.use_mem_rope else tuple(range(cfg.num_hidden_layers))


@NOPE_RULES.register("granitemoehybrid")
def _rope_only_when_asked(cfg: PretrainedConfig) -> LayerSet:
    # Granite-4 hybrids rotate only with position_embedding_type="rope"; None (the default) or "nope" is NoPE.
    return () if cfg.position_embedding_type == "rope" else tuple(range(cfg.num_hidden_layers))


def nope_layers(cfg: PretrainedConfig) -> LayerSet:
    """Layers that never call the rotary function (text config in, layer indices out)."""
    if uses_alibi(cfg):  # ALiBi Falcon keeps rotary parameters in its config but never rotates
        return tuple(range(cfg.num_hidden_layers))
    if cfg.model_type in NOPE_RULES:
        return NOPE_RULES.get(cfg.model_type)(cfg)
    # RoPE parameters per layer type, null for a type that does not rotate (Ergo's full-attention layers).
    rope, kinds = getattr(cfg, "rope_parameters", None), getattr(cfg, "layer_types", None) or ()
    if isinstance(rope, dict) and any(kind in rope and rope[kind] is None for kind in kinds):
        return tuple(i for i, kind in enumerate(kinds[: cfg.num_hidden_layers]) if rope.get(kind, 0) is None)
    # A RoPE base per layer, 0 for a layer that does not rotate (Muse Glimmer).
    thetas = getattr(cfg, "layer_rope_theta", None)
    if isinstance(thetas, (list, tuple)):
        return tuple(i for i, theta in enumerate(thetas[: cfg.num_hidden_layers]) if not theta)
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


# How a model tells positions apart; the layout, the metadata and the card use these words.
POSITION_ENCODINGS = {
    "rope": "q and k are rotated by position (pre-RoPE and post-RoPE differ)",
    "absolute": "a learned or sinusoidal position table is added to the embeddings; q and k carry positions "
    "only through the hidden states, and nothing rotates them: pre-RoPE == post-RoPE",
    "alibi": "a per-head bias linear in the key position is added to the logits (slopes in the layout); "
    "nothing rotates q and k: pre-RoPE == post-RoPE",
    "none": "no position signal in the attention (positions come from other layers, e.g. Jamba's Mamba)",
    "unknown": "not measured: a family the support matrix does not list, without rotary parameters",
}


def position_encoding(cfg: PretrainedConfig) -> str:
    """One of :data:`POSITION_ENCODINGS` for the (text) config: ALiBi and rotation from the config, an
    absolute table or none from the support matrix (the sweep looks for the table in the built model)."""
    if uses_alibi(cfg):
        return "alibi"
    if any(getattr(cfg, key, None) for key in _ROTATION_KEYS):
        return "rope"
    entry = matrix_entry(cfg.model_type)
    measured = entry.get("position_encoding") if entry else None
    return str(measured) if measured in POSITION_ENCODINGS else "unknown"


def kv_heads(cfg: PretrainedConfig, q_heads: int) -> int:
    """Key/value heads in the config's own words: ``num_key_value_heads``, Falcon's ``num_kv_heads``, or one
    for the multi-query families (GPT-BigCode, Falcon before its new decoder architecture)."""
    if getattr(cfg, "multi_query", False) and not getattr(cfg, "new_decoder_architecture", False):
        return 1
    return int(getattr(cfg, "num_key_value_heads", None) or getattr(cfg, "num_kv_heads", None) or q_heads)


# Families whose attention module multiplies the query by head_dim**-0.5 before its attention function and
# then scales q . k by 1: the captured query is the scaled one (what the dot product sees). The tests hold
# each one against the model's own attention probabilities.
QUERY_PRESCALED = ("opt", "xglm", "trocr")


def query_prescale(cfg: PretrainedConfig, head_dim: int) -> float | None:
    """The factor already in the captured query (OPT, XGLM), or None where the query is not pre-scaled."""
    return head_dim**-0.5 if cfg.model_type in QUERY_PRESCALED else None


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


def eager_only(model_type: str) -> bool:
    """Whether the sweep found the family exact on eager only (transformers' sdpa path computes otherwise)."""
    entry = matrix_entry(model_type)
    return entry is not None and "eager_only" in entry.get("quirks", ())


def unsupported_family_error(model_type: str, model_class_name: str, reason: str) -> UserError:
    return UserError(
        f"model family {model_type!r} ({model_class_name}) cannot be captured: {reason}. qk_sniffer sees Q/K "
        "through transformers' AttentionInterface, which this family's modeling code does not use. "
        f"Verified families: {', '.join(sorted(VERIFIED_FAMILIES))}"
    )


def matrix_refusal(model_type: str, model_class_name: str, entry: dict[str, Any]) -> UserError:
    """The refusal of a family the support matrix measured as not capturable exactly, naming the nearest
    family that is."""
    choice = matrix_choice()
    nearest = "" if choice.measured_here else f", the nearest to the installed {choice.installed}"
    return UserError(
        f"model family {model_type!r} ({model_class_name}) cannot be captured exactly: {entry['status']}: "
        f"{entry['reason']} (measured by the family sweep on transformers {choice.measured_on}{nearest}; see "
        f"docs/families.md). Nearest supported: {nearest_supported(model_type, entry['status'])}"
    )


# What to try instead, per refusal class, when no supported family shares the refused one's decoder or name.
INSTEAD = {
    "no_softmax_attention": "a hybrid that keeps softmax layers beside its state-space ones (jamba, zamba2, "
    "falcon_h1, bamba)",
    "encoder_decoder": "a decoder-only family (docs/families.md lists every exact one)",
    "keys_not_tokens": "a family whose keys are one per token (docs/families.md lists every exact one)",
}


def nearest_supported(model_type: str, status: str) -> str:
    """The exact family nearest to ``model_type``: the family of its text decoder (a wrapper's), else the
    one sharing the longest name prefix (five letters at least), else what its refusal class suggests."""
    entries = support_matrix()["families"]
    exact = sorted(m for m, e in entries.items() if e["status"] == "exact")
    sub_config = (entries.get(model_type) or {}).get("tiny_config", {}).get("text_config")
    text = sub_config.get("model_type") if isinstance(sub_config, dict) else None
    if text in exact:
        return f"{text} (its text decoder)"

    def shared(other: str) -> int:
        return next((i for i, (a, b) in enumerate(zip(model_type, other, strict=False)) if a != b),
                    min(len(model_type), len(other)))  # fmt: skip

    best = max(exact, key=lambda m: (shared(m), -len(m)), default=None)
    if best is not None and shared(best) >= 5:
        return best
    return INSTEAD.get(status, "see docs/families.md for every exact family")
