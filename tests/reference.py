"""The model's own eager computation of Q/K, recorded without our attention tap, for exactness tests.

Post-RoPE: the ``query``/``key`` the model hands to its own ``eager_attention_forward`` (recorded by swapping
that function in the modeling module for a recorder that then calls it). Pre-RoPE: the arguments the model
passes to its own ``apply_rotary_pos_emb``; a layer that never calls it (no rotation) has pre == post.
Each example runs alone, unpadded, so batching and padding effects in the capture path cannot hide.
It shares the capture path's technique (a wrapped rotary function) and module lookup, so it is not an
independent witness for pre-RoPE: tests/hand_reference.py recomputes Q/K by hand for Llama and Qwen3.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from qk_sniffer.capture.models import backbone_of
from qk_sniffer.capture.tap import attention_modules


@dataclass
class LayerQK:
    q_post: torch.Tensor  # (Hq, S, D)
    k_post: torch.Tensor  # (Hkv, S, D)
    q_pre: torch.Tensor
    k_pre: torch.Tensor


@dataclass
class Reference:
    layers: dict[int, LayerQK] = field(default_factory=dict)


@torch.no_grad()
def eager_reference(model: torch.nn.Module, input_ids: list[int]) -> Reference:
    backbone = backbone_of(model)
    modules = attention_modules(backbone)
    modeling = {sys.modules[type(m).__module__] for m in modules}
    saved_impl = {id(m.config): (m.config, m.config._attn_implementation) for m in modules}
    saved_impl[id(backbone.config)] = (backbone.config, backbone.config._attn_implementation)
    saved = {
        mod: (mod.eager_attention_forward, getattr(mod, "apply_rotary_pos_emb", None)) for mod in modeling
    }
    ref = Reference()
    pending: dict[str, torch.Tensor] = {}

    def make_eager(original):
        def recorder(module, query, key, *args, **kwargs):
            layer = int(module.layer_idx)
            q_pre = pending.pop("q", query)
            k_pre = pending.pop("k", key)
            ref.layers[layer] = LayerQK(
                query[0].float().clone(),
                key[0].float().clone(),
                q_pre[0].float().clone(),
                k_pre[0].float().clone(),
            )
            return original(module, query, key, *args, **kwargs)

        return recorder

    def make_rotary(original):
        def recorder(q, k, *args, **kwargs):
            pending["q"], pending["k"] = q, k
            return original(q, k, *args, **kwargs)

        return recorder

    try:
        for cfg, _ in saved_impl.values():
            cfg._attn_implementation_internal = "eager"
        for mod, (eager, rotary) in saved.items():
            mod.eager_attention_forward = make_eager(eager)
            if rotary is not None:
                mod.apply_rotary_pos_emb = make_rotary(rotary)
        device = next(model.parameters()).device
        backbone(input_ids=torch.tensor([input_ids], device=device), use_cache=False)
    finally:
        for mod, (eager, rotary) in saved.items():
            mod.eager_attention_forward = eager
            if rotary is not None:
                mod.apply_rotary_pos_emb = rotary
        for cfg, impl in saved_impl.values():
            cfg._attn_implementation_internal = impl
    return ref


TOLERANCE = 1e-4  # float32, absolute, per vector component


def check_table(
    table,
    refs: dict[int, Reference],
    lengths: dict[int, int],
    layer: int,
    head: int,
    kind: str,
    pre_rope: bool,
    label: str = "",
) -> float:
    """Assert every row of one (layer, head, kind) table equals the eager reference; return the worst error.

    ``refs``/``lengths`` are keyed by example id. A row at a position outside its example (padding) fails.
    """
    vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
    ids = table.column("example_id").to_pylist()
    positions = table.column("position").to_pylist()
    worst = 0.0
    for row, (ex, pos) in enumerate(zip(ids, positions, strict=True)):
        assert 0 <= pos < lengths[ex], f"{label} padding or out-of-range position captured: ex{ex} pos{pos}"
        ref = refs[ex].layers[layer]
        if kind == "q":
            source = ref.q_pre if pre_rope else ref.q_post
        else:
            source = ref.k_pre if pre_rope else ref.k_post
        err = float(np.abs(vectors[row] - source[head, pos].numpy()).max())
        worst = max(worst, err)
        assert err <= TOLERANCE, f"{label} {kind} l{layer} h{head} ex{ex} pos{pos}: max abs error {err}"
    return worst
