"""A capture compared with the model's own eager computation: what the family sweep and the load-time
self-check of families outside the support matrix both measure.

The reference is recorded without our tap: every attention module is switched to ``eager`` and the
modeling module's own ``eager_attention_forward`` is swapped for a recorder (post-RoPE query/key), and its
rotary functions for recorders (pre-RoPE). Attention outside the registry is recorded at its seams in a
plain forward, and those vectors, like those of ALiBi families, must also explain the model's own attention
probabilities (:mod:`.logits`). Each example runs alone and unpadded; the capture runs them as one
right-padded batch through :class:`~qk_sniffer.capture.session.CaptureSession`, the path every run takes. A
mismatch names its (layer, kind, example, position).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from ..core.errors import UserError
from ..inputs.data import DataStats, Example, batches
from . import support as families
from .compat import (
    EAGER_ATTENTION,
    attention_implementation,
    modeling_module,
    module_globals,
    rotary_functions,
)
from .decoder_layers import RepeatedCall, running_layer
from .heads import HeadSelection
from .logits import attention_problems
from .models import ModelLayout, backbone_of, text_config
from .module_tap import seam_modules, seam_reference
from .pre_rope import EarlierKeys, pre_rope_pair, pre_rope_query, rotary_call
from .rows import Block, KeysNotTokens
from .samplers import AllSampler, Sampler
from .shapes import loaded_layout
from .tap import attention_modules

TOLERANCE = 1e-4  # float32, absolute, per vector component


class NoEagerPath(Exception):  # noqa: N818 - a finding of the sweep, reported as a refusal reason
    """The family's attention modules have no ``eager_attention_forward`` to record."""


@dataclass
class LayerQK:
    """One layer's vectors of one example, (heads, positions, head_dim), float32 on the host."""

    q_post: torch.Tensor
    k_post: torch.Tensor
    q_pre: torch.Tensor
    k_pre: torch.Tensor
    rotated: bool  # whether the layer called a rotary function


class RepeatedLayer(Exception):  # noqa: N818 - a finding of the sweep, reported as a refusal reason
    """A decoder layer called its eager attention more than once in one forward."""


@torch.no_grad()
def eager_qk(model: PreTrainedModel, input_ids: list[int]) -> dict[int, LayerQK]:
    """The model's own eager Q/K for one unpadded example, per decoder layer that called its eager attention
    (named as the tap names them: by the decoder layer running, :mod:`.decoder_layers`)."""
    backbone = backbone_of(model)
    if seam_modules(backbone):  # attention outside the registry: its own seams (held to its probabilities)
        ids = torch.tensor([input_ids], device=next(model.parameters()).device)
        return {layer: LayerQK(*qk) for layer, qk in seam_reference(backbone, ids).items()}
    modules = attention_modules(backbone)
    modeling = {modeling_module(m) for m in modules}
    missing = [mod.__name__ for mod in modeling if not hasattr(mod, EAGER_ATTENTION)]
    if missing or not modeling:
        raise NoEagerPath(f"no eager_attention_forward in {', '.join(missing) or 'any attention module'}")
    tapped = {id(m) for m in modules}
    configs: dict[int, Any] = {id(m.config): m.config for m in modules}
    configs[id(backbone.config)] = backbone.config
    layers: dict[int, LayerQK] = {}
    pending: dict[str, Any] = {}
    repeated = RepeatedCall()
    earlier_keys = EarlierKeys()

    def record_eager(original: Any) -> Any:
        def recorder(
            module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, *a: Any, **kw: Any
        ) -> Any:
            calls = pending.pop("rot", [])
            if id(module) in tapped and not repeated(layer := layer_of(module), query, key):
                if key.shape[2] != query.shape[2]:
                    raise KeysNotTokens(layer, key.shape[2], query.shape[2])
                if (earlier := earlier_keys.get(key)) is not None:
                    q_pre, k_pre = pre_rope_query(query, calls), earlier
                else:
                    q_pre, k_pre = pre_rope_pair(query, key, calls)
                    earlier_keys.remember(key, k_pre)
                q_post, k_post, q_pre, k_pre = (t[0].float().clone() for t in (query, key, q_pre, k_pre))
                if layer in layers:
                    raise RepeatedLayer(f"decoder layer {layer} calls attention more than once per forward")
                layers[layer] = LayerQK(q_post, k_post, q_pre, k_pre, rotated=bool(calls))
            return original(module, query, key, *a, **kw)

        return recorder

    def record_rotary(original: Any) -> Any:
        def recorder(*a: Any, **kw: Any) -> Any:
            out = original(*a, **kw)
            call = rotary_call(a, out)
            if call is not None:
                pending.setdefault("rot", []).append(call)
            return out

        return recorder

    replaced = [(mod, EAGER_ATTENTION, record_eager) for mod in modeling]
    replaced += [(mod, name, record_rotary) for mod, name in rotary_functions(modules)]
    with (
        attention_implementation(configs.values(), "eager"),
        module_globals(replaced),
        running_layer(backbone) as layer_of,
    ):
        device = next(model.parameters()).device
        backbone(input_ids=torch.tensor([input_ids], device=device), use_cache=False)
    return layers


