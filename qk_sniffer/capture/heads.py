"""Which (layer, head) pairs are captured: layer/head filters, head sampling, and the GQA key heads."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..core.config import CaptureConfig, setting
from ..core.errors import UserError
from ..core.ranges import format_ranges
from .layout import ModelLayout


@dataclass(frozen=True)
class HeadSelection:
    """Per captured layer, the query heads and key heads kept (sorted). Layers absent capture nothing."""

    q_heads: dict[int, tuple[int, ...]]
    k_heads: dict[int, tuple[int, ...]]

    @property
    def layers(self) -> list[int]:
        return sorted(set(self.q_heads) | set(self.k_heads))

    @property
    def deepest_layer(self) -> int | None:
        layers = self.layers
        return layers[-1] if layers else None

    def heads(self, layer: int, kind: str) -> tuple[int, ...]:
        return (self.q_heads if kind == "q" else self.k_heads).get(layer, ())

    def count(self, kind: str) -> int:
        return sum(len(h) for h in (self.q_heads if kind == "q" else self.k_heads).values())


def check_ranges(capture: CaptureConfig, layout: ModelLayout) -> list[str]:
    """Problems with layer/head numbers against this model, as messages naming the key and the valid range."""
    problems = []
    cross, skipped = set(layout.cross_attention_layers), set(layout.linear_attention_layers)
    attention = format_ranges(layout.self_attention_layers)
    for layer in capture.layers or []:
        if not 0 <= layer < layout.num_layers:
            problems.append(
                f"capture.layers: layer {layer} is out of range; valid layers are 0..{layout.num_layers - 1}"
            )
        elif layer in cross:
            problems.append(
                f"capture.layers: layer {layer} is a cross-attention layer (it attends to image features, "
                f"not the text); self-attention layers are {attention}"
            )
        elif layer in skipped:
            problems.append(
                f"capture.layers: layer {layer} has no softmax attention (a state-space, linear-attention or "
                f"convolution layer: no query or key); self-attention layers are {attention}"
            )
    most = max((layout.q_heads_of(layer) for layer in layout.self_attention_layers), default=0)
    for head in capture.heads or []:
        if not 0 <= head < most:
            problems.append(
                f"capture.heads: head {head} is out of range; valid query heads are 0..{most - 1}"
                + ("" if not layout.q_heads_per_layer else " (in the layers that have that many)")
            )
    return problems


def candidate_heads(capture: CaptureConfig, layout: ModelLayout) -> list[tuple[int, int]]:
    """The (layer, query head) pairs head sampling draws from, in the original tool's layer-major order.

    As in the original, the candidates span every decoder layer, Mllama's cross-attention layers included
    (the original drew there too, and its picks there captured nothing): the same count and seed must give
    the original's heads. :func:`select_heads` drops the picks in layers without self-attention afterwards.
    Each layer offers its own heads (families whose layers run different head counts).
    """
    layers = sorted(set(capture.layers)) if capture.layers is not None else list(range(layout.num_layers))
    if capture.full_attention_only:
        layers = [layer for layer in layers if not layout.is_sliding(layer)]
    wanted = set(capture.heads) if capture.heads is not None else None
    return [
        (layer, head)
        for layer in layers
        for head in range(layout.q_heads_of(layer) or layout.num_q_heads)
        if wanted is None or head in wanted
    ]


def sample_heads(candidates: list[tuple[int, int]], count: int, seed: int) -> list[tuple[int, int]]:
    """``count`` of ``candidates``, drawn exactly as the original tool drew them (Python's ``random``), so
    a preset's count and seed select the original run's heads."""
    if count == len(candidates):
        return list(candidates)
    return random.Random(seed).sample(candidates, count)


def select_heads(capture: CaptureConfig, layout: ModelLayout) -> HeadSelection:
    problems = check_ranges(capture, layout)
    if problems:
        raise UserError("\n".join(problems))
    candidates = candidate_heads(capture, layout)

    count = capture.head_sampling.count
    if count is not None:  # >= 1: checked with the rest of the config (validate.capture_problems)
        if count > len(candidates):
            raise UserError(
                f"capture.head_sampling.count={count} exceeds the {len(candidates)} query heads allowed by "
                "capture.layers/capture.heads/capture.full_attention_only"
            )
        candidates = sample_heads(candidates, count, capture.head_sampling.seed)
    # Cross-attention layers (Mllama) never see text queries against text keys, and non-softmax layers of
    # hybrids have none: neither is captured.
    attention = set(layout.self_attention_layers)
    candidates = [(layer, head) for layer, head in candidates if layer in attention]

    q_heads: dict[int, set[int]] = {}
    for layer, head in candidates:
        q_heads.setdefault(layer, set()).add(head)
    # Keys: those the captured query heads read (GQA maps query head h to kv head h // group).
    k_heads = {layer: {layout.kv_head_of(h, layer) for h in hs} for layer, hs in q_heads.items()}

    def frozen(d: dict[int, set[int]], enabled: bool) -> dict[int, tuple[int, ...]]:
        return {layer: tuple(sorted(hs)) for layer, hs in sorted(d.items())} if enabled else {}

    selection = HeadSelection(
        frozen(q_heads, setting(capture, "queries")), frozen(k_heads, setting(capture, "keys"))
    )
    if not selection.layers:
        raise UserError(
            "nothing to capture: capture.queries and capture.keys are both false, or the layer/head filters "
            "(with capture.full_attention_only) leave no layer"
        )
    return selection
