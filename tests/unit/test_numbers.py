"""The figures' numbers on hand-made rows, against sums formed one pair or one row at a time: the prefix
sums, the logit-by-distance sums for dense and sparse positions (queries in any order), and the row index
built from part-file footers, also where a row group holds several examples or an example spans files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qk_sniffer.analysis import numbers
from qk_sniffer.analysis.loading import CommittedPart
from qk_sniffer.analysis.numbers import ConfigNorms, KeyPrefix, RowIndex, Sums, distance_bins, prefix_sums


@pytest.mark.parametrize("count", [0, 1, 63, 64, 65, 200])
def test_prefix_sums_are_the_running_sums_of_the_rows(count):
    vectors = np.random.default_rng(count).standard_normal((count, 8)).astype(np.float32) + 3.0
    expected = np.vstack([np.zeros((1, 8)), np.cumsum(vectors.astype(np.float64), axis=0)])
    np.testing.assert_allclose(prefix_sums(vectors), expected, rtol=1e-12, atol=1e-9)


def _pairwise(q_at, queries, k_at, keys, scale):
    """Mean logit per distance bin and pair count, from every causal pair formed one by one."""
    totals: dict[int, float] = {}
    counts: dict[int, int] = {}
    for i, q in zip(q_at, queries, strict=True):
        for j, k in zip(k_at, keys, strict=True):
            if j <= i:
                b = int(distance_bins(np.array([i - j]))[0])
                totals[b] = totals.get(b, 0.0) + float(q.astype(np.float64) @ k.astype(np.float64)) * scale
                counts[b] = counts.get(b, 0) + 1
    size = max(counts) + 1
    return (
        np.array([totals.get(b, np.nan) / counts.get(b, 1) if b in counts else np.nan for b in range(size)]),
        [counts.get(b, 0) for b in range(size)],
    )


@pytest.mark.parametrize(
    "keys_at, queries_at",
    [
        (np.arange(150), np.arange(150)),  # sampler=all: slices, arithmetic cuts
        (np.arange(20, 150), np.arange(150)[::-1]),  # keys from 20 on, queries in reverse order
        (np.array([0, 1, 2, 5, 9, 17, 40, 41, 100]), np.array([3, 0, 41, 100, 7, 99, 2])),  # sparse
        (np.arange(150), np.array([0, 2, 3, 4, 90])),  # dense keys, sparse queries
    ],
)
def test_logit_sums_by_distance_equal_the_pairs_one_by_one(keys_at, queries_at):
    rng = np.random.default_rng(len(keys_at) + len(queries_at))
    # Keys with a large shared mean, as real keys have: differences of big prefix rows must stay exact.
    keys = (rng.standard_normal((len(keys_at), 16)) + 40.0).astype(np.float32)
    heads = [rng.standard_normal((len(queries_at), 16)).astype(np.float32) for _ in range(2)]
    prefix = KeyPrefix((keys_at.astype(np.int32), keys))
    sums = [Sums(), Sums()]
    prefix.add_pairs(sums, [(queries_at.astype(np.int32), h) for h in heads], scale=0.25)
    for head, got in zip(heads, sums, strict=True):
        expected, counts = _pairwise(queries_at, head, keys_at, keys, 0.25)
        assert got.count[: len(counts)].tolist() == counts
        assert not got.count[len(counts) :].any()
        np.testing.assert_allclose(got.mean()[: len(expected)], expected, rtol=1e-9, atol=1e-9)


def _part(path: Path, ids: list[int], groups: int) -> CommittedPart:
    count = len(ids)
    rng = np.random.default_rng(count)
    vectors = rng.standard_normal((count, 4)).astype(np.float32)
    table = pa.table(
        {
            "bucket": pa.array(np.arange(count, dtype=np.int32)),
            "example_id": pa.array(np.array(ids, dtype=np.int64)),
            "position": pa.array(np.arange(count, dtype=np.int32)),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 4),
        }
    )
    pq.write_table(table, path, row_group_size=-(-count // groups))
    return CommittedPart(path, count, "r")


def test_row_index_reads_each_examples_rows_whatever_the_row_groups_hold(tmp_path):
    # Part a: row group 0 holds example 7 alone (its footer says so), row group 1 holds 7 and 9.
    # Part b: example 9 again (it spans both files), then 11. Example 7's rows are apart in part a's second
    # row group too (7, 9, 7), so they are brought together in file order.
    a = _part(tmp_path / "a.parquet", [7, 7, 7, 7, 7, 9, 7], groups=2)
    b = _part(tmp_path / "b.parquet", [9, 9, 11, 11], groups=1)
    index = RowIndex([a, b], ConfigNorms("l00h00q"))
    assert index.counts == {7: 6, 9: 3, 11: 2}
    assert index.locations == {7: [(0, 0), (0, 1)], 9: [(0, 1), (1, 0)], 11: [(1, 0)]}
    loaded = {p: pq.read_table(p.path) for p in (a, b)}
    rows = index.rows([9, 7])
    assert sorted(rows) == [7, 9]
    for example, (positions, vectors) in rows.items():
        wanted = [
            (int(pos), vec)
            for t in loaded.values()
            for e, pos, vec in zip(
                t["example_id"].to_pylist(), t["position"].to_pylist(), t["vector"].to_pylist(), strict=True
            )
            if e == example
        ]
        assert positions.tolist() == [pos for pos, _ in wanted]
        np.testing.assert_array_equal(vectors, np.array([vec for _, vec in wanted], dtype=np.float32))
    # The norms were fed exactly the rows read: 7's six and 9's three (rows of 11 were filtered out).
    assert int(index.norms.rows.count.sum()) == 9


def test_a_footer_without_statistics_falls_back_to_reading_the_ids(tmp_path, monkeypatch):
    part = _part(tmp_path / "a.parquet", [3, 3, 3], groups=1)
    monkeypatch.setattr(numbers, "_single_value", lambda statistics: None)
    index = RowIndex([part], ConfigNorms("l00h00q"))
    assert index.counts == {3: 3}
