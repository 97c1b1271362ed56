"""ALiBi: the per-head bias some families add to the attention logits instead of rotating q and k.

A reader rebuilds such a model's logits from the captured vectors only with the slopes, so they are recorded
in the layout (the metadata and the card): ``logit(i, j) = scale * q_i . k_j + slope[h] * j`` for the
unmasked keys ``j <= i`` (the same as ``-slope[h] * (i - j)`` up to a constant per row, which softmax
ignores). The slopes are read from the modeling module's own bias builder, called the way the model calls
it, so a family's quirks come with them: MPT ignores its config's ``alibi_bias_max`` (its model never passes
it), and Falcon rounds slopes to bfloat16, then divides the bias by ``sqrt(head_dim)``. Nothing of the
formulas is copied here; the attention-probability check (:mod:`.logits`) and the tests hold each family's
slopes against the model's own attention probabilities.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PretrainedConfig

from ..core.registry import Registry


@dataclass(frozen=True)
class AlibiFamily:
    """Where one family's ALiBi comes from."""

    # Whether this config uses ALiBi at all (Falcon switches between ALiBi and RoPE).
    switch: Callable[[PretrainedConfig], bool]
    # The model's own bias at key positions 0 and 1, one row per head: (heads, 2).
    bias: Callable[[PretrainedConfig, int], torch.Tensor]
    # What the model divides that bias by before adding it to the scaled logits.
    bias_divisor: Callable[[PretrainedConfig, int], float] = lambda cfg, heads: 1.0


ALIBI_FAMILIES: Registry[AlibiFamily] = Registry("ALiBi family")


def _modeling(name: str) -> Any:
    return importlib.import_module(f"transformers.models.{name}.modeling_{name}")


def _two_positions() -> torch.Tensor:
    """An attention mask of one unpadded row of two tokens: the bias builder's input for positions 0 and 1."""
    return torch.ones(1, 2, dtype=torch.long)


ALIBI_FAMILIES.register("bloom")(
    AlibiFamily(
        switch=lambda cfg: True,
        bias=lambda cfg, heads: (
            _modeling("bloom").build_alibi_tensor(_two_positions(), heads, torch.float32).reshape(heads, 2)
        ),
    )
)
# MptModel builds its bias with the default alibi_bias_max, whatever the config says, and always adds it.
ALIBI_FAMILIES.register("mpt")(
    AlibiFamily(
        switch=lambda cfg: True,
        bias=lambda cfg, heads: _modeling("mpt").build_mpt_alibi_tensor(heads, 2).reshape(heads, 2).float(),
    )
)
ALIBI_FAMILIES.register("falcon")(
    AlibiFamily(
        switch=lambda cfg: bool(getattr(cfg, "alibi", False)),
        bias=lambda cfg, heads: (
            _modeling("falcon").build_alibi_tensor(_two_positions(), heads, torch.float32).reshape(heads, 2)
        ),
        bias_divisor=lambda cfg, heads: math.sqrt(cfg.hidden_size // heads),
    )
)


def uses_alibi(cfg: PretrainedConfig) -> bool:
    """Whether the (text) config's model adds an ALiBi bias to its attention logits."""
    return cfg.model_type in ALIBI_FAMILIES and ALIBI_FAMILIES.get(cfg.model_type).switch(cfg)


def alibi_slopes(cfg: PretrainedConfig, heads: int) -> tuple[float, ...]:
    """Per query head, the bias the model adds to a logit per key position (empty without ALiBi)."""
    if not uses_alibi(cfg):
        return ()
    family = ALIBI_FAMILIES.get(cfg.model_type)
    with torch.device("cpu"):
        bias = family.bias(cfg, heads)
    slopes = (bias[:, 1] - bias[:, 0]).double() / family.bias_divisor(cfg, heads)
    return tuple(float(s) for s in slopes.tolist())
