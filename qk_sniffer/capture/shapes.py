"""Per-layer attention shapes, read off the query and key tensors the model's attention calls receive.

A config does not say everything a capture must know: some families run other head counts or head dims in
some layers (Inkling's sliding layers, MiMo-V2-Flash's doubled key heads), hybrids run softmax attention in
some layers only, and Zamba2 applies one shared block at several depths. So the heads a run writes come
from the tensors the attention calls see, measured twice:

- before any weight loads (:func:`weightless_shapes`): the model is built on the meta device and one short
  forward runs through the tap under a fake-tensor mode, which computes shapes only (no memory, no data;
  a 70B model takes seconds). The plan, the dry run and the dataset's config names come from it.
- after loading (:func:`model_shapes`): the same two-token forward on the real model; the run refuses to
  start if it differs from the plan, so a capture can never write a subset of what the model computes.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from transformers import PretrainedConfig, PreTrainedModel

from ..core.errors import UserError
from .models import (
    ModelLayout,
    _auto_class,
    attention_backend,
    backbone_of,
    choose_attn_implementation,
    layout_from_config,
)
from .module_tap import open_tap
from .rows import KeysNotTokens

log = logging.getLogger(__name__)

PROBE_TOKENS = 2


@dataclass(frozen=True)
class LayerShape:
    """What one decoder layer's attention call receives: query heads, key heads, and their head_dim."""

    q_heads: int
    kv_heads: int
    head_dim: int


Shapes = dict[int, LayerShape]


class AttentionShapeError(UserError):
    """The attention calls cannot be named one (layer, head) per vector."""


def record_shapes(backbone: torch.nn.Module, delegate: str, input_ids: torch.Tensor) -> Shapes:
    """Run ``backbone`` on ``input_ids`` through the tap and return each decoder layer's attention shape.

    A layer that calls attention twice in one forward, whose query and key differ in head_dim, or whose keys
    are not one per token, is refused: its vectors could not be named (layer, head, q|k, position) one to one.
    """
    seen: dict[int, list[LayerShape]] = {}

    def record(layer: int, query: torch.Tensor, key: torch.Tensor, window: int | None) -> None:
        if key.shape[2] != query.shape[2]:
            raise KeysNotTokens(layer, int(key.shape[2]), int(query.shape[2]))
        if query.shape[-1] != key.shape[-1]:
            raise AttentionShapeError(
                f"layer {layer}: its query head_dim {query.shape[-1]} differs from its key head_dim "
                f"{key.shape[-1]}; a dot product of the two is not what it computes"
            )
        seen.setdefault(layer, []).append(
            LayerShape(int(query.shape[1]), int(key.shape[1]), int(query.shape[-1]))
        )

    with open_tap(backbone, delegate, record), torch.no_grad():
        backbone(input_ids=input_ids, use_cache=False)
    twice = sorted(layer for layer, calls in seen.items() if len(calls) > 1)
    if twice:
        raise AttentionShapeError(
            f"decoder layers {twice} call attention more than once per forward; their vectors cannot be "
            "named (layer, head) one to one"
        )
    return {layer: calls[0] for layer, calls in sorted(seen.items())}


def model_shapes(model: PreTrainedModel) -> Shapes:
    """The loaded model's per-layer attention shapes, from a two-token forward through the tap."""
    backbone = backbone_of(model)
    device = next(backbone.parameters()).device
    ids = torch.ones((1, PROBE_TOKENS), dtype=torch.long, device=device)
    return record_shapes(backbone, attention_backend(model), ids)


