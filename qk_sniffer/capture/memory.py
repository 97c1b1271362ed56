"""The memory model of a capture: its peak device memory from the model's shape and the batch's length, and
the chunk sizes that keep it inside a budget.

A capture forward keeps no KV cache and runs layers one after another, so its peak is the weights plus the
largest moment inside one layer. The model walks a decoder layer's moments (transformers' Llama-style
layer, which every family follows closely): the attention inputs being formed, the rotation, the attention
call, the output projection, the feed-forward block. At each it adds what is alive: the residual stream and
the normed input (whole sequence), q/k/v and their rotated copies (whole: attention needs them), and the
transients of the token-wise parts, which are the whole sequence's in one pass and one chunk's when chunked
(:mod:`.chunking`): a norm's float32 copies, the rotation's temporaries, the MLP's three intermediate-wide
tensors. The attention backend adds its own: nothing quadratic for sdpa's causal kernels and flash attention,
a boolean plus a float (length x length) mask for sdpa's sliding-window layers and a float32 score matrix
per head for eager, or one chunk of query rows of those when masks are built per chunk
(:mod:`.long_attention`). The vectors a capture keeps stay on the device until the batch ends.

Everything is an estimate in bytes, deliberately on the high side (every transient counted at once);
``docs/performance.md`` compares it with measured peaks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PretrainedConfig

from ..core.errors import UserError
from .chunking import ChunkSizes
from .models import model_class_for, text_config

GB = 10**9  # budgets and figures are in decimal gigabytes, as devices are sold (an "80 GB" H100)
# The interpreter, torch and transformers on the host; the CUDA context and allocator slack on a GPU.
RUNTIME_RESERVE = 1 * GB
# Chunk sizes the budget chooses from (largest first); below the smallest a capture is refused.
TOKEN_CHUNKS = tuple(2**p for p in range(16, 7, -1))
QUERY_CHUNKS = tuple(2**p for p in range(14, 5, -1))
FLOAT32 = 4
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# Backends whose own kernels never build a (length x length) tensor.
LINEAR_BACKENDS = ("flash_attention_2", "flash_attention_3", "flex_attention")


@dataclass(frozen=True)
class ModelShape:
    """What the memory model reads from a model: its widths, windows, dtype, backend and weights."""

    hidden: int
    # Feed-forward width per token: an MoE counts its top-k experts and any shared expert.
    intermediate: int
    q_heads: int
    kv_heads: int
    head_dim: int
    windows: tuple[int | None, ...]
    dtype_bytes: int
    backend: str
    weight_bytes: int

    @property
    def q_width(self) -> int:
        return self.q_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim


def shape_of(
    config: PretrainedConfig, dtype: str, backend: str, weight_bytes: int | None = None
) -> ModelShape:
    """The memory model's view of ``config`` (its text decoder), weights counted on the meta device."""
    cfg = text_config(config)
    q_heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // q_heads)
    layers = int(cfg.num_hidden_layers)
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None) or []
    if types:
        windows = tuple(window if window and "sliding" in str(t) else None for t in types[:layers])
    else:
        windows = tuple(
            window if window and getattr(cfg, "use_sliding_window", True) else None for _ in range(layers)
        )
    return ModelShape(
        hidden=int(cfg.hidden_size),
        intermediate=feed_forward_width(cfg),
        q_heads=q_heads,
        kv_heads=int(getattr(cfg, "num_key_value_heads", None) or q_heads),
        head_dim=head_dim,
        windows=windows,
        dtype_bytes=DTYPE_BYTES[dtype],
        backend=backend,
        weight_bytes=weight_bytes if weight_bytes is not None else model_weight_bytes(config, dtype),
    )


