"""Where the user's cache lives: ``$QK_SNIFFER_CACHE``, by default ``$XDG_CACHE_HOME/qk_sniffer``
(``~/.cache/qk_sniffer``). ``QK_SNIFFER_CACHE=off`` (in any case: ``OFF``, ``Off``) turns every cache off
(nothing is read or written there); it is a switch, never a dir name. What lives there is only ever a
cache: deleting it costs time, never data.

Entries are small JSON files, one per key, written whole (the store's atomic write); one that does not
parse reads as missing and is written again. An answer worked out by this package's code is keyed also on
:func:`code_fingerprint` (:func:`entry_key`), so an upgrade or an edited checkout never meets an old
answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..core.config import CONF_DIR
from ..store.files import DamagedFile, atomic_file, read_json

OFF = "off"
PACKAGE = Path(__file__).resolve().parents[1]


def cache_root() -> Path | None:
    """The cache's root dir, or None when caching is off."""
    root = os.environ.get("QK_SNIFFER_CACHE")
    if root is not None and root.strip().lower() == OFF:
        return None
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "qk_sniffer")
    return Path(root)


def cache_dir(kind: str) -> Path | None:
    """``$QK_SNIFFER_CACHE/<kind>``; None when caching is off."""
    root = cache_root()
    return None if root is None else root / kind


def read_entry(kind: str, key: str) -> Any | None:
    """The entry ``key`` of the ``kind`` cache, or None (caching off, never written, or damaged)."""
    where = cache_dir(kind)
    if where is None:
        return None
    try:
        return read_json(where / f"{key}.json")
    except (OSError, DamagedFile):
        return None


def write_entry(kind: str, key: str, entry: Any) -> None:
    """Keep ``entry`` under ``key`` (whole or not at all); a read-only home only means it is not kept."""
    where = cache_dir(kind)
    if where is not None:
        # Not write_json_atomic: it sorts the keys, and a remembered plan is shown in its own order.
        with contextlib.suppress(OSError), atomic_file(where / f"{key}.json", "w") as f:
            json.dump(entry, f)


def entry_key(*parts: str) -> str:
    """The key of an answer worked out from ``parts`` by this package's code (:func:`code_fingerprint`)."""
    digest = hashlib.sha256()
    for part in (*parts, code_fingerprint()):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def code_fingerprint() -> str:
    """The code an answer came from: the versions of Python, torch, transformers and qk_sniffer, and the
    size and time of every file of this package (its code, presets and support matrices)."""
    return json.dumps(
        [sys.version, *(_version(name) for name in ("torch", "transformers", "qk_sniffer")), package_files()]
    )


def package_files() -> list[tuple[str, int, int]]:
    found = []
    for directory, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith((".py", ".json", ".yaml", ".jsonl")):
                stat = os.stat(os.path.join(directory, name))
                found.append((os.path.join(directory, name), stat.st_size, stat.st_mtime_ns))
    for path in sorted(CONF_DIR.rglob("*.yaml")):  # the presets
        stat = path.stat()
        found.append((str(path), stat.st_size, stat.st_mtime_ns))
    return sorted(found)


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"
