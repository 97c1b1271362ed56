"""Whether the files the dataset relies on are what their commits recorded, and dropping the commits that
are not (so the next run captures their examples again, and nothing else).

Every committed part file is hashed (sha256) on every check. ``verified.json`` caches digests by size,
mtime, inode and ctime, but only ``fast=True`` (``python -m qk_sniffer.verify fast=true``) trusts it, and
says how many files it did not read: a flipped bit that keeps a file's size and times is found only by
reading the file.
"""

from __future__ import annotations

import logging
import os
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq

from .base import StoreBase
from .claim import ClaimChecks
from .files import DamagedFile, read_json, sha256_of, write_json_atomic
from .manifest import PartFile, model_identity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Damage:
    """A file the manifest relies on that is missing, damaged or unreadable."""

    path: str  # relative to the dir
    problem: str
    commit: str | None = None  # "<recipe>/<name>" of the commit it breaks, if any
    examples: int = 0

    def line(self) -> str:
        lost = f"; commit {self.commit} is dropped ({self.examples} examples)" if self.commit else ""
        return f"{self.path}: {self.problem}{lost}"


@dataclass
class Check:
    """What a check found, and how it knows: files it read and hashed, files it took from the cache."""

    damage: list[Damage] = field(default_factory=list)
    hashed: int = 0
    cached: int = 0


def file_key(stat: os.stat_result) -> list[int]:
    """What must be unchanged for a digest computed earlier to stand for the file now."""
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns]


class Integrity(ClaimChecks, StoreBase):
    def check_files(self, *, fast: bool = False) -> Check:
        """Every problem with the files the dataset relies on. Reads only (but caches the digests it
        computed). ``fast``: trust the on-disk digest cache for files whose size and times are unchanged."""
        manifest = self.manifest()
        damaged = list(manifest.damaged)
        if self.claimed():
            try:
                read_json(self.paths.model)
            except DamagedFile:
                damaged.insert(0, self.paths.model)
        check = Check([Damage(self.paths.rel(p), "cannot be read (not valid JSON)") for p in damaged])
        cache = self._hash_cache()
        trusted = {**cache, **self.hashed} if fast else self.hashed
        for commit in [*manifest.commits, *manifest.untrusted]:
            for part in commit.parts:
                problem = self._check_part(part, trusted, check)
                if problem:
                    examples = sum(len(g["examples"]) for g in commit.groups)
                    check.damage.append(Damage(part.rel, problem, f"{commit.recipe}/{commit.name}", examples))
                    break
        if any(cache.get(k) != v for k, v in self.hashed.items()):
            with suppress(OSError):  # only a cache: a check that is not fast hashes again anyway
                write_json_atomic(self.paths.verified, {**cache, **self.hashed})
        return check

    def verify(self, *, fast: bool = False) -> list[Damage]:
        return self.check_files(fast=fast).damage

    def _check_part(self, part: PartFile, trusted: dict[str, list[Any]], check: Check) -> str | None:
        path = self.root / part.rel
        if path.is_symlink() or not path.is_file():
            return "missing"
        stat = path.stat()
        if part.bytes is not None and stat.st_size != part.bytes:
            return f"damaged ({stat.st_size} bytes, the commit recorded {part.bytes})"
        if part.sha256 is None:  # a commit from before hashes were recorded: the row count must match
            try:
                rows = pq.ParquetFile(path).metadata.num_rows
            except Exception as exc:
                return f"damaged (not a readable Parquet file: {type(exc).__name__})"
            return None if rows == part.rows else f"damaged ({rows} rows, the commit recorded {part.rows})"
        key = file_key(stat)
        known = trusted.get(part.rel)
        if known and known[:-1] == key:
            digest = known[-1]
            check.cached += part.rel not in self.hashed
        else:
            digest = sha256_of(path)
            check.hashed += 1
        self.hashed[part.rel] = [*key, digest]
        return None if digest == part.sha256 else "damaged (its content does not match the recorded sha256)"

    def _hash_cache(self) -> dict[str, list[Any]]:
        try:
            data = read_json(self.paths.verified)
        except (FileNotFoundError, DamagedFile):
            return {}
        return data if isinstance(data, dict) else {}

    def repair(self) -> list[Damage]:
        """Drop every commit whose files are missing or damaged, and unreadable state files, so the next
        run captures those examples again. One warning line names each file. Call under the lock."""
        with self.maintenance():
            damage = self.verify()
            for item in damage:
                if item.commit:
                    rid, name = item.commit.split("/")
                    self._unlink(self.paths.commit(rid, name))
                elif self.root / item.path == self.paths.model:
                    if not self._restore_model():
                        log.warning(
                            "%s: %s; it cannot be rebuilt (no readable metadata)", self.where, item.line()
                        )
                        continue
                else:
                    self._unlink(self.root / item.path)
                log.warning("%s: %s", self.where, item.line())
        return damage

    def _restore_model(self) -> bool:
        """Rebuild a damaged ``model.json`` from the model the dir's metadata records (never delete it:
        without it the dir could not be claimed again). Returns whether it was rebuilt."""
        metadata = self.recorded_metadata()
        if not metadata.get("model"):
            return False
        write_json_atomic(self.paths.model, model_identity(metadata))
        return True
