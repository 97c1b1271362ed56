"""Example ids, empty texts, sharding and right padding."""

from __future__ import annotations

import numpy as np
import pytest

from qk_sniffer.core.config import DatasetConfig
from qk_sniffer.core.errors import UserError
from qk_sniffer.inputs.data import DataStats, ExampleIds, batches, stable_id, tokenized_examples


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


def test_ids_must_be_present_usable_and_unique():
    ids = ExampleIds("id")
    assert [ids.take(0, 5), ids.take(1, "doc"), ids.take(2, np.int64(6))] == [5, stable_id("doc"), 6]
    with pytest.raises(UserError, match=r"id 'doc' appears more than once \(rows 1 and 3\)"):
        ids.take(3, "doc")
    with pytest.raises(UserError, match="row 4 has a null id"):
        ids.take(4, None)
    for bad in (True, 2.0, [1], {"a": 1}):
        with pytest.raises(UserError, match=f"row 5 has an id of type {type(bad).__name__}"):
            ids.take(5, bad)
    assert ExampleIds(None).take(9, None) == 9  # no id column: the row index
    for big in (2**63, -(2**63) - 1, np.uint64(2**63)):  # example_id is an int64 column
        with pytest.raises(UserError, match=f"row 6 has the id {big}, beyond the 64-bit integers"):
            ids.take(6, big)
    assert ids.take(7, 2**63 - 1) == 2**63 - 1


def test_a_repeat_in_a_stream_says_what_stays_valid():
    ids = ExampleIds("id", streaming=True)
    ids.take(0, 1)
    with pytest.raises(UserError, match="already committed stay valid"):
        ids.take(1, 1)


def test_every_shard_checks_every_row_id():
    """A repeat that falls in another shard is still refused: shards write into one dataset."""
    rows = [{"text": "ab", "id": 1}, {"text": "cd", "id": 2}, {"text": "ef", "id": 1}]
    cfg = DatasetConfig(id_column="id", num_shards=2, shard_index=1)
    with pytest.raises(UserError, match="id 1 appears more than once"):
        list(tokenized_examples(rows, cfg, encode, None, DataStats()))


def test_non_string_texts_are_refused_never_converted():
    for value in ([1, 2], 3, 4.5, {"a": "b"}):
        rows = [{"text": "fine"}, {"text": value}]
        with pytest.raises(UserError, match=f"row 1 holds a value of type {type(value).__name__}"):
            list(tokenized_examples(rows, DatasetConfig(), encode, None, DataStats()))


def test_texts_past_the_model_are_cut_and_counted_apart():
    rows = [{"text": "a" * 30}, {"text": "b" * 12}, {"text": "c" * 5}]
    stats = DataStats()
    out = list(tokenized_examples(rows, DatasetConfig(), encode, 20, stats, position_limit=10))
    assert [e.length for e in out] == [10, 10, 5]
    assert out[0].input_ids == encode("a" * 10)
    assert stats.truncated == 1  # max_length cut row 0 to 20 ...
    assert stats.truncated_to_model_limit == 2  # ... and the model's 10 positions cut rows 0 and 1
