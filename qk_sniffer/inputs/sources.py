"""Reading a dataset's rows (the embedded corpus, local files, the Hub), refusing up front what would
otherwise fail mid-capture or quietly read the wrong thing: missing or empty files, a glob that matches
nothing, a file that is not UTF-8, a missing column, a Hub that cannot be reached, and (for a dataset
loaded whole) a text that is not a string or an id that is null, repeated or beyond int64. Each refusal is
one UserError naming the key and the file, line or row. ``datasets`` is imported here, lazily.
"""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Iterable, Iterator
from typing import Any

from ..core.config import DatasetConfig
from ..core.errors import UserError
from .data import EMBEDDED_CORPUS, INT64_MIN, ExampleIds, check_text

# Builders that read files named by dataset.data_files from this machine.
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")


def load_rows(cfg: DatasetConfig) -> Iterable[dict[str, Any]]:
    """The raw rows of the configured dataset (``datasets`` is imported here, lazily).

    Every problem it can see before the capture starts is a UserError naming the key: missing files, a
    glob that matches nothing, an empty or unreadable file, a missing column, and (for a dataset that is
    loaded, not streamed) a text that is not a string or an id that is null or repeated.
    """
    if cfg.path == "embedded":
        return _embedded_rows(cfg)
    import datasets  # noqa: PLC0415 - kept lazy: the benchmark and the embedded corpus run without it

    path, data_files = cfg.path, cfg.data_files
    for f in _as_list(data_files):
        if "://" not in f and not any(ch in f for ch in "*?[") and not os.path.exists(f):
            raise UserError(f"dataset.data_files: file not found: {f}")
    files = _local_files(data_files) if path in LOCAL_BUILDERS else []
    if path not in LOCAL_BUILDERS and not os.path.exists(path):
        _check_hub_reachable(cfg.path)
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
    _check_columns(cfg, list(ds.column_names or []))
    if cfg.streaming:
        return _reading_errors_named(ds, cfg, path, files)
    _check_whole_dataset(ds, cfg, files)
    return ds


def _embedded_rows(cfg: DatasetConfig) -> list[dict[str, Any]]:
    """The corpus shipped in the package, read as the JSON lines it is: ``datasets`` would read the same
    rows, after half a second of importing itself, on the path of every first run."""
    with open(EMBEDDED_CORPUS, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    columns = list(rows[0])
    _check_columns(cfg, columns)
    return rows


def _check_columns(cfg: DatasetConfig, columns: list[str]) -> None:
    for key, column in (("dataset.text_column", cfg.text_column), ("dataset.id_column", cfg.id_column)):
        if column is not None and columns and column not in columns:
            raise UserError(
                f"{key}={column!r} is not a column of the dataset; its columns are: {', '.join(columns)}"
            )


def _check_hub_reachable(dataset: str) -> None:
    """One quick request before a Hub dataset is loaded online: unreachable, ``datasets`` would retry for
    most of a minute, warning at each try, and end with no word of offline mode."""
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    import datasets  # noqa: PLC0415
    from huggingface_hub import constants  # noqa: PLC0415

    if constants.HF_HUB_OFFLINE or datasets.config.HF_DATASETS_OFFLINE:
        return
    endpoint = constants.ENDPOINT
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=HUB_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return  # it answered: reachable (the dataset's own access is datasets' to check)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UserError(
            f"dataset.path={dataset!r}: the Hugging Face Hub ({endpoint}) cannot be reached ({reason}); "
            "check the network (or HTTPS_PROXY), or, if the dataset is in your cache, run offline with "
            "HF_HUB_OFFLINE=1"
        ) from None


HUB_TIMEOUT_S = 10


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
            not_utf8 = _first_line_not_utf8(f)
            if not_utf8 is not None:
                line, where = not_utf8
                return UserError(f"dataset.data_files: {f} line {line} is not UTF-8 text ({where}){UTF8_FIX}")
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


def _check_whole_dataset(ds: Any, cfg: DatasetConfig, files: list[str]) -> None:
    """Texts and ids of every row the run will read, before any weight loads."""
    import datasets  # noqa: PLC0415

    count = ds.num_rows if cfg.max_samples is None else min(ds.num_rows, cfg.max_samples)
    _check_utf8(ds, count, cfg, files)
    text_feature = ds.features.get(cfg.text_column)
    if not (isinstance(text_feature, datasets.Value) and text_feature.dtype in ("string", "large_string")):
        for index, text in enumerate(_column_values(ds, cfg.text_column, count)):
            check_text(cfg.text_column, index, text)
    if cfg.id_column is not None:
        ids = ExampleIds(cfg.id_column)
        values = _column_values(ds, cfg.id_column, count)
        id_feature = ds.features.get(cfg.id_column)
        if isinstance(id_feature, datasets.Value) and id_feature.dtype.startswith("float"):
            # A reader makes the whole column floats for one id it cannot hold as an integer (JSON's
            # 99999999999999999999): blame that row, not row 0, whose id merely became 1.0.
            first = next((i for i, v in enumerate(values) if not _integral_int64(v)), 0)
            if _integral(values[first]) and not _integral_int64(values[first]):
                raise ids.beyond_int64(first, f"{values[first]:.17g} (as the reader holds it)")
            ids.take(first, values[first])
        for index, value in enumerate(values):
            ids.take(index, value)


def _integral(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value.is_integer()


def _integral_int64(value: Any) -> bool:
    return _integral(value) and INT64_MIN <= value < 2.0**63


def _check_utf8(ds: Any, count: int, cfg: DatasetConfig, files: list[str]) -> None:
    """Every string the run will read is UTF-8 (a reader may load bytes it cannot decode, which would fail
    mid-capture): refuse naming the file and line (JSON lines) or the column and row."""
    import pyarrow as pa  # noqa: PLC0415

    table = ds.data.table.slice(0, count)
    for name in table.column_names:
        column = table.column(name)
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        start = 0
        for chunk in column.chunks:
            try:
                chunk.validate(full=True)
            except pa.ArrowInvalid:
                raise _not_utf8(cfg, files, name, start + _first_invalid(chunk)) from None
            start += len(chunk)


def _first_invalid(chunk: Any) -> int:
    """The index of the first value of a string chunk that is not UTF-8."""
    import pyarrow as pa  # noqa: PLC0415

    for i, value in enumerate(chunk.cast(pa.binary()).to_pylist()):
        try:
            (value or b"").decode("utf-8")
        except UnicodeDecodeError:
            return i
    return 0


def _not_utf8(cfg: DatasetConfig, files: list[str], column: str, row: int) -> UserError:
    for f in files if cfg.path in ("json", "embedded") else []:
        bad = _first_line_not_utf8(f)
        if bad is not None:
            return UserError(f"dataset.data_files: {f} line {bad[0]} is not UTF-8 text ({bad[1]}){UTF8_FIX}")
    return UserError(f"dataset column {column!r}: row {row} is not UTF-8 text{UTF8_FIX}")


UTF8_FIX = "; save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 IN > OUT)"


def _first_line_not_utf8(path: str) -> tuple[int, str] | None:
    """(line number, which byte) of the first line of a file that is not UTF-8."""
    try:
        with open(path, "rb") as fh:
            for number, line in enumerate(fh, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as err:
                    return number, f"byte 0x{line[err.start]:02x} at column {err.start + 1}"
    except OSError:
        return None
    return None


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
