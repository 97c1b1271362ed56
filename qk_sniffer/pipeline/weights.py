"""What a local checkpoint holds, as one digest: the model identity of a capture from a local dir.

A Hub model is named by its id and revision; a local dir only by its path, and the same path can hold
other weights tomorrow (a new ``save_pretrained`` over the old one). So a local checkpoint is identified by
its files' content: the sha256 of every weight, config and code file at the top of the dir. Files up to
``WHOLE_FILE_BYTES`` are hashed whole; larger ones by their size and one ``BLOCK`` of every ``STRIDE``
(the first and last included), so any change spanning a stride (a fine-tune, one layer's matrix) shows,
at a sixteenth of the reading. Digests are cached (``$QK_SNIFFER_CACHE``, see :mod:`.user_cache`)
by path, size, mtime, inode and ctime, so a rerun does not read the weights twice.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import suppress
from pathlib import Path
from typing import Any

from ..core.config import ModelConfig
from ..store.files import DamagedFile, read_json, write_json_atomic
from .user_cache import cache_root

# The files that decide what a checkpoint computes (tokenizer files decide the token ids, which the
# manifest's token-id hashes cover).
CONTENT = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.gguf", "*.h5", "*.msgpack", "*.py")
CONTENT_JSON = ("config.json", "*.index.json")
WHOLE_FILE_BYTES = 2 << 30
BLOCK = 1 << 20
STRIDE = 16 << 20


def local_checkpoint(model: ModelConfig) -> Path | None:
    """The dir ``model.name`` loads from, when it is a local dir (and the weights are not random)."""
    if not model.name or model.random_init:
        return None
    path = Path(model.name).expanduser()
    return path.resolve() if path.is_dir() else None


def checkpoint_digest(directory: Path) -> dict[str, Any]:
    """``{"sha256": digest of the whole checkpoint, "files": {name: sha256}, "sampled": [names]}``."""
    names = sorted(
        {p.name for pattern in (*CONTENT, *CONTENT_JSON) for p in directory.glob(pattern) if p.is_file()}
    )
    cache = _Cache()
    files = {name: cache.digest(directory / name) for name in names}
    cache.save()
    whole = hashlib.sha256("".join(f"{n}\0{d}\n" for n, d in files.items()).encode()).hexdigest()
    sampled = [n for n in names if (directory / n).stat().st_size > WHOLE_FILE_BYTES]
    return {"sha256": whole, "files": files, "sampled": sampled}


def file_digest(path: Path) -> str:
    """sha256 of the file, or of its size and sampled blocks when it is larger than WHOLE_FILE_BYTES."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= WHOLE_FILE_BYTES:
            for chunk in iter(lambda: f.read(BLOCK), b""):
                digest.update(chunk)
            return digest.hexdigest()
        digest.update(f"sampled {size} {BLOCK} {STRIDE}\n".encode())
        for offset in [*range(0, size, STRIDE), max(0, size - BLOCK)]:
            f.seek(offset)
            digest.update(f.read(BLOCK))
    return "sampled:" + digest.hexdigest()


def cache_file() -> Path | None:
    """The digest cache (see :mod:`.user_cache`); None when caching is off (every file is hashed)."""
    root = cache_root()
    return None if root is None else root / "checkpoint_digests.json"


class _Cache:
    """Digests by absolute path, valid while the file's size, mtime, inode and ctime are unchanged (a
    rewrite changes its ctime, whatever it does to the mtime). Only a cache: unreadable or unwritable, the
    files are hashed again."""

    def __init__(self) -> None:
        self.path = cache_file()
        try:
            data = read_json(self.path) if self.path is not None else {}
        except (OSError, DamagedFile):
            data = {}
        self.entries: dict[str, list[Any]] = data if isinstance(data, dict) else {}
        self.changed = False

    def digest(self, path: Path) -> str:
        stat = path.stat()
        key = [stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns]
        known = self.entries.get(str(path))
        if isinstance(known, list) and known[:-1] == key:
            return str(known[-1])
        digest = file_digest(path)
        self.entries[str(path)] = [*key, digest]
        self.changed = True
        return digest

    def save(self) -> None:
        if not self.changed or self.path is None:
            return
        # Forget files that are gone, so the cache does not grow with every deleted checkpoint.
        kept = {p: v for p, v in self.entries.items() if os.path.exists(p)}
        with suppress(OSError):
            write_json_atomic(self.path, kept)
