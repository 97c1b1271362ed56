"""Examples in, right-padded token batches out.

An example's id comes from ``dataset.id_column`` (integers kept, anything else hashed stably to int64) or
else from its row index, so the same text always samples the same rows. Empty or null texts are skipped
and counted, never fatal.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import DatasetConfig
from .errors import UserError

RESOURCES = Path(__file__).parent / "resources"
EMBEDDED_CORPUS = RESOURCES / "corpus.jsonl"
EMBEDDED_TOKENIZER = RESOURCES / "tokenizer.json"


@dataclass
class Example:
    index: int  # row index in the source dataset
    example_id: int
    input_ids: list[int]

    @property
    def length(self) -> int:
        return len(self.input_ids)


@dataclass
class Batch:
    examples: list[Example]
    input_ids: torch.Tensor  # (B, S) right-padded

    @property
    def num_tokens(self) -> int:
        return sum(e.length for e in self.examples)


@dataclass
class DataStats:
    skipped_empty: int = 0
    examples: int = 0
    tokens: int = 0
    truncated: int = 0
    lengths: list[int] = field(default_factory=list)


def stable_id(value: Any) -> int:
    """Integers are kept; anything else maps to a signed int64 via blake2b (same in every process)."""
    if isinstance(value, (bool, np.bool_)):
        value = int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    digest = hashlib.blake2b(str(value).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def load_rows(cfg: DatasetConfig) -> Iterable[dict[str, Any]]:
    """The raw rows of the configured dataset (``datasets`` is imported here, lazily)."""
    import datasets  # noqa: PLC0415 - kept lazy so the benchmark imports without it

    path, data_files = cfg.path, cfg.data_files
    if path == "embedded":
        path, data_files = "json", str(EMBEDDED_CORPUS)
    for f in _as_list(data_files):
        if "://" not in f and not any(ch in f for ch in "*?[") and not os.path.exists(f):
            raise UserError(f"dataset.data_files: file not found: {f}")
    try:
        ds = datasets.load_dataset(
            path, name=cfg.name, data_files=data_files, split=cfg.split, streaming=cfg.streaming
        )
    except OSError as exc:  # missing files, an unreachable Hub (ConnectionError), offline mode
        raise UserError(f"dataset.path={cfg.path!r}: {exc}") from None
    except ValueError as exc:
        raise UserError(f"dataset {cfg.path!r} (split {cfg.split!r}): {exc}") from None
    columns = list(ds.column_names or [])
    for key, column in (("dataset.text_column", cfg.text_column), ("dataset.id_column", cfg.id_column)):
        if column is not None and columns and column not in columns:
            raise UserError(
                f"{key}={column!r} is not a column of the dataset; its columns are: {', '.join(columns)}"
            )
    return _reading_errors_named(ds, cfg.path) if cfg.streaming else ds


def _reading_errors_named(rows: Iterable[dict[str, Any]], path: str) -> Iterator[dict[str, Any]]:
    """A streamed dataset reads (and may fail) while it is iterated: name the dataset, not a traceback."""
    try:
        yield from rows
    except OSError as exc:
        raise UserError(f"dataset.path={path!r}: reading the stream failed: {exc}") from None


def _as_list(data_files: Any) -> list[str]:
    if data_files is None:
        return []
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, dict):
        return [f for v in data_files.values() for f in _as_list(v)]
    return [str(f) for f in data_files]


def select_rows(rows: Iterable[dict[str, Any]], cfg: DatasetConfig) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row index, row) for this shard, after max_samples."""
    for index, row in enumerate(rows):
        if cfg.max_samples is not None and index >= cfg.max_samples:
            return
        if index % cfg.num_shards == cfg.shard_index:
            yield index, row


def tokenized_examples(
    rows: Iterable[dict[str, Any]],
    cfg: DatasetConfig,
    encode: Callable[[str], list[int]],
    max_length: int | None,
    stats: DataStats,
) -> Iterator[Example]:
    for index, row in select_rows(rows, cfg):
        text = row.get(cfg.text_column)
        ids = encode(str(text)) if text is not None and str(text).strip() else []
        example_id = stable_id(row[cfg.id_column]) if cfg.id_column else index
        example = make_example(index, example_id, ids, max_length, stats)
        if example is not None:
            yield example


def make_example(
    index: int, example_id: int, ids: list[int], max_length: int | None, stats: DataStats
) -> Example | None:
    """``ids`` cut to ``max_length`` (counted as truncated); None, counted as skipped, when it is empty."""
    if max_length is not None and len(ids) > max_length:
        ids = ids[:max_length]
        stats.truncated += 1
    if not ids:
        stats.skipped_empty += 1
        return None
    return Example(index, example_id, ids)


def synthetic_examples(cfg: DatasetConfig, vocab_size: int) -> Iterator[Example]:
    """Random token ids, one generator per example index, so shards and reruns agree."""
    for index, _ in select_rows(range(cfg.num_examples), cfg):  # type: ignore[arg-type]
        rng = np.random.default_rng([cfg.seed, index])
        ids = rng.integers(0, vocab_size, size=cfg.seq_len).tolist()
        yield Example(index, index, ids)


def batches(examples: Iterable[Example], batch_size: int, pad_id: int, stats: DataStats) -> Iterator[Batch]:
    """Right-padded batches. Padding sits after every real token, so causal attention keeps it invisible."""
    chunk: list[Example] = []
    for example in examples:
        chunk.append(example)
        if len(chunk) == batch_size:
            yield _pad(chunk, pad_id, stats)
            chunk = []
    if chunk:
        yield _pad(chunk, pad_id, stats)


def _pad(examples: list[Example], pad_id: int, stats: DataStats) -> Batch:
    width = max(e.length for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    for row, example in enumerate(examples):
        ids[row, : example.length] = torch.tensor(example.input_ids, dtype=torch.long)
        stats.examples += 1
        stats.tokens += example.length
        stats.lengths.append(example.length)
    return Batch(examples, ids)
