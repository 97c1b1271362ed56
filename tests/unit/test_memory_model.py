"""The memory model: what it counts, and the chunks a budget picks from it (no model is built)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from qk_sniffer.capture.chunking import ChunkSizes
from qk_sniffer.capture.memory import (
    GB,
    ModelShape,
    estimate,
    feed_forward_width,
    longest_fitting,
    plan_memory,
)

# Qwen3-8B's widths, bf16, 16.38 GB of weights.
QWEN3_8B = ModelShape(
    hidden=4096,
    intermediate=12288,
    q_heads=32,
    kv_heads=8,
    head_dim=128,
    windows=(None,) * 36,
    dtype_bytes=2,
    backend="sdpa",
    weight_bytes=16_381_470_720,
)


def peak(shape: ModelShape, length: int, sizes: ChunkSizes) -> int:
    return estimate(shape, 1, length, sizes).peak


def test_one_pass_when_it_fits_else_the_largest_chunk_that_does():
    roomy = plan_memory(QWEN3_8B, 1, 131072, 80 * GB)
    assert roomy.sizes == ChunkSizes() and roomy.fits and roomy.chosen == roomy.one_pass
    tight = plan_memory(QWEN3_8B, 1, 131072, 25 * GB)
    assert (
        tight.fits and tight.sizes.tokens is not None and tight.chosen.peak <= 25 * GB < tight.one_pass.peak
    )
    larger = 2 * tight.sizes.tokens
    assert peak(QWEN3_8B, 131072, ChunkSizes(larger, min(larger, 16384))) > 25 * GB


def test_a_token_chunk_given_by_hand_is_kept():
    plan = plan_memory(QWEN3_8B, 1, 131072, 80 * GB, token_chunk=2048)
    assert plan.sizes.tokens == 2048 and plan.fits


def test_chunking_removes_the_mlps_activations_at_long_length():
    """At 131k tokens the MLP's three (tokens x 12288) bf16 tensors are ~9.7 GB and make the one-pass peak;
    in 4096-token slices they are ~0.3 GB and the attention call's inputs and output make it."""
    one_pass = estimate(QWEN3_8B, 1, 131072, ChunkSizes()).activations
    chunked = estimate(QWEN3_8B, 1, 131072, ChunkSizes(4096, 4096)).activations
    assert 12 * GB < one_pass < 14 * GB and chunked < one_pass / 2


def test_a_sliding_layer_under_sdpa_is_quadratic_in_one_pass_and_linear_in_query_chunks():
    sliding = ModelShape(**{**QWEN3_8B.__dict__, "windows": (4096, None)})
    one_pass = [estimate(sliding, 1, n, ChunkSizes()).activations for n in (65536, 131072)]
    chunked = [estimate(sliding, 1, n, ChunkSizes(4096, 1024)).activations for n in (65536, 131072)]
    assert one_pass[1] > 3.5 * one_pass[0]  # the (length x length) mask
    assert chunked[1] < 2.2 * chunked[0]
    # The boolean mask alone at 131k tokens is 16 GiB, and sdpa makes a bf16 bias of it.
    assert one_pass[1] > 131072**2 * 3


def test_eager_scores_are_counted_per_query_chunk():
    eager = ModelShape(**{**QWEN3_8B.__dict__, "backend": "eager"})
    whole = estimate(eager, 1, 32768, ChunkSizes()).activations
    rows = estimate(eager, 1, 32768, ChunkSizes(4096, 256)).activations
    assert whole > 32 * 32768**2 * 4 > 10 * rows


def test_an_moe_counts_its_routed_experts_and_shared_expert():
    moe = SimpleNamespace(
        hidden_size=2048,
        intermediate_size=6144,
        num_experts=128,
        num_experts_per_tok=8,
        moe_intermediate_size=768,
        shared_expert_intermediate_size=512,
    )
    assert feed_forward_width(moe) == 8 * 768 + 512
    dense = SimpleNamespace(hidden_size=64, intermediate_size=256)
    assert feed_forward_width(dense) == 256


@pytest.mark.parametrize("limit", [1, 7, 1000, 131072])
def test_longest_fitting_finds_the_boundary(limit):
    assert longest_fitting(lambda n: n <= limit) == limit
    assert longest_fitting(lambda n: False) == 0


def test_the_8b_at_1m_tokens_fits_80_gb_only_chunked():
    plan = plan_memory(QWEN3_8B, 1, 1048576, 80 * GB)
    assert plan.fits and plan.sizes.tokens is not None and plan.one_pass.peak > 80 * GB
    assert not plan_memory(QWEN3_8B, 1, 1048576, 24 * GB).fits