def feed_forward_width(cfg: Any) -> int:
    """Intermediate width one token goes through: dense, or top-k experts (+ a shared expert) for an MoE.
    A family that widens some layers (Gemma 3n: one width per layer) is sized by its widest."""
    dense = _widest(getattr(cfg, "intermediate_size", 0)) or 4 * cfg.hidden_size
    experts = (
        getattr(cfg, "num_experts", None)
        or getattr(cfg, "num_local_experts", None)
        or getattr(cfg, "n_routed_experts", None)
    )
    top_k = getattr(cfg, "num_experts_per_tok", None)
    if not experts or not top_k:
        return dense
    expert = _widest(getattr(cfg, "moe_intermediate_size", None)) or dense
    shared = int(getattr(cfg, "shared_expert_intermediate_size", None) or 0)
    shared += int(getattr(cfg, "n_shared_experts", None) or 0) * expert
    return max(dense, int(top_k) * expert + shared)


def _widest(width: Any) -> int:
    """A width as a config states it: one int, or one per layer (the widest counts); 0 when unset."""
    if isinstance(width, (list, tuple)):
        return max((int(w) for w in width if w), default=0)
    return int(width or 0)


def model_weight_bytes(config: PretrainedConfig, dtype: str) -> int:
    """Bytes of the model's parameters and buffers in ``dtype``, counted on the meta device (no memory);
    for remote code, or a class that cannot be built there, from the usual decoder shape."""
    cls = model_class_for(config)
    if cls is not None:
        try:
            with torch.device("meta"):
                model = cls._from_config(config, dtype=getattr(torch, dtype))
            return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        except (ValueError, TypeError, RuntimeError, NotImplementedError, ImportError, AttributeError):
            pass  # an estimate must not stop a run: fall back to the shape
    cfg = text_config(config)
    h, n = int(cfg.hidden_size), int(cfg.num_hidden_layers)
    params = n * (4 * h * h + 3 * h * feed_forward_width(cfg)) + 2 * int(cfg.vocab_size) * h
    return params * DTYPE_BYTES[dtype]


@dataclass(frozen=True)
class Estimate:
    """Peak bytes of one forward over (batch, length) tokens with the given chunk sizes."""

    weights: int
    activations: int
    reserve: int

    @property
    def peak(self) -> int:
        return self.weights + self.activations + self.reserve


def activation_bytes(shape: ModelShape, batch: int, length: int, sizes: ChunkSizes, kept: int = 0) -> int:
    """Peak bytes alive inside one decoder layer (the largest over its layers), plus ``kept`` bytes of
    captured vectors held on the device until the batch ends."""
    e, h, q, kv = shape.dtype_bytes, shape.hidden, shape.q_width, shape.kv_width
    tokens = batch * length
    n = batch * min(length, sizes.tokens or length)  # tokens in flight in a token-wise part
    norm = n * h * (2 * FLOAT32 + e)  # a norm's float32 copy and product, and its cast back
    head_norm = n * q * (2 * FLOAT32 + e)  # q_norm / k_norm on the head dim (Qwen3, OLMo 2, Gemma 3)
    rotary = 3 * n * (q + kv) * e  # q*cos, rotate_half (cat of a negated half), *sin
    rope_tables = 3 * tokens * shape.head_dim * FLOAT32  # cos and sin, formed in float32
    stream = 2 * tokens * h * e  # the residual stream and the normed input of the layer
    moments = [
        stream + norm,  # input norm
        stream + tokens * (2 * q + 3 * kv) * e + head_norm,  # projections and head norms
        stream + tokens * (2 * q + 4 * kv) * e + rotary,  # rotation: inputs and outputs alive together
        stream
        + tokens * (2 * q + 2 * kv) * e
        + max(_attention(shape, batch, length, w, sizes) for w in _kinds(shape)),
        stream + tokens * (q + h) * e,  # output projection
        # feed-forward: stream, its normed input, the output, and one slice's gate/up/product tensors
        stream + tokens * h * e + max(norm, 3 * n * shape.intermediate * e),
        3 * tokens * h * e,  # the residual add: old stream, block output, new stream
    ]
    return max(moments) + rope_tables + kept


def _kinds(shape: ModelShape) -> set[int | None]:
    return set(shape.windows) or {None}