def every_head(layout: ModelLayout) -> HeadSelection:
    layers = layout.self_attention_layers
    return HeadSelection(
        {layer: tuple(range(layout.q_heads_of(layer))) for layer in layers},
        {layer: tuple(range(layout.kv_heads_of(layer))) for layer in layers},
    )


def capture_blocks(
    model: PreTrainedModel, texts: list[list[int]], pre_rope: bool, layout: ModelLayout, pad_id: int = 0
) -> list[Block]:
    """Every position of every head of ``texts``, as one right-padded batch through the capture session."""
    from .session import CaptureSession  # the session imports models; keep this module importable by it

    examples = [Example(i, i, ids) for i, ids in enumerate(texts)]
    (batch,) = batches(examples, len(examples), pad_id, DataStats())
    sampler: Sampler = AllSampler()  # type: ignore[assignment] # frozen dataclass vs the protocol's name
    with CaptureSession(model, every_head(layout), sampler, pre_rope=pre_rope, layout=layout) as session:
        return session.forward(batch).result()


@dataclass
class Comparison:
    """Every captured vector against the eager reference, in both modes."""

    checked: int = 0
    worst: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not self.problems and self.checked > 0


def compare(
    refs: list[dict[int, LayerQK]],
    blocks: list[Block],
    pre_rope: bool,
    result: Comparison,
    tol: float = TOLERANCE,
    relative: bool = False,
) -> None:
    """Add to ``result`` every vector of ``blocks`` checked against ``refs`` (one reference per example)."""
    mode = "pre" if pre_rope else "post"
    for block in blocks:
        for index in range(len(block.plan)):
            example, pos = int(block.plan.example_ids[index]), int(block.plan.positions[index])
            ref = refs[example].get(block.layer)
            if ref is None:
                result.problems.append(f"l{block.layer}: captured, but the eager forward never reached it")
                return
            source = {
                ("q", False): ref.q_post,
                ("k", False): ref.k_post,
                ("q", True): ref.q_pre,
                ("k", True): ref.k_pre,
            }[(block.kind, pre_rope)]
            heads = list(block.heads)
            expected = source[heads, pos].numpy()
            got = block.vectors[:, index, :]
            if got.shape != expected.shape:
                result.problems.append(
                    f"{mode} {block.kind} l{block.layer}: captured shape {got.shape}, eager {expected.shape}"
                )
                return
            err = float(np.abs(got - expected).max()) if got.size else 0.0
            if relative and got.size:
                err /= max(1.0, float(np.abs(expected).max()))
            result.worst = max(result.worst, err)
            result.checked += len(heads)
            if not err <= tol:
                result.problems.append(
                    f"{mode} {block.kind} l{block.layer} ex{example} pos{pos}: max abs error {err:.3g}"
                )
                return


def completeness(ref: dict[int, LayerQK], blocks: list[Block], rows: int) -> str | None:
    """What is missing or extra in ``blocks`` against the (layer, head, q|k) the eager calls of ``ref`` saw,
    each of which must hold ``rows`` rows; None when the capture is complete."""
    seen = {(layer, h, "q") for layer, r in ref.items() for h in range(r.q_post.shape[0])}
    seen |= {(layer, h, "k") for layer, r in ref.items() for h in range(r.k_post.shape[0])}
    written = {(b.layer, h, b.kind) for b in blocks for h in b.heads}
    if written != seen:
        missing, extra = sorted(seen - written), sorted(written - seen)
        return (
            f"incomplete: the capture wrote {len(written & seen)} of the {len(seen)} (layer, head, kind) the "
            f"eager attention calls saw; missing {_names(missing)}, extra {_names(extra)}"
        )
    short = sorted({(b.layer, b.kind) for b in blocks if len(b.plan) != rows})
    if short:
        return f"incomplete: (layer, kind) {short[:5]} kept other than the {rows} positions of the batch"
    return None


