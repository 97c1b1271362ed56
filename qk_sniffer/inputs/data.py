"""Examples in, right-padded token batches out.

An example's id comes from ``dataset.id_column`` (integers kept, strings hashed stably to int64) or else
from its row index, so the same text always samples the same rows. Rows are the dataset's identity in the
output, so ids must be present and unique and texts must be strings: anything else is refused, naming the
column and the row (a loaded dataset is checked whole before the weights load; a stream as it is read).
Empty or null texts are skipped and counted, never fatal. A text longer than the model's positions is cut
to them when ``tokenizer.max_length`` is null, and counted (see :mod:`qk_sniffer.capture.positions`).
Each example carries a hash of its token ids, which the manifest records: an edited text shows even at the
same token count. Reading the rows themselves is :mod:`.sources`'.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.config import DatasetConfig
from ..core.errors import UserError
from .stats import DataStats

log = logging.getLogger(__name__)

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
EMBEDDED_CORPUS = RESOURCES / "corpus.jsonl"
EMBEDDED_TOKENIZER = RESOURCES / "tokenizer.json"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass
class Example:
    index: int  # row index in the source dataset
    example_id: int
    input_ids: list[int]

    @property
    def length(self) -> int:
        return len(self.input_ids)

    @functools.cached_property
    def token_hash(self) -> str:
        return token_hash(self.input_ids)


def token_hash(ids: list[int]) -> str:
    """What identifies an example's content: a digest of its token ids (so an edited text, or a tokenizer
    that changed, shows even when the number of tokens did not)."""
    return hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=8).hexdigest()


@dataclass
class Batch:
    examples: list[Example]
    input_ids: torch.Tensor  # (B, S) right-padded

    @property
    def num_tokens(self) -> int:
        return sum(e.length for e in self.examples)


def stable_id(value: Any) -> int:
    """Integers are kept; anything else maps to a signed int64 via blake2b (same in every process)."""
    if isinstance(value, (bool, np.bool_)):
        value = int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    digest = hashlib.blake2b(str(value).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def check_text(column: str, index: int, text: Any) -> None:
    """A text is a string (or null, skipped): never the str() of a list, number or dict."""
    if text is not None and not isinstance(text, str):
        raise UserError(
            f"dataset.text_column={column!r}: row {index} holds a value of type {type(text).__name__} "
            f"({_short(text)}), not a string; texts are never converted (choose a string column)"
        )


class ExampleIds:
    """Each row's example id, refusing what would make ``(example_id, position)`` ambiguous: a null id, a
    type with no stable integer (only integers and strings have one), or an id seen before (also two
    strings that hash to one id)."""

    def __init__(self, column: str | None, streaming: bool = False) -> None:
        self.column = column
        self.streaming = streaming
        self._seen: dict[int, tuple[int, Any]] = {}

    def take(self, index: int, value: Any) -> int:
        if self.column is None:
            return index
        fix = "or set dataset.id_column=null to number examples by row index"
        key = f"dataset.id_column={self.column!r}"
        if value is None:
            raise UserError(f"{key}: row {index} has a null id; every example needs its own id, {fix}")
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, str)):
            raise UserError(
                f"{key}: row {index} has an id of type {type(value).__name__} ({_short(value)}); ids must "
                f"be integers or strings, {fix}"
            )
        if isinstance(value, (int, np.integer)) and not INT64_MIN <= int(value) <= INT64_MAX:
            raise self.beyond_int64(index, str(value))
        example_id = stable_id(value)
        first = self._seen.get(example_id)
        if first is None:
            self._seen[example_id] = (index, value)
            return example_id
        first_index, first_value = first
        what = (
            f"id {value!r} appears more than once (rows {first_index} and {index})"
            if first_value == value
            else f"ids {first_value!r} (row {first_index}) and {value!r} (row {index}) hash to one example id"
        )
        committed = (
            "; found while streaming: examples before it that were already committed stay valid"
            if self.streaming
            else ""
        )
        raise UserError(f"{key}: {what}; ids must be unique, {fix}{committed}")

    def beyond_int64(self, index: int, shown: str) -> UserError:
        return UserError(
            f"dataset.id_column={self.column!r}: row {index} has the id {shown}, beyond the 64-bit integers "
            "example ids are stored as; give ids as strings (they are hashed to one), or set "
            "dataset.id_column=null to number examples by row index"
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
    position_limit: int | None = None,
) -> Iterator[Example]:
    ids = ExampleIds(cfg.id_column, streaming=cfg.streaming)
    for index, row in enumerate(rows):
        if cfg.max_samples is not None and index >= cfg.max_samples:
            return
        # Every shard checks every row's id, so shards of one dataset never write the same id twice.
        example_id = ids.take(index, row.get(cfg.id_column) if cfg.id_column else None)
        if index % cfg.num_shards != cfg.shard_index:
            continue
        text = row.get(cfg.text_column)
        check_text(cfg.text_column, index, text)
        tokens = encode(text) if text is not None and text.strip() else []
        example = make_example(index, example_id, tokens, max_length, stats, position_limit)
        if example is not None:
            yield example


def make_example(
    index: int,
    example_id: int,
    ids: list[int],
    max_length: int | None,
    stats: DataStats,
    position_limit: int | None = None,
) -> Example | None:
    """``ids`` cut to ``max_length`` (counted as truncated), then to the model's ``position_limit``
    (counted apart, the first one logged); None, counted as skipped, when it is empty."""
    if max_length is not None and len(ids) > max_length:
        ids = ids[:max_length]
        stats.truncated += 1
    if position_limit is not None and len(ids) > position_limit:
        if not stats.truncated_to_model_limit:
            log.warning(
                "row %d has %d tokens, more than the %d positions the model was built for: cut to %d "
                "(tokenizer.max_length is null); further cuts are counted in the card, not logged",
                index,
                len(ids),
                position_limit,
                position_limit,
            )
        ids = ids[:position_limit]
        stats.truncated_to_model_limit += 1
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
