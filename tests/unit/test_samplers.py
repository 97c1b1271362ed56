"""Sampler formulas, probabilities and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from qk_sniffer.capture.samplers import (
    AllSampler,
    LogBucketSampler,
    UniformSampler,
    build_sampler,
    mask_seed,
    sample_positions,
)
from qk_sniffer.core.errors import UserError


def test_log_bucket_buckets_are_floor_log2_of_position_plus_one():
    s = LogBucketSampler()
    positions = np.array([0, 1, 2, 3, 6, 7, 8, 1022, 1023, 131071])
    assert s.buckets(positions).tolist() == [0, 1, 1, 2, 2, 3, 3, 9, 10, 17]


def test_log_bucket_min_bucket_size_raises_small_buckets_rounded_up_to_power_of_two():
    s = LogBucketSampler(min_bucket_size=100)  # rounds up to 128 -> bucket 7
    assert s.min_bucket == 7
    assert s.buckets(np.array([0, 5, 126, 254, 255])).tolist() == [7, 7, 7, 7, 8]


def test_log_bucket_keep_probability_is_base_rate_over_bucket_width():
    s = LogBucketSampler(base_rate=4.0)
    np.testing.assert_allclose(s.keep_probability(np.array([0, 1, 2, 3, 10])), [1, 1, 1, 0.5, 4 / 1024])


def test_uniform_buckets_and_probability():
    s = UniformSampler(base_rate=2.0, bucket_size=8)
    assert s.buckets(np.array([0, 7, 8, 17])).tolist() == [0, 0, 1, 2]
    np.testing.assert_allclose(s.keep_probability(np.array([0, 5])), [0.25, 0.25])
    assert UniformSampler(base_rate=50, bucket_size=8).keep_probability(np.array([1]))[0] == 1.0


def test_all_keeps_every_position():
    pos, bkt = sample_positions(AllSampler(bucket_size=4), 3, 0, "q", 10)
    assert pos.tolist() == list(range(10))
    assert bkt.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert bkt.dtype == np.int32


def test_masks_depend_only_on_example_layer_kind():
    s = UniformSampler(base_rate=1.0, bucket_size=4)
    a = sample_positions(s, 42, 3, "q", 400)[0]
    assert np.array_equal(a, sample_positions(s, 42, 3, "q", 400)[0])
    assert not np.array_equal(a, sample_positions(s, 43, 3, "q", 400)[0])
    assert not np.array_equal(a, sample_positions(s, 42, 4, "q", 400)[0])
    assert not np.array_equal(a, sample_positions(s, 42, 3, "k", 400)[0])


def test_truncated_text_keeps_a_prefix_of_the_rows():
    s = LogBucketSampler(base_rate=2.0)
    long = sample_positions(s, 7, 1, "k", 5000)[0]
    short = sample_positions(s, 7, 1, "k", 1000)[0]
    assert np.array_equal(short, long[long < 1000])


def test_seed_is_stable_across_processes():
    # A fixed value: blake2b of "example:layer:kind" must never change between releases or machines.
    assert mask_seed(0, 0, "q") == mask_seed(0, 0, "q")
    assert mask_seed(-5, 2, "k") != mask_seed(5, 2, "k")
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from qk_sniffer.capture.samplers import mask_seed;print(mask_seed(12, 3, 'k'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert int(out) == mask_seed(12, 3, "k")


def test_expected_rows_per_bucket_follow_base_rate():
    s = UniformSampler(base_rate=16.0, bucket_size=1024)
    counts = [len(sample_positions(s, ex, 0, "q", 1024)[0]) for ex in range(200)]
    assert 14.0 < np.mean(counts) < 18.0


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"name": "uniform", "base_rate": 0.0, "bucket_size": 8}, "sampler.base_rate must be > 0"),
        ({"name": "log_bucket", "base_rate": -1.0, "min_bucket_size": 1}, "sampler.base_rate must be > 0"),
        ({"name": "uniform", "base_rate": 1.0, "bucket_size": 0}, "sampler.bucket_size must be >= 1"),
        ({"name": "nope"}, "unknown sampler 'nope'; known: all, log_bucket, uniform"),
    ],
)
def test_bad_sampler_settings_name_the_key(cfg, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        build_sampler(cfg)


@pytest.mark.parametrize(
    "sampler",
    [
        LogBucketSampler(base_rate=4.0),
        UniformSampler(base_rate=8.0, bucket_size=32),
        AllSampler(bucket_size=16),
    ],
    ids=["log_bucket", "uniform", "all"],
)
def test_keep_probability_is_the_kept_fraction_of_each_bucket(sampler):
    """What qk_sniffer.load reports as keep_prob is what the masks actually do: over 400 examples of 256
    tokens, each bucket's kept fraction is within 4 binomial standard deviations of keep_probability."""
    length, examples = 256, 400
    buckets = sampler.buckets(np.arange(length))
    kept = np.zeros(buckets.max() + 1)
    for example_id in range(examples):
        kept += np.bincount(sample_positions(sampler, example_id, 0, "q", length)[1], minlength=len(kept))
    positions = np.bincount(buckets) * examples
    p = sampler.keep_probability(np.arange(len(kept)))
    sd = np.sqrt(p * (1 - p) / positions)
    assert np.all(np.abs(kept / positions - p) <= 4 * sd + 1e-12)
    assert kept.sum() < positions.sum() or isinstance(sampler, AllSampler)
