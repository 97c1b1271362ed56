"""What a run will capture, worked out from the config alone (no weights loaded)."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PretrainedConfig

from ..capture.heads import HeadSelection, select_heads
from ..capture.models import ModelLayout, build_config
from ..capture.positions import PositionLimit, position_limit
from ..capture.samplers import Sampler, build_sampler
from ..capture.shapes import measured_layout
from ..core.config import Config
from .validate import validate


@dataclass(frozen=True)
class CapturePlan:
    model_config: PretrainedConfig
    layout: ModelLayout
    selection: HeadSelection
    sampler: Sampler
    # The positions the model was built for (None: its config states none); longer texts are cut to it.
    position_limit: PositionLimit | None = None


def plan_capture(cfg: Config) -> CapturePlan:
    """Check the config values, then read the model's layout from its config (its heads measured by a
    forward without weights, :mod:`qk_sniffer.capture.shapes`) and check layers/heads and lengths against it.

    Every problem is a UserError raised before any weight is loaded; those the config alone shows are
    raised before the model's config is fetched.
    """
    validate(cfg)
    model_config = build_config(cfg.model)
    layout = measured_layout(model_config, trust_remote_code=cfg.model.trust_remote_code)
    limit = position_limit(model_config)
    validate(cfg, layout, limit)
    return CapturePlan(
        model_config, layout, select_heads(cfg.capture, layout), build_sampler(cfg.sampler), limit
    )
