"""Examples in, right-padded token batches out.

An example's id comes from ``dataset.id_column`` (integers kept, strings hashed stably to int64) or else
from its row index, so the same text always samples the same rows. Rows are the dataset's identity in the
output, so ids must be present and unique and texts must be strings: anything else is refused, naming the
column and the row (a loaded dataset is checked whole before the weights load; a stream as it is read).
Empty or null texts are skipped and counted, never fatal. A text longer than the model's positions is cut
to them when ``tokenizer.max_length`` is null, and counted (see :mod:`qk_sniffer.capture.positions`).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
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
# Builders that read files named by dataset.data_files from this machine.
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")
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


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def load_rows(cfg: DatasetConfig) -> Iterable[dict[str, Any]]:
    """The raw rows of the configured dataset (``datasets`` is imported here, lazily).

    Every problem it can see before the capture starts is a UserError naming the key: missing files, a
    glob that matches nothing, an empty or unreadable file, a missing column, and (for a dataset that is
    loaded, not streamed) a text that is not a string or an id that is null or repeated.
    """
    import datasets  # noqa: PLC0415 - kept lazy so the benchmark imports without it

    path, data_files = cfg.path, cfg.data_files
    if path == "embedded":
        path, data_files = "json", str(EMBEDDED_CORPUS)
    for f in _as_list(data_files):
        if "://" not in f and not any(ch in f for ch in "*?[") and not os.path.exists(f):
            raise UserError(f"dataset.data_files: file not found: {f}")
    files = _local_files(data_files) if path in LOCAL_BUILDERS else []
    try:
        ds = datasets.load_dataset(
            path, name=cfg.name, data_files=data_files, split=cfg.split, streaming=cfg.streaming
        )
    except OSError as exc:  # missing files, an unreachable Hub (ConnectionError), offline mode
        raise UserError(f"dataset.path={cfg.path!r}: {exc}") from None
    except ValueError as exc:
        raise UserError(f"dataset {cfg.path!r} (split {cfg.split!r}): {exc}") from None
    except (datasets.exceptions.DatasetGenerationError, StopIteration) as exc:
        raise _unreadable(cfg, path, files, exc) from None
    columns = list(ds.column_names or [])
    for key, column in (("dataset.text_column", cfg.text_column), ("dataset.id_column", cfg.id_column)):
        if column is not None and columns and column not in columns:
            raise UserError(
                f"{key}={column!r} is not a column of the dataset; its columns are: {', '.join(columns)}"
            )
    if cfg.streaming:
        return _reading_errors_named(ds, cfg, path, files)
    _check_whole_dataset(ds, cfg)
    return ds


def _local_files(data_files: Any) -> list[str]:
    """The files each data_files entry names on this machine; refuses a pattern that matches nothing and
    an empty file (``datasets`` would fail on either with an internal error)."""
    files = []
    for entry in _as_list(data_files):
        if "://" in entry:
            continue
        matched = sorted(glob.glob(entry, recursive=True)) if any(ch in entry for ch in "*?[") else [entry]
        if not matched:
            raise UserError(f"dataset.data_files: no file matches {entry!r}")
        for f in matched:
            if os.path.isfile(f) and _is_blank(f):
                raise UserError(f"dataset.data_files: {f} is empty")
        files += matched
    return files


def _is_blank(path: str) -> bool:
    """Nothing but whitespace (reads only until the first other byte)."""
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 16):
            if chunk.strip():
                return False
    return True


def _unreadable(cfg: DatasetConfig, path: str, files: list[str], exc: BaseException) -> UserError:
    """One message for a file ``datasets`` could not parse: the file and line for JSON lines."""
    if path == "json":
        for f in files:
            bad = _first_bad_json_line(f)
            if bad is not None:
                line, reason = bad
                return UserError(f"dataset.data_files: {f} line {line} is not valid JSON ({reason})")
    cause = exc.__cause__ or exc.__context__ or exc
    detail = str(cause) or type(cause).__name__
    where = ", ".join(files) if files else repr(cfg.path)
    return UserError(f"dataset.path={cfg.path!r}: cannot read {where}: {detail}")


def _first_bad_json_line(path: str) -> tuple[int, str] | None:
    """(line number, reason) of the first line of a JSON-lines file that is not one JSON object."""
    try:
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as err:
                    return number, err.msg
                if not isinstance(value, dict):
                    return number, f"a JSON {type(value).__name__}, not an object"
    except (OSError, UnicodeDecodeError) as err:
        return 0, str(err)
    return None


def _reading_errors_named(
    rows: Iterable[dict[str, Any]], cfg: DatasetConfig, path: str, files: list[str]
) -> Iterator[dict[str, Any]]:
    """A streamed dataset reads (and may fail) while it is iterated: name the dataset, not a traceback."""
    import datasets  # noqa: PLC0415

    try:
        yield from rows
    except OSError as exc:
        raise UserError(f"dataset.path={cfg.path!r}: reading the stream failed: {exc}") from None
    except (ValueError, datasets.exceptions.DatasetGenerationError) as exc:  # pyarrow's parse errors
        raise _unreadable(cfg, path, files, exc) from None


def _check_whole_dataset(ds: Any, cfg: DatasetConfig) -> None:
    """Texts and ids of every row the run will read, before any weight loads."""
    import datasets  # noqa: PLC0415

    count = ds.num_rows if cfg.max_samples is None else min(ds.num_rows, cfg.max_samples)
    text_feature = ds.features.get(cfg.text_column)
    if not (isinstance(text_feature, datasets.Value) and text_feature.dtype in ("string", "large_string")):
        for index, text in enumerate(_column_values(ds, cfg.text_column, count)):
            check_text(cfg.text_column, index, text)
    if cfg.id_column is not None:
        ids = ExampleIds(cfg.id_column)
        for index, value in enumerate(_column_values(ds, cfg.id_column, count)):
            ids.take(index, value)


def _column_values(ds: Any, column: str, count: int) -> list[Any]:
    """The first ``count`` values of one column as Python objects; plain Arrow columns are read as such
    (fast), others (e.g. a JSON column of mixed types) through ``datasets``' decoding."""
    import datasets  # noqa: PLC0415

    if isinstance(ds.features.get(column), datasets.Value):
        return list(ds.with_format("arrow")[:count][column].to_pylist())
    return list(ds.select_columns([column])[:count][column])


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
