"""Host buffer of captured blocks, and the background Parquet writer.

Layout: ``<output.dir>/l{LL}h{HH}{q|k}/<part>.parquet``, one dataset config per (layer, head, kind). Each
part file is written to a temporary name, fsynced and renamed, so a reader (or a resumed run) never sees
a half-written file under a final name.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .capture import Block

TMP_SUFFIX = ".tmp"


def config_name(layer: int, head: int, kind: str, layer_width: int = 2, head_width: int = 2) -> str:
    return f"l{layer:0{layer_width}d}h{head:0{head_width}d}{kind}"


def name_widths(num_layers: int, num_heads: int) -> tuple[int, int]:
    """Zero-padding widths: two digits, more when a model has 100 or more layers or heads."""
    return max(2, len(str(num_layers - 1))), max(2, len(str(num_heads - 1)))


def schema(head_dim: int, token_strings: bool) -> pa.Schema:
    fields = [
        pa.field("bucket", pa.int32(), nullable=False),
        pa.field("example_id", pa.int64(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("vector", pa.list_(pa.float32(), head_dim), nullable=False),
        pa.field("sliding_window", pa.int32()),
    ]
    if token_strings:
        fields.append(pa.field("token_str", pa.string()))
    return pa.schema(fields)


@dataclass
class PendingRows:
    """Blocks of one (layer, kind) waiting to be written."""

    blocks: list[Block]

    @property
    def nbytes(self) -> int:
        return sum(b.vectors.nbytes + b.plan.positions.nbytes * 4 for b in self.blocks)


class RowBuffer:
    """Captured blocks on the host, grouped by (layer, kind), until they are flushed to Parquet."""

    def __init__(self) -> None:
        self._rows: dict[tuple[int, str], PendingRows] = {}
        self.nbytes = 0
        self.rows = 0

    def add(self, blocks: Sequence[Block]) -> None:
        for block in blocks:
            pending = self._rows.setdefault((block.layer, block.kind), PendingRows([]))
            pending.blocks.append(block)
            size = block.vectors.nbytes + block.plan.positions.nbytes * 4
            self.nbytes += size
            self.rows += block.vectors.shape[0] * block.vectors.shape[1]

    def drain(self) -> dict[tuple[int, str], PendingRows]:
        rows, self._rows = self._rows, {}
        self.nbytes = 0
        self.rows = 0
        return rows


def tables_for(
    pending: PendingRows,
    widths: tuple[int, int],
    token_strings: Callable[[np.ndarray], list[str]] | None,
) -> dict[str, pa.Table]:
    """One Arrow table per head of this (layer, kind)."""
    blocks = [b for b in pending.blocks if b.vectors.shape[1] > 0]
    if not blocks:
        return {}
    first = blocks[0]
    head_dim = first.vectors.shape[2]
    buckets = pa.array(np.concatenate([b.plan.buckets for b in blocks]).astype(np.int32))
    example_ids = pa.array(np.concatenate([b.plan.example_ids for b in blocks]).astype(np.int64))
    positions = pa.array(np.concatenate([b.plan.positions for b in blocks]).astype(np.int32))
    windows = pa.array(
        np.concatenate([np.full(len(b.plan), b.sliding_window or 0, dtype=np.int32) for b in blocks]),
        mask=np.concatenate([np.full(len(b.plan), b.sliding_window is None) for b in blocks]),
    )
    tokens = None
    if token_strings is not None:
        tokens = pa.array(token_strings(np.concatenate([b.plan.token_ids for b in blocks])), pa.string())
    out = {}
    for i, head in enumerate(first.heads):
        vectors = np.ascontiguousarray(np.concatenate([b.vectors[i] for b in blocks]), dtype=np.float32)
        vector_col = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), head_dim)
        columns = [buckets, example_ids, positions, vector_col, windows]
        if tokens is not None:
            columns.append(tokens)
        table = pa.Table.from_arrays(columns, schema=schema(head_dim, tokens is not None))
        out[config_name(first.layer, head, first.kind, *widths)] = table
    return out


def write_table_atomic(table: pa.Table, path: Path) -> None:
    """Write, fsync, rename: the final name only ever holds a complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as f:
        pq.write_table(table, f, compression="zstd")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ParquetWriter:
    """Writes part files on one background thread so the forward never waits on disk."""

    def __init__(self, root: Path, part_prefix: str, widths: tuple[int, int],
                 token_strings: Callable[[np.ndarray], list[str]] | None) -> None:
        self.root = root
        self.part_prefix = part_prefix
        self.widths = widths
        self.token_strings = token_strings
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qk-writer")
        self._futures: list[Future[list[tuple[str, int, int]]]] = []
        self._seq = 0
        self._lock = threading.Lock()
        self.bytes_written = 0
        self.rows_written = 0
        self.write_seconds = 0.0
        self.files: list[str] = []

    def submit(self, rows: dict[tuple[int, str], PendingRows]) -> Future[list[tuple[str, int, int]]]:
        """Queue a flush; the future gives (relative path, rows, bytes) of every file it wrote."""
        seq = self._seq
        self._seq += 1
        future = self._pool.submit(self._write, rows, seq)
        self._futures.append(future)
        return future

    def _write(self, rows: dict[tuple[int, str], PendingRows], seq: int) -> list[tuple[str, int, int]]:
        start = time.perf_counter()
        written = []
        for pending in rows.values():
            for name, table in tables_for(pending, self.widths, self.token_strings).items():
                rel = f"{name}/{self.part_prefix}-{seq:05d}.parquet"
                path = self.root / rel
                write_table_atomic(table, path)
                size = path.stat().st_size
                written.append((rel, table.num_rows, size))
                with self._lock:
                    self.bytes_written += size
                    self.rows_written += table.num_rows
                    self.files.append(rel)
        with self._lock:
            self.write_seconds += time.perf_counter() - start
        return written

    def wait(self) -> None:
        """Block until every queued flush is on disk; re-raise the first write error."""
        futures, self._futures = self._futures, []
        for future in futures:
            future.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)
