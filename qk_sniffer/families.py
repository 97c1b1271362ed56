"""What differs between model families, kept to the few facts a config states in a family's own words.

Everything generic (head counts, head_dim, sliding windows, RoPE parameters) is read in :mod:`models`; the
capture itself goes through the one attention-registry seam in :mod:`patching` for every family. This
module only answers three questions the generic reading cannot:

- which layers apply no rotation (their pre-RoPE vectors equal their post-RoPE ones);
- which layers are cross-attention (they attend to image features, never to the text, and are skipped);
- whether a family routes attention through transformers' ``AttentionInterface`` at all (if not, nothing
  can be captured and we say so before loading any weight).
"""

from __future__ import annotations

from collections.abc import Callable

from transformers import PretrainedConfig

from .errors import UserError
from .registry import Registry

LayerSet = tuple[int, ...]

# Families with an exactness test against their own eager forward (tests/integration/test_architectures.py).
VERIFIED_FAMILIES = (
    "llama", "mistral", "ministral", "ministral3", "qwen2", "qwen3", "qwen3_moe", "gemma2", "gemma3_text",
    "glm", "glm4", "smollm3", "phi3", "olmo2", "mixtral", "cohere2", "gpt_oss",
    "mistral3", "mllama", "mllama_text_model", "gemma3",
)  # fmt: skip

# Per-family NoPE rules for configs that do not say it with a generic key (``no_rope_layers``).
NOPE_RULES: Registry[Callable[[PretrainedConfig], LayerSet]] = Registry("NoPE rule")


@NOPE_RULES.register("cohere2")
def _cohere2_nope(cfg: PretrainedConfig) -> LayerSet:
    # Cohere2 rotates only on its sliding-window layers; its full-attention layers see no positions.
    return tuple(i for i, kind in enumerate(cfg.layer_types or []) if kind == "full_attention")


def nope_layers(cfg: PretrainedConfig) -> LayerSet:
    """Layers that never call the rotary function (text config in, layer indices out)."""
    if cfg.model_type in NOPE_RULES:
        return NOPE_RULES.get(cfg.model_type)(cfg)
    # SmolLM3 and Llama 4 spell it the same way: one flag per layer, 1 = rotate, 0 = NoPE.
    flags = getattr(cfg, "no_rope_layers", None)
    if flags:
        return tuple(i for i, use_rope in enumerate(flags[: cfg.num_hidden_layers]) if not use_rope)
    return ()


def cross_attention_layers(cfg: PretrainedConfig) -> LayerSet:
    """Layers that attend to another modality (Mllama); they carry no text self-attention to capture."""
    return tuple(sorted(int(i) for i in getattr(cfg, "cross_attention_layers", None) or ()))


# Per-layer type names of softmax attention; any other type in a hybrid's layer list (linear_attention,
# mamba, conv, ...) mixes tokens without Q/K.
# Falcon-H1's "hybrid" layers run attention and Mamba side by side, so they have Q/K.
SOFTMAX_LAYER_TYPES = ("full_attention", "sliding_attention", "chunked_attention", "attention", "hybrid")


def linear_attention_layers(cfg: PretrainedConfig) -> LayerSet:
    """Layers of a hybrid model whose token mixer is not softmax attention (read from its per-layer types)."""
    for key in ("layer_types", "layers_block_type"):
        kinds = getattr(cfg, key, None)
        if kinds and isinstance(kinds, (list, tuple)):
            return tuple(
                i for i, kind in enumerate(kinds[: cfg.num_hidden_layers]) if str(kind) not in SOFTMAX_LAYER_TYPES
            )
    return ()


def routes_attention(model_class: type) -> bool:
    """Whether the modeling code dispatches attention through transformers' registry (our only seam)."""
    return bool(getattr(model_class, "_supports_attention_backend", False))


def unsupported_family_error(model_type: str, model_class_name: str, reason: str) -> UserError:
    return UserError(
        f"model family {model_type!r} ({model_class_name}) cannot be captured: {reason}. qk_sniffer sees Q/K "
        "through transformers' AttentionInterface, which this family's modeling code does not use. "
        f"Verified families: {', '.join(sorted(VERIFIED_FAMILIES))}"
    )
