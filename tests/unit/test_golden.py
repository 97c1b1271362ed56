"""Golden values for the two seeded schemes that decide what a recipe captures: which heads (head sampling)
and which positions (the position samplers' masks). A change to either scheme changes the data produced
under an unchanged recipe, so it must fail here rather than pass silently."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from qk_sniffer.capture.heads import select_heads
from qk_sniffer.capture.models import build_config, layout_from_config
from qk_sniffer.capture.samplers import LogBucketSampler, UniformSampler, mask_seed, sample_positions
from qk_sniffer.core.config import CaptureConfig, HeadSamplingConfig, ModelConfig

REPO = Path(__file__).resolve().parents[2]
GOLDEN_HEADS = json.loads((REPO / "tests" / "data" / "golden_heads_qwen3_8b.json").read_text())


def qwen3_8b_layout():
    model = OmegaConf.load(REPO / "conf" / "model" / "qwen3-8b.yaml")
    shape = ModelConfig(architecture=OmegaConf.to_container(model.architecture), random_init=True)
    return layout_from_config(build_config(shape))


def test_heads_sampled_on_qwen3_8b_are_the_golden_ones():
    layout = qwen3_8b_layout()
    assert (layout.num_layers, layout.num_q_heads, layout.num_kv_heads) == (36, 32, 8)
    sel = select_heads(CaptureConfig(head_sampling=HeadSamplingConfig(count=300, seed=0)), layout)
    assert sorted([layer, h] for layer, hs in sel.q_heads.items() for h in hs) == GOLDEN_HEADS["query_heads"]
    assert sorted([layer, h] for layer, hs in sel.k_heads.items() for h in hs) == GOLDEN_HEADS["key_heads"]
    assert len(GOLDEN_HEADS["query_heads"]) == 300


def test_mask_seeds_are_the_golden_ones():
    assert mask_seed(7, 3, "q") == 15993093929135882854
    assert mask_seed(0, 0, "k") == 645126943453202946


def test_uniform_sampler_positions_are_the_golden_ones():
    positions, buckets = sample_positions(UniformSampler(base_rate=1.0, bucket_size=256), 7, 3, "q", 4096)
    golden = [119, 1209, 1336, 1779, 1931, 2420, 2691, 2700, 2856, 3325, 3368, 3425, 3588, 3615, 3922]
    assert positions.tolist() == golden
    assert buckets.tolist() == [p // 256 for p in golden]


def test_log_bucket_sampler_positions_are_the_golden_ones():
    positions, buckets = sample_positions(LogBucketSampler(base_rate=4.0, min_bucket_size=16), 7, 3, "k", 300)
    assert positions.tolist() == [
        2,
        6,
        10,
        19,
        22,
        25,
        28,
        33,
        34,
        40,
        42,
        43,
        53,
        61,
        63,
        78,
        99,
        122,
        163,
        243,
    ]
    assert buckets.tolist() == [4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7]
    assert np.all(buckets >= 4)  # min_bucket_size=16 puts the first 16 positions in bucket 4