def weightless_shapes(config: PretrainedConfig, trust_remote_code: bool = False) -> Shapes | None:
    """The per-layer attention shapes of ``config``'s model, without weights; None where that cannot run.

    The model is built on the meta device (from a copy: building sets the backend and dtype on the config)
    and run under :class:`FakeTensorMode`, whose symbolic sizes let data-dependent code (MoE routing, mask
    checks) through. bfloat16, because some meta kernels (grouped expert matmuls) accept nothing else.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    config = copy.deepcopy(config)
    fake_log = logging.getLogger("torch._subclasses.fake_tensor")
    level, fake_log.level = fake_log.level, logging.CRITICAL  # it logs a traceback for each refused kernel
    try:
        backend = choose_attn_implementation(None, config, torch.device("cpu")) or "eager"
        with torch.device("meta"):
            model = _auto_class(config, trust_remote_code).from_config(
                config,
                dtype=torch.bfloat16,
                attn_implementation=backend,
                trust_remote_code=trust_remote_code,
            )
        backbone = backbone_of(model)
        ids = torch.ones((1, PROBE_TOKENS), dtype=torch.long, device="meta")
        with FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv()):
            return record_shapes(backbone, backend, ids)
    except AttentionShapeError:
        raise
    except Exception as exc:  # any family's code may refuse a shape-only run; the loaded model decides then
        log.info("could not measure the attention shapes without weights (%s: %s)", type(exc).__name__, exc)
        return None
    finally:
        fake_log.setLevel(level)


def with_shapes(layout: ModelLayout, shapes: Shapes) -> ModelLayout:
    """``layout`` (read from the config) with the heads, head dims and attention layers of ``shapes``.

    Layers that made no attention call, cross-attention ones aside, are the skipped non-softmax layers.
    """
    if not shapes:
        raise AttentionShapeError("no attention call reached the tap: there is no query or key to capture")
    outside = [layer for layer in shapes if not 0 <= layer < layout.num_layers]
    if outside:
        raise AttentionShapeError(
            f"attention ran in layers {outside}, outside the decoder's layers 0..{layout.num_layers - 1}"
        )
    cross = set(layout.cross_attention_layers)

    def common(values: list[int]) -> int:
        return Counter(values).most_common(1)[0][0]

    def per_layer(field: str) -> tuple[int, ...]:
        values = {layer: getattr(shape, field) for layer, shape in shapes.items()}
        if len(set(values.values())) == 1:
            return ()
        return tuple(values.get(layer, 0) for layer in range(layout.num_layers))

    return replace(
        layout,
        num_q_heads=common([s.q_heads for s in shapes.values()]),
        num_kv_heads=common([s.kv_heads for s in shapes.values()]),
        head_dim=common([s.head_dim for s in shapes.values()]),
        q_heads_per_layer=per_layer("q_heads"),
        kv_heads_per_layer=per_layer("kv_heads"),
        head_dims=per_layer("head_dim"),
        linear_attention_layers=tuple(
            layer for layer in range(layout.num_layers) if layer not in shapes and layer not in cross
        ),
    )


def measured_layout(
    config: PretrainedConfig,
    *,
    check: bool = True,
    trust_remote_code: bool = False,
    measure: Callable[[PretrainedConfig, bool], Shapes | None] | None = None,
) -> ModelLayout:
    """The layout a run plans with: read from ``config``, its heads measured without weights where that runs
    (else as the config states them; :func:`check_loaded` then compares them with the loaded model).
    ``measure``: who measures them (:func:`weightless_shapes`, or a cache of its answers)."""
    layout = layout_from_config(config, check=check)
    shapes = (measure or weightless_shapes)(config, trust_remote_code)
    return layout if shapes is None else with_shapes(layout, shapes)


def loaded_layout(model: PreTrainedModel) -> ModelLayout:
    """The layout of a loaded model, its heads measured on the model itself."""
    return with_shapes(layout_from_config(model.config), model_shapes(model))


def check_loaded(model: PreTrainedModel, layout: ModelLayout) -> None:
    """Refuse to capture with ``layout`` unless the loaded model's attention calls see exactly its heads."""
    seen = with_shapes(layout, model_shapes(model))
    planned, measured = _heads(layout), _heads(seen)
    if planned != measured:
        differ = sorted(set(planned.items()) ^ set(measured.items()))
        raise AttentionShapeError(
            f"the loaded {layout.model_type} model's attention calls see other heads than its config states "
            f"(layer: (query heads, key heads, head_dim), planned vs seen: {differ[:6]}); its config cannot "
            "be read without weights, so capture it through the Python API (qk_sniffer.attach), which "
            "measures the loaded model"
        )


def _heads(layout: ModelLayout) -> dict[int, tuple[int, int, int]]:
    return {
        layer: (layout.q_heads_of(layer), layout.kv_heads_of(layer), layout.head_dim_of(layer))
        for layer in layout.self_attention_layers
    }
