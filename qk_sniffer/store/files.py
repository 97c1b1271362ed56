"""Writing files so that a crash never leaves a half-written file under its final name, and reading back
what the store wrote (JSON that a hand, a crash of another tool or a bad copy may have damaged)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .layout import TMP_SUFFIX


class DamagedFile(Exception):
    """A file the store wrote cannot be read back (truncated, not JSON, not the expected shape)."""

    def __init__(self, path: Path, why: str) -> None:
        self.path = path
        super().__init__(f"{path}: {why}")


@contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Yield a file under a temp name; on success fsync it and rename it to ``path``, on failure remove it.

    The final name only ever holds a complete file. The directory entry is not fsynced here: callers that
    publish several files at once fsync the directory once (:func:`fsync_dir`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_dir(path: Path) -> None:
    """Make renames inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Temp file, fsync, rename, fsync the directory: the final name only ever holds complete JSON."""
    with atomic_file(path, "w") as f:
        json.dump(data, f, sort_keys=True, default=str)
    fsync_dir(path.parent)


def read_json(path: Path) -> Any:
    """The JSON in ``path``; :class:`DamagedFile` when it is not valid JSON (FileNotFoundError passes)."""
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedFile(path, f"not valid JSON ({exc})") from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
