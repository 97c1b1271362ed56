"""Remembered weightless shapes: the per-layer attention shapes of a model config, measured once.

Measuring them (:func:`qk_sniffer.capture.shapes.weightless_shapes`) builds the model on the meta device
and runs a fake-tensor forward: 0.2 s for a tiny model, seconds for a large one, and the same answer each
time for the same config and code. So the answer is kept in ``$QK_SNIFFER_CACHE/shapes/`` (see
:mod:`.user_cache`), keyed on the model's whole config (as JSON) and the code (:func:`.user_cache.entry_key`).

It is safe to trust: a run measures the loaded model again (:func:`qk_sniffer.capture.shapes.check_loaded`)
and refuses to capture when its heads differ from the plan's, so a remembered answer can never make a run
write other heads than the model computes. Nothing is remembered for a model with remote code (its code is
not in the key) or when the measurement could not run (it is tried, and logged, each time).
"""

from __future__ import annotations

from transformers import PretrainedConfig

from ..capture.shapes import LayerShape, Shapes, weightless_shapes
from .user_cache import entry_key, read_entry, write_entry

KIND = "shapes"


def remembered_shapes(config: PretrainedConfig, trust_remote_code: bool = False) -> Shapes | None:
    """:func:`weightless_shapes` of ``config``, answered from the cache when it was measured before."""
    key = None if trust_remote_code else _key(config)
    if key is not None:
        shapes = _parsed(read_entry(KIND, key))
        if shapes is not None:
            return shapes
    shapes = weightless_shapes(config, trust_remote_code)
    if key is not None and shapes is not None:
        entry = {str(layer): [s.q_heads, s.kv_heads, s.head_dim] for layer, s in shapes.items()}
        write_entry(KIND, key, entry)
    return shapes


def _key(config: PretrainedConfig) -> str | None:
    try:
        text = config.to_json_string(use_diff=False)
    except (TypeError, ValueError):  # a config holding something JSON cannot say is not remembered
        return None
    return entry_key(f"{type(config).__module__}.{type(config).__qualname__}", text)


def _parsed(entry: object) -> Shapes | None:
    """The shapes an entry holds; None for one that is not exactly what :func:`remembered_shapes` writes
    (layer -> a list of three whole numbers)."""
    if not isinstance(entry, dict):
        return None
    shapes = {}
    for layer, values in entry.items():
        whole = isinstance(values, list) and all(type(v) is int for v in values)
        if not whole or len(values) != 3 or not str(layer).isdigit():
            return None
        shapes[int(layer)] = LayerShape(*values)
    return shapes


__all__ = ["remembered_shapes"]
