"""The report's numbers, computed from the committed part files with bounded memory.

:func:`aggregates` reads every committed row once. Norms and counts are running sums over batches of rows
(one batch in memory at a time), fed by the reads of the logit statistic; a config it pairs with no other
is streamed alone. The logit-by-distance statistic pairs the query rows and key rows of the same example:
a first pass reads only the ``example_id`` column to learn where each example's rows are, then examples
are processed in groups whose rows fit :data:`PAIR_BUDGET_BYTES` (one example larger than that is
processed alone), reading only the row groups that hold them. Within an example the pairs are summed per
distance bin from prefix sums of its keys (:class:`KeyPrefix`), never formed one by one.
Plotting lives in :mod:`qk_sniffer.analysis.plots`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from ..core.arrow import numpy_values
from ..core.naming import CONFIG_NAME
from .loading import CommittedPart, vectors_of

BATCH_ROWS = 65_536
PAIR_BUDGET_BYTES = 256 * 2**20
# Worker threads for the aggregates (Parquet decoding and numpy's kernels release the GIL); few, since each
# holds its share of the pair budget.
WORKERS = min(4, os.cpu_count() or 1)
# Position bins per octave in the norm-against-position figure.
POSITION_BINS_PER_OCTAVE = 4


@dataclass
class Sums:
    """Running sums of a value, by integer bin (grows as bins appear)."""

    total: np.ndarray = field(default_factory=lambda: np.zeros(0))
    count: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def add(self, bins: np.ndarray, values: np.ndarray) -> None:
        if not len(bins):
            return
        size = max(len(self.count), int(bins.max()) + 1)
        self.total = _grow(self.total, size) + np.bincount(bins, weights=values, minlength=size)
        self.count = _grow(self.count, size) + np.bincount(bins, minlength=size)

    def merge(self, other: Sums) -> None:
        self.add_totals(other.total, other.count)

    def add_totals(self, totals: np.ndarray, counts: np.ndarray) -> None:
        """Add sums already binned: ``totals[b]`` over ``counts[b]`` values of bin b."""
        size = max(len(self.count), len(counts))
        self.total = _grow(self.total, size) + _grow(totals, size)
        self.count = _grow(self.count, size) + _grow(counts, size)

    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.total / np.maximum(self.count, 1), np.nan)


def _grow(array: np.ndarray, size: int) -> np.ndarray:
    return np.pad(array, (0, size - len(array))) if len(array) < size else array


@dataclass
class Extents:
    """The smallest and largest value seen in each integer bin (-1 where none was)."""

    low: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    high: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def add(self, bins: np.ndarray, values: np.ndarray) -> None:
        if not len(bins):
            return
        size = max(len(self.low), int(bins.max()) + 1)
        unseen = np.iinfo(np.int64).max
        low = np.full(size, unseen)
        low[: len(self.low)] = np.where(self.high >= 0, self.low, unseen)
        high = np.full(size, -1, dtype=np.int64)
        high[: len(self.high)] = self.high
        np.minimum.at(low, bins, values)
        np.maximum.at(high, bins, values)
        self.low, self.high = np.where(high >= 0, low, -1), high

    def merge(self, other: Extents) -> None:
        seen = np.flatnonzero(other.high >= 0)
        self.add(seen, other.low[seen])
        self.add(seen, other.high[seen])

    def span(self, start: int, stop: int) -> tuple[int, int] | None:
        """(smallest, largest) over bins ``start..stop-1``; None when none of them was seen."""
        seen = self.high[start:stop] >= 0
        if not seen.any():
            return None
        return int(self.low[start:stop][seen].min()), int(self.high[start:stop][seen].max())


@dataclass
class ConfigKey:
    layer: int
    head: int
    kind: str


def parse_config(name: str) -> ConfigKey:
    match = CONFIG_NAME.match(name)
    assert match is not None, name
    return ConfigKey(int(match[1]), int(match[2]), match[3])


@dataclass
class NormStats:
    """Per kind: rows per bucket; per (kind, layer): norm sums by bucket; per config: norm sums by position
    bin (bin b holds positions p with floor(POSITION_BINS_PER_OCTAVE * log2(p + 1)) == b)."""

    rows_per_bucket: dict[str, Sums] = field(default_factory=dict)
    norm_by_layer_bucket: dict[tuple[str, int], Sums] = field(default_factory=dict)
    norm_by_position: dict[str, Sums] = field(default_factory=dict)
    position_by_bin: dict[str, Sums] = field(default_factory=dict)
    # Per kind: the token positions each sampler bucket holds (for the figures' bucket labels).
    bucket_positions: dict[str, Extents] = field(default_factory=dict)


def _merged(per_config: list[ConfigNorms]) -> NormStats:
    """The configs' sums added together in config order (the same floats whatever the threads did)."""
    stats = NormStats()
    for one in sorted(per_config, key=lambda n: n.config):
        key = parse_config(one.config)
        stats.rows_per_bucket.setdefault(key.kind, Sums()).merge(one.rows)
        stats.norm_by_layer_bucket.setdefault((key.kind, key.layer), Sums()).merge(one.by_bucket)
        stats.norm_by_position[one.config] = one.by_position
        stats.position_by_bin[one.config] = one.positions_in_bin
        stats.bucket_positions.setdefault(key.kind, Extents()).merge(one.extents)
    return stats


