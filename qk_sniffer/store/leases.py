"""Who is writing a dir right now: run leases and the maintenance lock.

Every writing process registers a *run* (``.qk_sniffer/runs/<run>.lock``) and holds an ``flock`` on it for
its whole life, so the kernel tells anyone else whether it is alive, even after a SIGKILL. Changes to
existing commits (repair, replace, compaction, garbage collection) and to the card and metadata are
serialised by ``.qk_sniffer/maintenance.lock``; a run registers itself under that lock too, so the recipe
check and the registration are one step for every other process.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .layout import Paths


@dataclass
class RunInfo:
    run: str
    recipe: str
    shard: tuple[int, int]  # (index, count)
    configs: list[str]


class RunLease:
    """This process's registration as a writer of a dir; hold it (``with``) while writing."""

    def __init__(self, paths: Paths, info: RunInfo) -> None:
        self.paths = paths
        self.info = info
        self._file: IO[str] | None = None

    def __enter__(self) -> RunLease:
        self.paths.runs.mkdir(parents=True, exist_ok=True)
        # Lock under a temporary name, then rename: nobody can see the run before it is locked.
        final = self.paths.run_lock(self.info.run)
        tmp = final.with_name(f".{final.name}.tmp")
        f = open(tmp, "w")  # noqa: SIM115 - held open for the lease's life
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            json.dump(
                {
                    "run": self.info.run,
                    "recipe": self.info.recipe,
                    "shard": list(self.info.shard),
                    "configs": self.info.configs,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                },
                f,
            )
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            f.close()
            tmp.unlink(missing_ok=True)
            raise
        self._file = f
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if self._file is not None:
            # A run that ended cleanly committed everything it wrote: unregister it. After a failure keep
            # the registration; whoever comes next sees a dead run and collects what it left.
            if exc_type is None:
                self.paths.run_lock(self.info.run).unlink(missing_ok=True)
            self._file.close()
            self._file = None


def registered_runs(paths: Paths) -> Iterator[tuple[Path, RunInfo | None, bool]]:
    """Each registered run's lock file, what it says (None when unreadable) and whether its process is
    alive (still holds the lock)."""
    for path in sorted(paths.runs.glob("*.lock")):
        try:
            f = open(path)  # noqa: SIM115
        except FileNotFoundError:
            continue
        with f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                alive = False
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            except BlockingIOError:
                alive = True
            try:
                data = json.loads(f.read())
                info: RunInfo | None = RunInfo(
                    str(data["run"]), str(data["recipe"]), tuple(data["shard"]), list(data["configs"])
                )
            except (ValueError, KeyError, TypeError):
                info = None  # a lease written by a process killed mid-write (or damaged by hand)
        yield path, info, alive


def live_runs(paths: Paths, exclude: str | None = None) -> list[RunInfo]:
    """Runs whose process still holds its lock."""
    return [
        info
        for path, info, alive in registered_runs(paths)
        if alive and info is not None and path.stem != exclude
    ]


def live_run_ids(paths: Paths) -> set[str]:
    return {path.stem for path, _, alive in registered_runs(paths) if alive}


_held = threading.local()


@contextmanager
def maintenance_lock(paths: Paths) -> Iterator[None]:
    """Serialises changes to existing commits, the metadata and the card across processes. Re-entrant
    within a thread (flock on a second descriptor of the same file would wait for ourselves)."""
    held: dict[str, int] = _held.__dict__.setdefault("depth", {})
    key = str(paths.lock)
    if held.get(key):
        held[key] += 1
        try:
            yield
        finally:
            held[key] -= 1
        return
    paths.state.mkdir(parents=True, exist_ok=True)
    with open(paths.lock, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        held[key] = 1
        try:
            yield
        finally:
            held[key] = 0
            with suppress(OSError):
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
