"""Layer/head selection, head sampling and the GQA key-head mapping."""

from __future__ import annotations

import pytest

from qk_sniffer.capture.heads import select_heads
from qk_sniffer.capture.layout import ModelLayout
from qk_sniffer.core.config import CaptureConfig, HeadSamplingConfig
from qk_sniffer.core.errors import UserError

# 4 layers, 8 query heads, 2 KV heads (group of 4); layers 1 and 3 slide.
LAYOUT = ModelLayout("toy", 4, 8, 2, 16, (None, 64, None, 64))


def test_defaults_capture_every_head_of_every_layer():
    sel = select_heads(CaptureConfig(), LAYOUT)
    assert sel.layers == [0, 1, 2, 3]
    assert sel.q_heads[2] == tuple(range(8))
    assert sel.k_heads[2] == (0, 1)


def test_head_filter_keeps_the_kv_heads_those_queries_read():
    sel = select_heads(CaptureConfig(layers=[2], heads=[1, 5]), LAYOUT)
    assert sel.q_heads == {2: (1, 5)}
    assert sel.k_heads == {2: (0, 1)}  # 1 // 4 = 0, 5 // 4 = 1
    sel = select_heads(CaptureConfig(layers=[0], heads=[2, 3]), LAYOUT)
    assert sel.k_heads == {0: (0,)}


def test_full_attention_only_drops_sliding_layers():
    sel = select_heads(CaptureConfig(full_attention_only=True), LAYOUT)
    assert sel.layers == [0, 2]


def test_head_sampling_is_seeded_and_spans_layers():
    cfg = CaptureConfig(head_sampling=HeadSamplingConfig(count=5, seed=3))
    a, b = select_heads(cfg, LAYOUT), select_heads(cfg, LAYOUT)
    assert a == b
    assert a.count("q") == 5
    for layer, heads in a.q_heads.items():
        assert a.k_heads[layer] == tuple(sorted({h // 4 for h in heads}))
    other = select_heads(CaptureConfig(head_sampling=HeadSamplingConfig(count=5, seed=4)), LAYOUT)
    assert other.q_heads != a.q_heads


def test_head_sampling_respects_filters():
    cfg = CaptureConfig(
        layers=[1, 2, 3],
        heads=[0, 7],
        full_attention_only=True,
        head_sampling=HeadSamplingConfig(count=2, seed=0),
    )
    sel = select_heads(cfg, LAYOUT)
    assert sel.q_heads == {2: (0, 7)}


def test_queries_or_keys_toggle():
    assert select_heads(CaptureConfig(keys=False), LAYOUT).k_heads == {}
    assert select_heads(CaptureConfig(queries=False), LAYOUT).q_heads == {}


@pytest.mark.parametrize(
    "cfg, message",
    [
        (CaptureConfig(layers=[4]), r"capture.layers: layer 4 is out of range; valid layers are 0..3"),
        (CaptureConfig(heads=[-1]), r"capture.heads: head -1 is out of range; valid query heads are 0..7"),
        (CaptureConfig(head_sampling=HeadSamplingConfig(count=33)), r"count=33 exceeds the 32 query heads"),
    ],
)
def test_out_of_range_is_a_clear_error(cfg, message):
    with pytest.raises(UserError, match=message):
        select_heads(cfg, LAYOUT)


def test_cross_attention_layers_are_never_selected():
    layout = ModelLayout("mllama", 5, 8, 2, 16, (None,) * 5, cross_attention_layers=(1, 3))
    assert select_heads(CaptureConfig(), layout).layers == [0, 2, 4]
    with pytest.raises(UserError, match=r"capture.layers: layer 3 is a cross-attention layer .* are 0, 2, 4"):
        select_heads(CaptureConfig(layers=[3]), layout)
    sampled = select_heads(CaptureConfig(head_sampling=HeadSamplingConfig(count=24, seed=0)), layout)
    assert sampled.layers == [0, 2, 4]