class ConfigNorms:
    """One config's sums, fed its rows a batch at a time (each row exactly once)."""

    def __init__(self, config: str) -> None:
        self.config = config
        self.rows, self.by_bucket, self.by_position, self.positions_in_bin = Sums(), Sums(), Sums(), Sums()
        self.extents = Extents()

    def add(self, buckets: np.ndarray, positions: np.ndarray, vectors: np.ndarray) -> None:
        buckets, positions = buckets.astype(np.int64), positions.astype(np.int64)
        norms = row_norms(vectors)
        self.rows.add(buckets, np.ones(len(buckets)))
        self.by_bucket.add(buckets, norms)
        bins = position_bins(positions)
        self.by_position.add(bins, norms)
        self.positions_in_bin.add(bins, positions.astype(np.float64))
        self.extents.add(buckets, positions)


def _config_norms(config: str, parts: list[CommittedPart]) -> ConfigNorms:
    """One config's sums, streamed over record batches."""
    norms = ConfigNorms(config)
    for batch in _batches(parts, ["bucket", "position", "vector"]):
        norms.add(numpy_values(batch["bucket"]), numpy_values(batch["position"]), vectors_of(batch["vector"]))
    return norms


def row_norms(vectors: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))


def position_bins(positions: np.ndarray) -> np.ndarray:
    return np.floor(POSITION_BINS_PER_OCTAVE * np.log2(positions + 1.0)).astype(np.int64)


def _batches(parts: list[CommittedPart], columns: list[str]) -> Iterator[Any]:
    for part in parts:
        f = pq.ParquetFile(part.path)
        yield from f.iter_batches(batch_size=BATCH_ROWS, columns=columns)


