"""Example ids, empty texts, sharding and right padding."""

from __future__ import annotations

import numpy as np

from qk_sniffer.config import DatasetConfig
from qk_sniffer.data import DataStats, batches, stable_id, tokenized_examples


def encode(text: str) -> list[int]:
    return [ord(c) % 50 for c in text]


def test_integer_ids_are_kept_and_others_hashed_stably():
    assert stable_id(17) == 17
    assert stable_id(np.int64(-3)) == -3
    h = stable_id("doc-a")
    assert h == stable_id("doc-a") and h != stable_id("doc-b")
    assert -(2**63) <= h < 2**63


def test_empty_and_null_texts_are_skipped_and_counted():
    rows = [{"text": "abc"}, {"text": ""}, {"text": None}, {"text": "   "}, {"text": "de"}]
    stats = DataStats()
    out = list(tokenized_examples(rows, DatasetConfig(), encode, None, stats))
    assert [(e.index, e.example_id) for e in out] == [(0, 0), (4, 4)]
    assert stats.skipped_empty == 3


def test_id_column_and_truncation():
    rows = [{"text": "abcdef", "id": "x"}, {"text": "gh", "id": 9}]
    stats = DataStats()
    out = list(tokenized_examples(rows, DatasetConfig(id_column="id"), encode, 4, stats))
    assert [e.example_id for e in out] == [stable_id("x"), 9]
    assert [e.length for e in out] == [4, 2]
    assert stats.truncated == 1


def test_shards_partition_the_examples_after_max_samples():
    rows = [{"text": f"t{i}"} for i in range(10)]
    seen = []
    for shard in range(3):
        cfg = DatasetConfig(num_shards=3, shard_index=shard, max_samples=8)
        seen += [e.index for e in tokenized_examples(rows, cfg, encode, None, DataStats())]
    assert sorted(seen) == list(range(8))


def test_batches_are_right_padded():
    rows = [{"text": "abcd"}, {"text": "a"}, {"text": "abc"}]
    stats = DataStats()
    out = list(batches(tokenized_examples(rows, DatasetConfig(), encode, None, stats), 2, 99, stats))
    assert [b.input_ids.shape[0] for b in out] == [2, 1]
    assert out[0].input_ids[1].tolist() == [encode("a")[0], 99, 99, 99]
    assert stats.tokens == 8 and stats.examples == 3
