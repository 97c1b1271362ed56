"""Captured blocks on the host, turned into Arrow tables: one per (layer, head, kind), the rows of one
dataset config. This is where the capture's internals (blocks, row plans) end; the store takes the tables.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..core.arrow import numeric_array, schema, vector_array
from ..core.naming import config_name
from .rows import Block, RowKeys

# (dataset index, example_id, tokens, token-id hash, configs written for it) of an example whose rows are
# all in a flush.
ExampleRecord = tuple[int, int, int, str, tuple[str, ...]]


def return_freed_buffers_to_the_os() -> None:
    """Pin glibc's mmap threshold (it otherwise rises after the first large free, after which freed capture
    buffers stay in a fragmented heap): with it, peak RSS follows the live buffers, i.e. the buffer cap."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to pin
            ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD


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

    def tables(
        self, widths: tuple[int, int], token_strings: Callable[[np.ndarray], list[str]] | None
    ) -> Callable[[], Iterator[tuple[str, pa.Table]]]:
        """The flush's tables, built lazily on the writer's thread, letting each (layer, kind) go as soon
        as its tables are made."""
        rows = self.rows

        def build() -> Iterator[tuple[str, pa.Table]]:
            while rows:
                _, pending = rows.popitem()
                yield from tables_for(pending, widths, token_strings).items()

        return build


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


def _subset(plan: RowKeys, keep: np.ndarray) -> RowKeys:
    return RowKeys(
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
    buckets = numeric_array(np.concatenate([b.plan.buckets for b in blocks]).astype(np.int32))
    example_ids = numeric_array(np.concatenate([b.plan.example_ids for b in blocks]).astype(np.int64))
    positions = numeric_array(np.concatenate([b.plan.positions for b in blocks]).astype(np.int32))
    windows = numeric_array(
        np.concatenate([np.full(len(b.plan), b.sliding_window or 0, dtype=np.int32) for b in blocks]),
        null=np.concatenate([np.full(len(b.plan), b.sliding_window is None) for b in blocks]),
    )
    tokens = None
    if token_strings is not None:
        tokens = pa.array(token_strings(np.concatenate([b.plan.token_ids for b in blocks])), pa.string())
    out = {}
    for i, head in enumerate(first.heads):
        vector_col = vector_array(np.concatenate([b.vectors[i] for b in blocks]))
        columns = [buckets, example_ids, positions, vector_col, windows]
        if tokens is not None:
            columns.append(tokens)
        table = pa.Table.from_arrays(columns, schema=schema(head_dim, tokens is not None))
        out[config_name(first.layer, head, first.kind, *widths)] = table
    return out