def coverage(parts: dict[str, list[CommittedPart]], layout: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per kind, a (layers, heads) boolean map of the configs that hold committed rows."""
    layers = int(layout["num_layers"])
    maps = {
        "q": np.zeros((layers, int(layout["num_q_heads"])), dtype=bool),
        "k": np.zeros((layers, int(layout["num_kv_heads"])), dtype=bool),
    }
    for config, files in parts.items():
        key = parse_config(config)
        if sum(f.rows for f in files):
            maps[key.kind][key.layer, key.head] = True
    return maps


# ------------------------------------------------------------------------------ logit against distance


def distance_bins(distance: np.ndarray) -> np.ndarray:
    """0 for distance 0, else floor(log2(distance)) + 1: bin b >= 1 holds distances [2**(b-1), 2**b)."""
    return np.frexp(distance.astype(np.float64))[1].astype(np.int64)


@dataclass
class LogitByDistance:
    """Mean of q·k/sqrt(head_dim) over pairs (query at i, key at j <= i, same example), by distance bin,
    per (layer, query head); the key head is the one that query head reads."""

    sums: dict[tuple[int, int], Sums] = field(default_factory=dict)
    kv_head: dict[tuple[int, int], int] = field(default_factory=dict)

    def mean(self, layer: int, q_head: int) -> np.ndarray:
        return self.sums[(layer, q_head)].mean()


@dataclass
class KeyHead:
    """A key head's config and the configs of the query heads that read it."""

    layer: int
    kv_head: int
    key_config: str
    query_configs: dict[int, str]


def key_heads(parts: dict[str, list[CommittedPart]], layout: dict[str, Any]) -> list[KeyHead]:
    group = int(layout["num_q_heads"]) // int(layout["num_kv_heads"])  # query head h reads KV head h // group
    names = {(k.layer, k.head, k.kind): c for c in parts for k in [parse_config(c)]}
    heads = []
    for (layer, kv, kind), k_config in sorted(names.items()):
        readers = range(kv * group, (kv + 1) * group)
        queries = {h: names[(layer, h, "q")] for h in readers if (layer, h, "q") in names}
        if kind == "k" and queries:
            heads.append(KeyHead(layer, kv, k_config, queries))
    return heads


def aggregates(
    parts: dict[str, list[CommittedPart]], layout: dict[str, Any], *, norms: bool = True, logits: bool = True
) -> tuple[NormStats, LogitByDistance]:
    """The norm sums and the logits by distance in one read of every row: each key head with the query
    heads that read it on a worker thread (each within its share of :data:`PAIR_BUDGET_BYTES`), their rows
    feeding the norm sums of their configs as they are read; configs no pair reads are streamed alone.
    ``norms`` / ``logits`` false: that half is left empty (and the rows only it needs are not read)."""
    scale = 1.0 / np.sqrt(float(layout["head_dim"]))
    max_rows = max(1, PAIR_BUDGET_BYTES // WORKERS // (int(layout["head_dim"]) * 4 + 16))
    work = key_heads(parts, layout) if logits else []
    paired = {c for w in work for c in (w.key_config, *w.query_configs.values())}
    alone = [c for c in sorted(parts) if c not in paired] if norms else []
    result, per_config = LogitByDistance(), []
    # BLAS kept to one thread meanwhile: its own threads on top of the workers' oversubscribe the cores
    # (measured on 2 cores: 0.97 s for a million rows with them, 0.63 s without).
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(WORKERS) as pool:
        pairs = pool.map(lambda w: _pairs(w, parts, scale, max_rows, norms), work)
        singles = pool.map(lambda c: _config_norms(c, parts[c]), alone)
        for head, (sums, fed) in zip(work, pairs, strict=True):
            for h, head_sums in sums.items():
                result.sums[(head.layer, h)] = head_sums
                result.kv_head[(head.layer, h)] = head.kv_head
            per_config += fed
        per_config += list(singles)
    return _merged(per_config), result


def _pairs(
    head: KeyHead, parts: dict[str, list[CommittedPart]], scale: float, max_rows: int, norms: bool
) -> tuple[dict[int, Sums], list[ConfigNorms]]:
    """The logit sums of each query head of ``head`` with its key head, and (``norms``) the norm sums of
    every config involved, from the same reads (query rows of examples without keys are read for their
    norms)."""
    k_index = RowIndex(parts[head.key_config], ConfigNorms(head.key_config) if norms else None)
    q_indexes = {
        h: RowIndex(parts[c], ConfigNorms(c) if norms else None) for h, c in head.query_configs.items()
    }
    sums = {h: Sums() for h in q_indexes}
    for examples in k_index.groups(list(q_indexes.values()), max_rows):
        keys = k_index.rows(examples)
        queries = {h: q_index.rows(examples) for h, q_index in q_indexes.items()}
        for example in examples:
            if example not in keys:
                continue
            prefix = KeyPrefix(keys[example])  # once for every query head that reads this key head
            heads = [h for h in q_indexes if example in queries[h]]
            prefix.add_pairs([sums[h] for h in heads], [queries[h][example] for h in heads], scale)
    if not norms:
        return sums, []
    for q_index in q_indexes.values():
        unpaired = [e for e in q_index.locations if e not in k_index.counts]
        for examples in q_index.groups([], max_rows, unpaired):
            q_index.rows(examples)
    return sums, [index.norms for index in (k_index, *q_indexes.values()) if index.norms is not None]


Rows = tuple[np.ndarray, np.ndarray]  # positions (n,), vectors (n, head_dim)


class KeyPrefix:
    """One example's keys sorted by position, with their cumulative sums, so every causal (query, key) pair
    is summed per distance bin exactly without forming the pairs: the keys at distances ``[2**(b-1), 2**b)``
    from a query at ``i`` are those at positions ``(i - 2**b, i - 2**(b-1)]``, a difference of two prefix
    rows, and their summed logit is one dot product. Cost: queries x bins x head_dim per query head, where
    the pairs would cost queries x keys x head_dim."""

    def __init__(self, keys: Rows) -> None:
        positions, vectors = keys
        positions = positions.astype(np.int64)
        order = position_order(positions)
        self.positions = positions if order is None else positions[order]
        self.prefix = prefix_sums(vectors if order is None else vectors[order])
        # Keys at every position of one range (sampler=all): a cut is arithmetic, no search needed.
        self.dense = steps_by_one(self.positions)

    def cuts(self, q_at: np.ndarray) -> np.ndarray:
        """(bins + 1, queries): row j counts the keys at positions <= t_j, where t_0 = i and
        t_j = i - 2**(j-1); bin b holds the keys between cuts b + 1 and b."""
        widest = int(q_at.max() - self.positions[0]) if len(q_at) and len(self.positions) else -1
        bins = int(distance_bins(np.array([widest]))[0]) + 1 if widest >= 0 else 0
        offsets = np.array([0] + [2 ** (j - 1) for j in range(1, bins + 1)], dtype=np.int64)
        targets = q_at[None, :] - offsets[:, None]
        if self.dense:
            return np.clip(targets - (self.positions[0] - 1), 0, len(self.positions))
        return np.searchsorted(self.positions, targets, side="right")

    def add_pairs(self, sums: list[Sums], queries: list[Rows], scale: float) -> None:
        """Add each query head's pairs with these keys to its ``sums``. Heads at the same positions (those
        of one layer: the sampler's mask is per layer and kind) share the cuts and each prefix row read."""
        shared: dict[bytes, list[int]] = {}
        for i, (positions, _) in enumerate(queries):
            shared.setdefault(positions.astype(np.int64).tobytes(), []).append(i)
        for members in shared.values():
            at = queries[members[0]][0].astype(np.int64)
            order = position_order(at)
            if order is not None:
                at = at[order]
            cuts = self.cuts(at)
            if len(cuts) < 2:
                continue
            stacked = np.empty((len(members), len(at), self.prefix.shape[1]))  # (heads, queries, d)
            for row, i in enumerate(members):
                stacked[row] = queries[i][1] if order is None else queries[i][1][order]
            dots = np.array([self._dots(stacked, cut) for cut in cuts])
            counts = cuts[:-1].sum(axis=1) - cuts[1:].sum(axis=1)
            for column, i in enumerate(members):
                sums[i].add_totals((dots[:-1, column] - dots[1:, column]) * scale, counts)

    def _dots(self, stacked: np.ndarray, cut: np.ndarray) -> np.ndarray:
        """Per head, the sum over queries i of ``q_i . prefix[cut[i]]`` (queries in position order, so
        ``cut`` never decreases). Queries with no key before the cut add nothing (``prefix[0]`` is zero).
        Where the cut steps by one key per query (every position sampled), the prefix rows are one slice,
        read in place; otherwise they are gathered."""
        first = int(np.searchsorted(cut, 0, side="right"))
        live = cut[first:]
        if not len(live):
            return np.zeros(len(stacked))
        rows = self.prefix[live[0] : live[-1] + 1] if steps_by_one(live) else self.prefix[live]
        # One BLAS dot per head over (queries x d) values: far cheaper than einsum over a gathered copy.
        return np.array([np.vdot(head[first:], rows) for head in stacked])


# Rows per block of :func:`prefix_sums`: each block's running sums are one small matrix product.
PREFIX_BLOCK = 64
_LOWER = np.tril(np.ones((PREFIX_BLOCK, PREFIX_BLOCK)))


def prefix_sums(vectors: np.ndarray) -> np.ndarray:
    """(n + 1, d) float64: row r is the sum of the first r vectors. Within blocks of :data:`PREFIX_BLOCK`
    rows the running sums are a lower-triangular matrix product, then each block adds the totals before it;
    numpy's cumsum does the same additions one element at a time, at about half this speed."""
    count, width = vectors.shape
    prefix = np.zeros((count + 1, width))
    whole = count // PREFIX_BLOCK * PREFIX_BLOCK
    if whole:
        blocks = np.matmul(_LOWER, vectors[:whole].astype(np.float64).reshape(-1, PREFIX_BLOCK, width))
        blocks[1:] += np.cumsum(blocks[:-1, -1, :], axis=0)[:, None, :]
        prefix[1 : whole + 1] = blocks.reshape(whole, width)
    np.cumsum(vectors[whole:], axis=0, dtype=np.float64, out=prefix[whole + 1 :])
    prefix[whole + 1 :] += prefix[whole]
    return prefix


def position_order(positions: np.ndarray) -> np.ndarray | None:
    """The stable order that sorts ``positions``; None when they are in order already (no copy needed)."""
    return None if np.all(positions[1:] >= positions[:-1]) else np.argsort(positions, kind="stable")


def steps_by_one(values: np.ndarray) -> bool:
    """``values`` is a run of consecutive integers (a, a + 1, ..., b), so it can stand for a slice."""
    if not len(values) or values[-1] - values[0] != len(values) - 1:
        return False
    return bool(np.all(np.diff(values) == 1))


class RowIndex:
    """Where each example's rows sit in a config's part files (row groups). A row group whose example_id
    statistics say it holds one example is indexed from its footer alone; any other has that column read."""

    def __init__(self, parts: list[CommittedPart], norms: ConfigNorms | None) -> None:
        self.parts = parts
        self.norms = norms  # fed every row :meth:`rows` reads (None: no norms wanted)
        self.counts: dict[int, int] = {}
        self.locations: dict[int, list[tuple[int, int]]] = {}  # example -> [(part, row group)]
        self.held: dict[tuple[int, int], set[int]] = {}  # (part, row group) -> its examples
        self.footers: list[pq.FileMetaData] = []  # read once: rows() opens each file with its footer
        for p, part in enumerate(parts):
            f = pq.ParquetFile(part.path)
            self.footers.append(f.metadata)
            column = f.schema_arrow.get_field_index("example_id")
            for g in range(f.num_row_groups):
                group = f.metadata.row_group(g)
                one = _single_value(group.column(column).statistics)
                if one is not None:
                    values, counts = [one], [group.num_rows]
                else:
                    ids = numpy_values(f.read_row_group(g, columns=["example_id"]).column(0))
                    unique, tally = np.unique(ids, return_counts=True)
                    values, counts = unique.tolist(), tally.tolist()
                self.held[(p, g)] = set(values)
                for value, count in zip(values, counts, strict=True):
                    self.counts[value] = self.counts.get(value, 0) + count
                    self.locations.setdefault(value, []).append((p, g))

    def groups(
        self, others: list[RowIndex], max_rows: int, examples: list[int] | None = None
    ) -> Iterator[list[int]]:
        """This index's examples (or ``examples``), in file order, in groups whose rows here and in
        ``others`` stay within ``max_rows`` (an example above it forms a group alone)."""
        group: list[int] = []
        rows = 0
        for example in self.locations if examples is None else examples:
            n = self.counts[example] + sum(o.counts.get(example, 0) for o in others)
            if group and rows + n > max_rows:
                yield group
                group, rows = [], 0
            group.append(example)
            rows += n
        if group:
            yield group

    def rows(self, examples: list[int]) -> dict[int, Rows]:
        """(positions, vectors) of each of ``examples``, read from the row groups that hold them: one read
        per part file, filtered only where a row group also holds other examples."""
        wanted = set(examples)
        by_part: dict[int, list[int]] = {}
        for p, g in sorted({loc for e in examples for loc in self.locations.get(e, [])}):
            by_part.setdefault(p, []).append(g)
        chunks: dict[int, list[Rows]] = {}  # example -> its rows, in file order
        columns = ["example_id", "position", "vector", *(["bucket"] if self.norms is not None else [])]
        for p, groups in by_part.items():
            f = pq.ParquetFile(self.parts[p].path, metadata=self.footers[p])
            table = f.read_row_groups(groups, columns=columns)
            ids = numpy_values(table.column("example_id"))
            positions = numpy_values(table.column("position"))
            vectors = vectors_of(table.column("vector"))
            keep = None
            if not all(self.held[(p, g)] <= wanted for g in groups):
                keep = np.isin(ids, np.fromiter(wanted, dtype=np.int64, count=len(wanted)))
                ids, positions, vectors = ids[keep], positions[keep], vectors[keep]
            if self.norms is not None:
                buckets = numpy_values(table.column("bucket"))
                self.norms.add(buckets if keep is None else buckets[keep], positions, vectors)
            for example, rows in _by_example(ids, positions, vectors):
                chunks.setdefault(example, []).append(rows)
        # An example whose rows span files is joined (a copy); one within a file stays a view of it.
        return {
            example: pieces[0] if len(pieces) == 1 else _joined(pieces) for example, pieces in chunks.items()
        }


def _single_value(statistics: pq.Statistics | None) -> int | None:
    """The one value a column chunk holds, when its statistics say so (min == max, no nulls)."""
    if statistics is None or not statistics.has_min_max or statistics.null_count:
        return None
    return int(statistics.min) if statistics.min == statistics.max else None


def _by_example(ids: np.ndarray, positions: np.ndarray, vectors: np.ndarray) -> Iterator[tuple[int, Rows]]:
    """The rows of each example in one read, in their order there (stably brought together first where an
    example's rows are apart)."""
    if not len(ids):
        return
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    if len(starts) != len(np.unique(ids)):
        order = np.argsort(ids, kind="stable")
        ids, positions, vectors = ids[order], positions[order], vectors[order]
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        yield int(ids[a]), (positions[a:b], vectors[a:b])


def _joined(pieces: list[Rows]) -> Rows:
    return np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])
