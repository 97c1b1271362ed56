"""The model's attention probabilities, explained by q and k: a witness independent of where they were read.

A seam (:mod:`.module_tap`) reads q and k where a module forms them; comparing a capture with the same seam in
a plain forward checks the capture path, not the reading. This module checks the reading: with
``output_attentions=True`` in eager mode the model returns softmax(logits) per layer, and over each row's
unmasked keys ``log p(i, j)`` must equal ``scale * q_i . k_j + slope[h] * j + c_i`` (softmax forgets the
row constant ``c_i``), with one ``scale`` per layer, fitted, and the ALiBi slopes recorded in the layout.
Keys outside the causal mask (and the window) must get no probability at all. A wrong split of a fused
projection, a missed scaling or a wrong slope leaves a residual far above float32 rounding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .compat import attention_implementation
from .models import ModelLayout, backbone_of

TOLERANCE = 1e-4  # on logits, relative to the largest one (float32 model, float64 fit)
LEAK = 1e-6  # probability a masked key may get


def allowed_keys(length: int, window: int | None) -> Tensor:
    """(S, S) bool: key j is visible to query i (causal, and within the window where there is one)."""
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None, :]
    visible = j <= i
    return visible & (i - j < window) if window else visible


def logit_fit(
    query: Tensor, key: Tensor, probs: Tensor, slopes: tuple[float, ...], window: int | None
) -> tuple[float, float, float]:
    """(fitted scale, worst residual, largest masked probability) of one layer of one example.

    ``query`` (Hq, S, D), ``key`` (Hkv, S, D), ``probs`` (Hq, S, S); the residual is relative to the largest
    centred log-probability (at least 1).
    """
    heads, length, _ = query.shape
    key = key.double().repeat_interleave(heads // key.shape[0], dim=0)
    dots = query.double() @ key.transpose(-1, -2)
    visible = allowed_keys(length, window)
    positions = torch.arange(length, dtype=torch.float64)
    bias = torch.tensor(slopes, dtype=torch.float64)[:, None, None] * positions if slopes else 0.0
    log_probs = probs.double().clamp_min(torch.finfo(torch.float64).tiny).log() - bias

    def centred(x: Tensor) -> Tensor:
        x = torch.where(visible, x, 0.0)
        mean = x.sum(-1, keepdim=True) / visible.sum(-1, keepdim=True)
        return torch.where(visible, x - mean, 0.0)

    x, y = centred(dots), centred(log_probs)
    scale = float((x * y).sum() / (x * x).sum().clamp_min(1e-300))
    residual = float((y - scale * x).abs().max()) / max(1.0, float(y.abs().max()))
    leak = float(probs.double().masked_fill(visible, 0.0).max())
    return scale, residual, leak


@torch.no_grad()
def attention_problems(
    model: Any, texts: list[list[int]], refs: list[dict[int, Any]], layout: ModelLayout
) -> list[str]:
    """Where the reference q and k (``refs[i][layer].q_post`` / ``.k_post``) fail to explain the model's own
    eager attention probabilities on ``texts`` (empty when every layer of every text is explained)."""
    backbone = backbone_of(model)
    configs: dict[int, Any] = {id(m.config): m.config for m in backbone.modules() if hasattr(m, "config")}
    device = next(model.parameters()).device
    problems: list[str] = []
    with attention_implementation(configs.values(), "eager"):
        for example, ids in enumerate(texts):
            tokens = torch.tensor([ids], device=device)
            out = backbone(input_ids=tokens, use_cache=False, output_attentions=True)
            attentions = out.attentions or ()
            layers = layout.self_attention_layers
            if len(attentions) != len(layers):
                return [f"the model returned {len(attentions)} attention maps for {len(layers)} layers"]
            for layer, probs in zip(layers, attentions, strict=True):
                ref = refs[example][layer]
                scale, residual, leak = logit_fit(
                    ref.q_post, ref.k_post, probs[0].float().cpu(), layout.alibi_slopes,
                    layout.sliding_windows[layer],
                )  # fmt: skip
                if not residual <= TOLERANCE or not leak <= LEAK or not scale > 0:
                    problems.append(
                        f"l{layer} ex{example}: log attention probabilities differ from scale * q.k"
                        f"{' + ALiBi' if layout.alibi_slopes else ''} + row constant by {residual:.3g} "
                        f"(fitted scale {scale:.4g}; masked keys got up to {leak:.3g})"
                    )
                    return problems
    return problems
