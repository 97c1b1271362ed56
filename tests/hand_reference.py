"""Query and key vectors of Llama and Qwen3 decoders computed by hand in float64, for exactness tests.

Independent of the capture path on purpose: nothing from qk_sniffer, no attention registry, no hooks on the
attention modules, no rotary module of transformers. From each layer's input hidden states it applies, with
the layer's own weights: the input RMSNorm, the q/k projections, Qwen3's per-head q/k RMSNorm (pre-RoPE),
then RoPE with the frequencies worked out here from the config's ``rope_parameters`` (post-RoPE).

The layer inputs come from the model's own forward (``output_hidden_states=True``). That is not circular:
the capture under test is how Q and K are taken out of the attention call (the tap, un-rotating or
stashing for pre-RoPE, the GQA head mapping, the position sampling, the export). The residual stream feeding
a layer is the model's business, produced by a separate plain forward without any tap, and this reference
recomputes every Q and K from it and the weights alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class HandQK:
    q_pre: torch.Tensor  # (Hq, S, D) float64
    k_pre: torch.Tensor  # (Hkv, S, D)
    q_post: torch.Tensor
    k_post: torch.Tensor


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def inverse_frequencies(rope: dict, head_dim: int) -> tuple[torch.Tensor, float]:
    """Per pair of dimensions, the rotation speed; and the factor cos/sin are scaled by (YaRN)."""
    base = float(rope["rope_theta"])
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    inv = 1.0 / base**exponents
    kind = rope.get("rope_type", "default")
    if kind == "default":
        return inv, 1.0
    if kind == "llama3":
        # Llama 3.1: long wavelengths slowed by `factor`, short ones kept, a linear blend in between.
        factor, low, high = (
            float(rope["factor"]),
            float(rope["low_freq_factor"]),
            float(rope["high_freq_factor"]),
        )
        context = float(rope["original_max_position_embeddings"])
        wavelength = 2 * math.pi / inv
        blend = ((context / wavelength - low) / (high - low)).clamp(0.0, 1.0)
        blended = (1 - blend) * inv / factor + blend * inv
        return torch.where(wavelength > context / low, inv / factor, blended), 1.0
    if kind == "yarn":
        # YaRN (Peng et al. 2023): interpolate the slow dimensions by `factor`, keep the fast ones, ramp
        # linearly between the dimensions that turn beta_fast and beta_slow times over the original context.
        factor = float(rope["factor"])
        context = float(rope["original_max_position_embeddings"])
        beta_fast, beta_slow = float(rope.get("beta_fast", 32)), float(rope.get("beta_slow", 1))

        def dim_turning(turns: float) -> float:
            return head_dim * math.log(context / (turns * 2 * math.pi)) / (2 * math.log(base))

        lo = max(math.floor(dim_turning(beta_fast)), 0)
        hi = min(math.ceil(dim_turning(beta_slow)), head_dim - 1)
        if lo == hi:
            hi += 0.001
        ramp = ((torch.arange(head_dim // 2, dtype=torch.float64) - lo) / (hi - lo)).clamp(0.0, 1.0)
        keep = 1 - ramp  # 1: the fast dimensions, extrapolated unchanged
        inv = inv / factor * (1 - keep) + inv * keep
        scale = rope.get("attention_factor") or (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0)
        return inv, float(scale)
    raise NotImplementedError(f"hand reference: rope_type {kind!r}")


def rotate(x: torch.Tensor, positions: torch.Tensor, inv: torch.Tensor, scale: float) -> torch.Tensor:
    """RoPE as transformers lays it out: dimension i pairs with i + D/2, both turning at inv[i]."""
    angles = positions[:, None].to(torch.float64) * inv[None, :]  # (S, D/2)
    cos = torch.cat([angles.cos(), angles.cos()], -1) * scale
    sin = torch.cat([angles.sin(), angles.sin()], -1) * scale
    half = x.shape[-1] // 2
    rotated_half = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated_half * sin


@torch.no_grad()
def hand_qk(model: torch.nn.Module, input_ids: list[int]) -> dict[int, HandQK]:
    """Every layer's Q and K (pre and post RoPE) for one unpadded example."""
    config = model.config
    n_q, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_q
    inv, scale = inverse_frequencies(dict(config.rope_parameters), head_dim)
    ids = torch.tensor([input_ids])
    hidden = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    positions = torch.arange(len(input_ids))
    out = {}
    for index, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        x = rms_norm(hidden[index][0].double(), layer.input_layernorm.weight.double(), config.rms_norm_eps)

        def project(linear: torch.nn.Linear, n_heads: int, x: torch.Tensor = x) -> torch.Tensor:
            y = x @ linear.weight.double().T
            if linear.bias is not None:
                y = y + linear.bias.double()
            return y.view(len(input_ids), n_heads, head_dim).transpose(0, 1)  # (H, S, D)

        q, k = project(attn.q_proj, n_q), project(attn.k_proj, n_kv)
        if hasattr(attn, "q_norm"):  # Qwen3 normalises each head before rotating it
            q = rms_norm(q, attn.q_norm.weight.double(), config.rms_norm_eps)
            k = rms_norm(k, attn.k_norm.weight.double(), config.rms_norm_eps)
        out[index] = HandQK(q, k, rotate(q, positions, inv, scale), rotate(k, positions, inv, scale))
    return out