def _names(keys: list[tuple[int, int, str]]) -> str:
    shown = ", ".join(f"l{layer}h{head}{kind}" for layer, head, kind in keys[:6])
    return f"[{shown}{', ...' if len(keys) > 6 else ''}] ({len(keys)})"


def check_against_eager(
    model: PreTrainedModel,
    texts: list[list[int]],
    layout: ModelLayout,
    tol: float = TOLERANCE,
    relative: bool = False,
) -> Comparison:
    """Capture ``texts`` pre- and post-RoPE and compare every vector with the model's own eager computation.

    Also checks that the capture is complete: it wrote every (layer, head, q|k) the model's own eager
    attention calls saw, at every position, and nothing else (counted from those calls, never from the
    config); and that rotation shows where the model rotated and nowhere else (a rotary function the tap
    missed would otherwise make pre == post pass unnoticed).
    """
    refs = [eager_qk(model, ids) for ids in texts]
    result = Comparison()
    if layout.alibi_slopes or seam_modules(backbone_of(model)):
        # What was read must also explain the model's own attention probabilities (and the ALiBi slopes).
        result.problems += attention_problems(model, texts, refs, layout)
        if result.problems:
            return result
    eager_layers = sorted(refs[0])
    if eager_layers != list(layout.self_attention_layers):
        result.problems.append(
            f"the layout's self-attention layers are {list(layout.self_attention_layers)} but the eager "
            f"forward ran attention in layers {eager_layers}"
        )
        return result
    for pre_rope in (False, True):
        blocks = capture_blocks(model, texts, pre_rope, layout)
        captured = sorted({b.layer for b in blocks})
        if captured != eager_layers:
            result.problems.append(f"the tap captured layers {captured}, eager ran {eager_layers}")
            return result
        incomplete = completeness(refs[0], blocks, sum(map(len, texts)))
        if incomplete:
            result.problems.append(incomplete)
            return result
        compare(refs, blocks, pre_rope, result, tol, relative)
        if result.problems:
            return result
    nope = set(layout.nope_layers)
    for layer in eager_layers:
        ref = refs[0][layer]
        if ref.rotated == (layer in nope):
            said = "no rotation" if layer in nope else "a rotation"
            result.problems.append(f"l{layer}: the config says {said}, the model did the opposite")
    return result


# Downstream layers run sdpa in the capture and eager in the reference; in half precision their rounding
# differs by far more than float32's, so there the bar is relative to the vector's largest component.
HALF_TOLERANCE = 5e-2
PROBE_LENGTHS = (23, 14, 31)


def check_unlisted_family(model: PreTrainedModel) -> None:
    """After loading: a family the support matrix does not list must pass :func:`require_exact`."""
    if families.matrix_entry(model.config.model_type) is None:
        require_exact(model)


def require_exact(model: PreTrainedModel) -> None:
    """Refuse a family the support matrix does not list unless a probe batch captures exactly.

    The probe is a fixed batch of unequal lengths of token ids (every row checked, both modes); a mismatch is
    a UserError naming the first differing vector, raised before any data is read or written.
    """
    layout = loaded_layout(model)
    vocab = int(text_config(model.config).vocab_size)
    rng = np.random.default_rng(0)
    texts = [rng.integers(3, vocab, size=n).tolist() for n in PROBE_LENGTHS]
    dtype = next(model.parameters()).dtype
    tol = TOLERANCE if dtype == torch.float32 else HALF_TOLERANCE
    try:
        with torch.inference_mode():
            result = check_against_eager(model, texts, layout, tol=tol, relative=dtype != torch.float32)
    except NoEagerPath as exc:
        raise UserError(
            f"model family {layout.model_type!r} is not in the support matrix and cannot be self-checked: "
            f"{exc}"
        ) from None
    if not result.exact:
        problem = result.problems[0] if result.problems else "no vector was captured"
        raise UserError(
            f"model family {layout.model_type!r} is not in the support matrix and its first-batch self-check "
            f"against its own eager attention failed: {problem}; it cannot be captured exactly"
        )
