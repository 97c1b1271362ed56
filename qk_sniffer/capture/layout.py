"""A model's attention layout as data: read from its config by :mod:`.models`, recorded in the metadata,
read back by the card and the report. Torch-free, so the commands that only read a capture dir never import
torch or transformers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelLayout:
    """What capture needs to know about a model's attention, read from its (text) config."""

    model_type: str
    num_layers: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    # Window per layer; None for full-attention layers.
    sliding_windows: tuple[int | None, ...]
    # The config's RoPE parameters as written (keyed by layer type for families such as Gemma 3).
    rope: dict[str, Any] = field(default_factory=dict)
    # The rotation of the full-attention layers (or of every layer): type, base and scaling parameters.
    rope_type: str | None = None
    rope_theta: float | None = None
    rope_scaling: dict[str, Any] = field(default_factory=dict)
    # Families that rotate sliding and full layers differently (Gemma 3): layer type -> its RoPE parameters.
    rope_by_layer_type: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Fraction of head_dim that is rotated (GLM: 0.5); the rest passes through unchanged.
    partial_rotary_factor: float = 1.0
    # Layers that apply no rotation (SmolLM3, Cohere2): there pre-RoPE == post-RoPE.
    nope_layers: tuple[int, ...] = ()
    # Layers that attend to image features instead of the text (Mllama): never captured.
    cross_attention_layers: tuple[int, ...] = ()
    # Layers whose token mixer is not softmax attention (linear attention, SSM, convolution) in hybrid
    # families (Qwen3-Next, Zamba, LFM2): they make no attention call, have no Q/K, and are skipped.
    linear_attention_layers: tuple[int, ...] = ()
    # Per layer, only for families whose attention layers differ (measured from the attention calls, see
    # :mod:`.shapes`): head_dim (Gemma 4), query heads and key heads (Inkling's sliding layers); 0 for a
    # layer without attention. ``head_dim``, ``num_q_heads`` and ``num_kv_heads`` are then the most common
    # values. Every captured vector has its own layer's length, every layer its own heads.
    head_dims: tuple[int, ...] = ()
    # How the model tells positions apart: rope, absolute, alibi, none, unknown (support.POSITION_ENCODINGS).
    # Without rotation nothing happens between pre-RoPE and post-RoPE: both capture points are the same.
    position_encoding: str = "rope"
    # ALiBi only, per query head: the bias the model adds to a logit per key position, so that
    # logit(i, j) = scale * q_i . k_j + alibi_slopes[h] * j over the keys j <= i (see capture.alibi).
    alibi_slopes: tuple[float, ...] = ()
    # OPT and XGLM multiply the query by this factor before their attention function, which then scales
    # q . k by 1: the captured query includes it (it is what the dot product sees). None elsewhere.
    query_prescale: float | None = None
    q_heads_per_layer: tuple[int, ...] = ()
    kv_heads_per_layer: tuple[int, ...] = ()

    def record(self) -> dict[str, Any]:
        """The layout as the metadata records it: per-layer heads only where the layers differ."""
        record = asdict(self)
        for key in ("q_heads_per_layer", "kv_heads_per_layer"):
            if not record[key]:
                del record[key]
        return record

    @property
    def self_attention_layers(self) -> tuple[int, ...]:
        """The layers that can be captured: every layer except cross-attention and linear-attention ones."""
        skip = set(self.cross_attention_layers) | set(self.linear_attention_layers)
        return tuple(layer for layer in range(self.num_layers) if layer not in skip)

    @property
    def max_heads(self) -> int:
        """The most heads of one kind in any layer (config names are this wide)."""
        return max(self.num_q_heads, self.num_kv_heads, *self.q_heads_per_layer, *self.kv_heads_per_layer)

    def q_heads_of(self, layer: int) -> int:
        return self.q_heads_per_layer[layer] if self.q_heads_per_layer else self.num_q_heads

    def kv_heads_of(self, layer: int) -> int:
        return self.kv_heads_per_layer[layer] if self.kv_heads_per_layer else self.num_kv_heads

    def head_dim_of(self, layer: int) -> int:
        return self.head_dims[layer] if self.head_dims else self.head_dim

    def is_sliding(self, layer: int) -> bool:
        return self.sliding_windows[layer] is not None

    def kv_head_of(self, q_head: int, layer: int) -> int:
        """The key head query head ``q_head`` of ``layer`` reads (GQA: one per group of query heads)."""
        return q_head // (self.q_heads_of(layer) // self.kv_heads_of(layer))
