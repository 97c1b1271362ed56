"""How many positions a model was built for, read from its config (no weights).

A text longer than this is rotated to positions the model never saw in training; the capture would still
run (RoPE has no hard end) but the vectors past the limit describe an extrapolation, not the model. So a
``tokenizer.max_length`` above the limit is refused, and with ``max_length`` null texts are cut to it.

The limit is ``max_position_embeddings`` of the text decoder, raised to ``factor x
original_max_position_embeddings`` for YaRN and longrope, whose factor transformers defines as the ratio
of the extended length to the original one (a missing original length is ``max_position_embeddings``, as
transformers takes it). Checkpoints that ship such a scaling (Ministral 3, GPT-OSS) already set
``max_position_embeddings`` to the extended length; a YaRN override on one that does not (Qwen3 at 128k)
raises the limit through the factor. Other factors are not applied: llama3's scales wavelengths, not the
context (Llama 3.2 has factor 32 over 8192 positions and is a 131072-position model, as its
``max_position_embeddings`` says), and for ``linear`` or ``dynamic`` checkpoints disagree on whether
``max_position_embeddings`` already includes the factor (Gemma 3's does). A config that understates its
model's length can be corrected with ``model.config_overrides: {max_position_embeddings: N}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PretrainedConfig

from .models import text_config

# Scaling types whose factor is the extended length over ``original_max_position_embeddings``.
STATED_ORIGIN = ("yarn", "longrope")


@dataclass(frozen=True)
class PositionLimit:
    positions: int
    # Where the number comes from, for messages and the card.
    source: str


def position_limit(config: PretrainedConfig) -> PositionLimit | None:
    """The decoder's position limit, or None when its config states none."""
    cfg = text_config(config)
    # MPT calls it max_seq_len (its ALiBi bias is built that long; a longer text fails inside the model).
    key = next((k for k in ("max_position_embeddings", "max_seq_len") if getattr(cfg, k, None)), None)
    declared = getattr(cfg, key, None) if key else None
    if not isinstance(declared, int) or declared < 1:
        return None
    best = PositionLimit(declared, f"{key}={declared}")
    for params in _rope_parameter_sets(getattr(cfg, "rope_parameters", None)):
        kind = params.get("rope_type", params.get("type"))
        factor, original = params.get("factor"), params.get("original_max_position_embeddings")
        if original is None and kind in STATED_ORIGIN:
            original = declared  # what transformers assumes when the original length is not written
        if kind not in STATED_ORIGIN or not isinstance(factor, (int, float)) or not isinstance(original, int):
            continue
        extended = int(factor * original)
        if extended > best.positions:
            best = PositionLimit(
                extended, f"{kind} factor {factor:g} x original_max_position_embeddings={original}"
            )
    return best


def _rope_parameter_sets(rope: Any) -> list[dict[str, Any]]:
    """One dict of RoPE parameters, or one per layer type (Gemma 3 keys them by layer type)."""
    if not isinstance(rope, dict):
        return []
    nested = [dict(v) for v in rope.values() if isinstance(v, dict)]
    return nested or [dict(rope)]
