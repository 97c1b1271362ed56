"""A model's attention layout as data: read from its config by :mod:`.models`, recorded in the metadata,
read back by the card and the report. Torch-free, so the commands that only read a capture dir never import
torch or transformers."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    # families (Qwen3-Next, LFM2): they have no Q/K to capture.
    linear_attention_layers: tuple[int, ...] = ()
    # head_dim of each layer, only for families whose layers differ (Gemma 4); ``head_dim`` is then the most
    # common one. Every captured vector has its own layer's length.
    head_dims: tuple[int, ...] = ()

    @property
    def group_size(self) -> int:
        return self.num_q_heads // self.num_kv_heads

    @property
    def self_attention_layers(self) -> tuple[int, ...]:
        """The layers that can be captured: every layer except cross-attention and linear-attention ones."""
        skip = set(self.cross_attention_layers) | set(self.linear_attention_layers)
        return tuple(layer for layer in range(self.num_layers) if layer not in skip)

    def is_sliding(self, layer: int) -> bool:
        return self.sliding_windows[layer] is not None

    def kv_head_of(self, q_head: int) -> int:
        return q_head // self.group_size
