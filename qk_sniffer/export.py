"""Host buffer of captured blocks, and the background Parquet writer.

Layout: ``<output.dir>/l{LL}h{HH}{q|k}/<part>.parquet``, one dataset config per (layer, head, kind). Each
part file is written to a temporary name, fsynced and renamed, so a reader (or a resumed run) never sees
a half-written file under a final name. Once every file of a flush is durable, the writer hands the flush's
examples to ``on_durable`` (the manifest commit): rows are claimed only after they are on disk.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .capture import Block, RowPlan
from .durable import atomic_file, fsync_dir
from .errors import UserError

# (dataset index, example_id, tokens, configs written for it) of an example whose rows are all in a flush.
ExampleRecord = tuple[int, int, int, tuple[str, ...]]
# (relative path, rows, bytes) of a file a flush wrote.
WrittenFile = tuple[str, int, int]
OnDurable = Callable[[int, list[ExampleRecord], list[WrittenFile]], None]


def return_freed_buffers_to_the_os() -> None:
    """Pin glibc's mmap threshold (it otherwise rises after the first large free, after which freed capture
    buffers stay in a fragmented heap): with it, peak RSS follows the live buffers, i.e. the buffer cap."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to pin
            ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD


class DiskWriteError(UserError):
    """Writing to output.dir failed (disk full, permissions): nothing of that flush is claimed."""


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


@dataclass
class Flush:
    """What one flush writes: the rows, and the examples whose rows are now all among them."""

    rows: dict[tuple[int, str], PendingRows]
    examples: list[ExampleRecord]


class RowBuffer:
    """Captured blocks on the host, grouped by (layer, kind), until they are flushed to Parquet."""

    def __init__(self) -> None:
        self._rows: dict[tuple[int, str], PendingRows] = {}
        self._examples: list[ExampleRecord] = []
        self.nbytes = 0
        self.rows = 0

    @property
    def num_examples(self) -> int:
        return len(self._examples)

    def complete(self, examples: Sequence[ExampleRecord]) -> None:
        """Mark examples whose blocks were all added: they are committed with the next flush."""
        self._examples.extend(examples)

    def add(self, blocks: Sequence[Block]) -> None:
        for block in blocks:
            pending = self._rows.setdefault((block.layer, block.kind), PendingRows([]))
            pending.blocks.append(block)
            size = block.vectors.nbytes + block.plan.positions.nbytes * 4
            self.nbytes += size
            self.rows += block.vectors.shape[0] * block.vectors.shape[1]

    def drain(self) -> Flush:
        flush = Flush(self._rows, self._examples)
        self._rows, self._examples = {}, []
        self.nbytes = 0
        self.rows = 0
        return flush


def keep_missing(blocks: list[Block], done: Sequence[frozenset[str]], widths: tuple[int, int]) -> list[Block]:
    """Drop the rows of (example, config) pairs already durable; ``done[r]`` holds the configs of batch row
    r's example. A resumed or merging run thus writes each (example, config) once."""
    if not any(done):
        return blocks
    out = []
    for block in blocks:
        names = [config_name(block.layer, head, block.kind, *widths) for head in block.heads]
        if not any(name in d for name in names for d in done):
            out.append(block)
            continue
        for i, (head, name) in enumerate(zip(block.heads, names, strict=True)):
            keep = np.array([name not in d for d in done], dtype=bool)[block.plan.batch_rows]
            if keep.any():
                out.append(
                    Block(
                        block.layer,
                        block.kind,
                        (head,),
                        np.ascontiguousarray(block.vectors[i : i + 1, keep]),
                        _subset(block.plan, keep),
                        block.sliding_window,
                    )
                )
    return out


def _subset(plan: RowPlan, keep: np.ndarray) -> RowPlan:
    return RowPlan(
        plan.batch_rows[keep],
        plan.positions[keep],
        plan.buckets[keep],
        plan.example_ids[keep],
        plan.token_ids[keep],
    )


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
    """Write, fsync, rename: the final name only ever holds a complete file (a failed write leaves none)."""
    with atomic_file(path) as f:
        pq.write_table(table, f, compression="zstd")


class ParquetWriter:
    """Writes part files on one background thread so the forward never waits on disk.

    At most ``max_pending`` flushes are queued or being written: a capture that outruns the disk waits
    instead of piling buffers up in memory (this is what bounds host memory to about twice the buffer).
    """

    def __init__(
        self,
        root: Path,
        part_prefix: str,
        widths: tuple[int, int],
        token_strings: Callable[[np.ndarray], list[str]] | None,
        on_durable: OnDurable | None = None,
        max_pending: int = 1,
    ) -> None:
        self.root = root
        self.part_prefix = part_prefix
        self.widths = widths
        self.token_strings = token_strings
        self.on_durable = on_durable
        self.max_pending = max_pending
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qk-writer")
        self._futures: list[Future[list[WrittenFile]]] = []
        self._seq = 0
        self._lock = threading.Lock()
        self.bytes_written = 0
        self.rows_written = 0
        self.examples_committed = 0
        self.write_seconds = 0.0
        self.files: list[str] = []

    def submit(
        self, rows: dict[tuple[int, str], PendingRows], examples: list[ExampleRecord] | None = None
    ) -> Future[list[WrittenFile]]:
        """Queue a flush; the future gives (relative path, rows, bytes) of every file it wrote. Waits first
        while ``max_pending`` flushes are in flight, and re-raises a failed earlier flush's error."""
        while len(self._futures) >= self.max_pending:
            self._futures.pop(0).result()
        seq = self._seq
        self._seq += 1
        future = self._pool.submit(self._write, rows, list(examples or []), seq)
        self._futures.append(future)
        return future

    def _write(
        self, rows: dict[tuple[int, str], PendingRows], examples: list[ExampleRecord], seq: int
    ) -> list[WrittenFile]:
        start = time.perf_counter()
        written: list[WrittenFile] = []
        rel = ""
        try:
            while rows:
                _, pending = rows.popitem()  # let each (layer, kind) go as soon as it is written
                for name, table in tables_for(pending, self.widths, self.token_strings).items():
                    rel = f"{name}/{self.part_prefix}-{seq:05d}.parquet"
                    path = self.root / rel
                    write_table_atomic(table, path)
                    written.append((rel, table.num_rows, path.stat().st_size))
            rel = "(directory entries)"
            for directory in sorted({w[0].split("/")[0] for w in written}):
                fsync_dir(self.root / directory)
            if self.on_durable is not None and (written or examples):
                rel = "(manifest commit)"
                self.on_durable(seq, examples, written)
        except OSError as exc:
            raise DiskWriteError(
                f"output.dir={str(self.root)!r}: cannot write {rel}: {exc.strerror or exc} (errno "
                f"{exc.errno}). The manifest claims only rows already on disk; free space or fix "
                "permissions, then run the same command again to resume"
            ) from None
        with self._lock:
            for rel, n_rows, size in written:
                self.bytes_written += size
                self.rows_written += n_rows
                self.files.append(rel)
            self.examples_committed += len(examples)
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
