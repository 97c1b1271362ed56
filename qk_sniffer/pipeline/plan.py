"""What a run will capture, worked out from the config alone (no weights loaded)."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PretrainedConfig, PreTrainedModel

from ..capture.heads import HeadSelection, select_heads
from ..capture.models import ModelLayout, build_config, load_model
from ..capture.positions import PositionLimit, position_limit
from ..capture.probe import check_before_loading
from ..capture.samplers import Sampler, build_sampler
from ..capture.selfcheck import check_unlisted_family
from ..capture.shapes import check_loaded, measured_layout
from ..core.config import Config, ModelConfig
from .shapes_cache import remembered_shapes
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
    layout = measured_layout(
        model_config, trust_remote_code=cfg.model.trust_remote_code, measure=remembered_shapes
    )
    limit = position_limit(model_config)
    validate(cfg, layout, limit)
    return CapturePlan(
        model_config, layout, select_heads(cfg.capture, layout), build_sampler(cfg.sampler), limit
    )


def load_checked(cfg: ModelConfig, config: PretrainedConfig, layout: ModelLayout | None) -> PreTrainedModel:
    """The model's weights, loaded after the checks that need none and checked before any capture: the probe
    of the family on a transformers release the matrix was not measured on, the self-check of a family the
    matrix does not list, and (given the plan's ``layout``) the heads its attention calls really see."""
    check_before_loading(cfg, config)
    model = load_model(cfg, config)
    check_unlisted_family(model)
    if layout is not None:
        check_loaded(model, layout)
    return model