def _attention(shape: ModelShape, batch: int, length: int, window: int | None, sizes: ChunkSizes) -> int:
    """What the attention backend adds for one layer kind (window None: full attention)."""
    e, heads, q = shape.dtype_bytes, shape.q_heads, shape.q_width
    out_and_lse = batch * length * (q * e + heads * FLOAT32)
    if shape.backend in LINEAR_BACKENDS:
        return out_and_lse
    eager = shape.backend == "eager"
    if not eager and (window is None or length <= window):
        return out_and_lse  # sdpa's causal kernels: no mask, linear memory
    rows = min(length, sizes.queries or length)
    deferred = sizes.queries is not None
    keys = length if window is None or not deferred else min(length, rows + window)
    mask = batch * rows * keys * (1 + e)  # the boolean mask and the float bias made from it
    repeated = 2 * batch * keys * q * e  # GQA keys and values repeated per query head when a mask is given
    scores = batch * heads * rows * keys * (2 * e + FLOAT32) if eager else 0
    return out_and_lse + mask + repeated + scores


def estimate(shape: ModelShape, batch: int, length: int, sizes: ChunkSizes, kept: int = 0) -> Estimate:
    return Estimate(shape.weight_bytes, activation_bytes(shape, batch, length, sizes, kept), RUNTIME_RESERVE)


@dataclass(frozen=True)
class MemoryPlan:
    """The chunk sizes for (batch, length) in ``budget`` bytes, and the estimates behind them."""

    batch: int
    length: int
    budget: int
    sizes: ChunkSizes
    one_pass: Estimate
    chosen: Estimate

    @property
    def fits(self) -> bool:
        return self.chosen.peak <= self.budget


def plan_memory(
    shape: ModelShape, batch: int, length: int, budget: int, token_chunk: int | None = None, kept: int = 0
) -> MemoryPlan:
    """One pass when it fits; else the largest token chunk (and query chunk) that fits. A ``token_chunk``
    given by the user is kept; only the query chunk is then chosen. The plan may not fit: see ``fits``."""
    one_pass = estimate(shape, batch, length, ChunkSizes(), kept)
    if token_chunk is None and one_pass.peak <= budget:
        return MemoryPlan(batch, length, budget, ChunkSizes(), one_pass, one_pass)
    chunks = (token_chunk,) if token_chunk is not None else TOKEN_CHUNKS
    best: tuple[ChunkSizes, Estimate] | None = None
    for tokens in chunks:
        for queries in QUERY_CHUNKS:
            sizes = ChunkSizes(tokens, min(queries, tokens))
            found = estimate(shape, batch, length, sizes, kept)
            if best is None or found.peak < best[1].peak:
                best = (sizes, found)
            if found.peak <= budget:
                return MemoryPlan(batch, length, budget, sizes, one_pass, found)
    assert best is not None
    return MemoryPlan(batch, length, budget, best[0], one_pass, best[1])


def longest_fitting(fits: Callable[[int], bool]) -> int:
    """The longest length for which ``fits(length)`` holds, given that it holds for all shorter (0: none)."""
    low, high = 0, 1
    while fits(high) and high < 2**31:
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def device_free_bytes(device: torch.device) -> tuple[int, str]:
    """Free memory of ``device`` now, and how it was read (for messages)."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"model.device={device}: no CUDA device is visible, so its free memory cannot be read; pass "
                "inference.memory_budget_gb to plan for that device"
            )
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free memory of {device} ({torch.cuda.get_device_name(device)})"
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024, "available host memory (MemAvailable)"
    except (OSError, KeyError, ValueError):
        pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return int(pages), "available host memory"


def gb(n: float) -> str:
    return f"{n / GB:.1f} GB"


def refusal(
    plan: MemoryPlan, shape: ModelShape, longest: int, budget_source: str, length_key: str
) -> UserError:
    """The one message for a plan that cannot fit, naming the longest length that would."""
    return UserError(
        f"a {plan.length}-token example (batch {plan.batch}) needs about {gb(plan.chosen.peak)} at the least "
        f"(inference.token_chunk={plan.sizes.tokens}, weights {gb(plan.chosen.weights)}), more than the "
        f"{gb(plan.budget)} budget ({budget_source}); the longest that would fit is {longest} tokens: lower "
        f"{length_key}, or raise inference.memory_budget_gb if the device has more"
    )
