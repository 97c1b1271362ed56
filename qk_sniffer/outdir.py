"""The output directory is one model's dataset: claim it (or refuse without touching it), hold it while
writing, clean up after killed runs, and delete only files this tool made, only inside the directory.

Concurrency: every writing process registers a *run* (``.qk_sniffer/runs/<run>.lock``) and holds an
``flock`` on it for its whole life, so the kernel tells anyone else whether it is alive, even after a
SIGKILL. Part files of a dead run that no commit names are leftovers of a kill and are deleted. Changes to
existing commits (replace, compaction) and the card are serialised by ``.qk_sniffer/maintenance.lock``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .card import METADATA
from .errors import UserError
from .manifest import (
    Commit,
    Manifest,
    commit_path,
    recipe_difference,
    state_dir,
    write_commit,
    write_json_atomic,
)

log = logging.getLogger(__name__)

MODEL_FILE = "model.json"
CONFIG_DIR = re.compile(r"^l\d+h\d+[qk]$")


def model_identity(metadata: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs "the same model": its weights (name + revision) or, without a name, its shape."""
    model = metadata.get("model", {})
    identity = {
        "name": model.get("name") if not model.get("random_init") else None,
        "revision": model.get("revision"),
        "config_overrides": model.get("config_overrides") or {},
        "pre_rope": metadata.get("capture", {}).get("pre_rope", False),
    }
    if identity["name"] is None:
        identity["layout"] = metadata.get("layout")
        identity["seed"] = model.get("seed")
    return plain_json(identity)


def plain_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists): live and recorded values compare equal."""
    return json.loads(json.dumps(value, default=str))


def recorded_identity(root: Path) -> dict[str, Any] | None:
    """The identity recorded before the first row (a run killed before its card still has it)."""
    path = state_dir(root) / MODEL_FILE
    if path.exists():
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    meta_path = root / METADATA  # dirs written by the Python API, or before the manifest existed
    if meta_path.exists():
        return model_identity(json.loads(meta_path.read_text()))
    return None


def claim_output_dir(root: Path, metadata: dict[str, Any], mode: str) -> None:
    """Check ``root`` is new, empty, or already holds this model's capture. Writes and deletes nothing."""
    if root.exists() and not root.is_dir():
        raise UserError(f"output.dir={str(root)!r} exists and is not a directory")
    if root.exists() and any(root.iterdir()):
        old = recorded_identity(root)
        if old is None:
            raise UserError(
                f"output.dir={str(root)!r} is not empty and holds no qk-sniffer capture; choose an empty or "
                "new directory"
            )
        new = model_identity(metadata)
        if old != new:
            diff = ", ".join(
                f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
                for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k)
            )
            raise UserError(
                f"output.dir={str(root)!r} holds a capture of a different model or vector kind ({diff}); "
                "use another output.dir (one model per dir and branch)"
            )
    # Created by the first write, so a run that fails its checks leaves nothing behind; check we could.
    parent = root
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"output.dir={str(root)!r} cannot be created: {str(parent)!r} is not a directory")
    if not os.access(parent, os.W_OK):
        raise UserError(f"output.dir={str(root)!r} is not writable ({str(parent)!r} denies writes)")


def check_recipe(
    root: Path,
    manifest: Manifest,
    recipe: dict[str, Any],
    rid: str,
    configs: list[str],
    mode: str,
    *,
    place: str | None = None,
    held: str = "on disk",
    alternative: str = "output.dir",
) -> list[str]:
    """Refuse to mix rows of another recipe into a config (unless mode=replace). Returns the configs this
    run takes over from other recipes (only with mode=replace). ``place``/``held``/``alternative`` word the
    refusal when the rows are on a Hub branch rather than in the dir."""
    owners = manifest.recipes_by_config()
    taken = sorted(c for c in configs if owners.get(c, set()) - {rid})
    if taken and mode != "replace":
        other = sorted(owners[taken[0]] - {rid})[0]
        diff = recipe_difference(manifest.recipes.get(other, {}), recipe)
        shown = ", ".join(taken[:4]) + (f" and {len(taken) - 4} more" if len(taken) > 4 else "")
        raise UserError(
            f"{place or f'output.dir={str(root)!r}'}: configs {shown} already hold rows captured with a "
            f"different recipe ({held} -> this run: {'; '.join(diff) or 'recipe ' + other}). Use "
            "output.mode=replace to replace those configs (their old files are deleted once the new rows are "
            f"complete), or another {alternative}"
        )
    return taken


# --------------------------------------------------------------------------------------------- deletion


def safe_unlink(root: Path, rel: str) -> None:
    """Delete ``root/rel`` only if it is a file this tool names (a part file or our state) inside root."""
    path = (root / rel).resolve()
    base = root.resolve()
    if not path.is_relative_to(base) or path == base:
        raise RuntimeError(f"refusing to delete {str(path)!r}: outside output.dir {str(base)!r}")
    parts = path.relative_to(base).parts
    ours = (len(parts) == 2 and CONFIG_DIR.match(parts[0]) and parts[1].startswith("part-")) or (
        parts[0] == state_dir(base).name
    )
    if not ours:
        raise RuntimeError(f"refusing to delete {str(path)!r}: not a file qk_sniffer made")
    path.unlink(missing_ok=True)


def plan_deletion(root: Path, files: list[str], commits: list[tuple[str, str]]) -> Path:
    """Write the deletions a manifest change will need, before the change, so a crash can finish them."""
    path = state_dir(root) / "trash" / f"{uuid.uuid4().hex[:12]}.json"
    write_json_atomic(path, {"files": sorted(files), "commits": sorted(commits)})
    return path


def finish_deletions(root: Path) -> None:
    """Carry out planned deletions, never one the manifest still needs: a file a live commit names stays, and
    a commit file goes only once it is superseded or empty. Call with the maintenance lock held."""
    plans = sorted((state_dir(root) / "trash").glob("*.json"))
    if not plans:
        return
    manifest = Manifest(root)
    referenced = manifest.referenced()
    disposable = {(c.recipe, c.name) for c in manifest.superseded}
    disposable |= {(c.recipe, c.name) for c in manifest.commits if not c.configs}
    for plan in plans:
        todo = json.loads(plan.read_text())
        for rel in todo["files"]:
            if rel not in referenced:
                safe_unlink(root, rel)
        for recipe, name in todo["commits"]:
            if (recipe, name) in disposable:
                safe_unlink(root, str(commit_path(root, recipe, name).relative_to(root)))
        plan.unlink()


def drop_superseded(root: Path) -> None:
    """Finish a compaction another machine did (its commit arrived by a pull): the commits it supersedes
    and their files go, as the compacting run would have done here. Call with the maintenance lock held."""
    manifest = Manifest(root)
    if manifest.superseded:
        files = [p for c in manifest.superseded for p in c.paths()]
        plan_deletion(root, files, [(c.recipe, c.name) for c in manifest.superseded])
        finish_deletions(root)


def take_over(root: Path, rid: str, configs: list[str]) -> int:
    """mode=replace, once this recipe's rows are complete: drop ``configs`` from other recipes' commits and
    delete their files. Returns how many files went. Call with the maintenance lock held."""
    manifest = Manifest(root)
    targets = set(configs)
    victims = [c for c in manifest.commits if c.recipe != rid and c.configs & targets]
    if not victims:
        return 0
    files = [
        f"{config}/{f['name']}"
        for c in victims
        for config, fs in c.files.items()
        if config in targets
        for f in fs
    ]
    plan_deletion(root, files, [(c.recipe, c.name) for c in victims if not c.without(targets).configs])
    for commit in victims:
        write_commit(root, commit.without(targets))
    finish_deletions(root)
    return len(files)


# ------------------------------------------------------------------------------------------ run leases


@dataclass
class RunInfo:
    run: str
    recipe: str
    shard: tuple[int, int]  # (index, count)
    configs: list[str]


class RunLease:
    """This process's registration as a writer of ``root``; hold it (``with``) while writing."""

    def __init__(self, root: Path, info: RunInfo) -> None:
        self.root = root
        self.info = info
        self._file: IO[str] | None = None

    def __enter__(self) -> RunLease:
        runs = state_dir(self.root) / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        # Lock under a temporary name, then rename: nobody can see the run before it is locked.
        tmp = runs / f".{self.info.run}.lock.tmp"
        f = open(tmp, "w")  # noqa: SIM115 - held open for the lease's life
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
        os.replace(tmp, runs / f"{self.info.run}.lock")
        self._file = f
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if self._file is not None:
            # A run that ended cleanly committed everything it wrote: unregister it. After a failure keep
            # the registration, so whoever comes next removes the files its last, uncommitted flush left.
            if exc_type is None:
                (state_dir(self.root) / "runs" / f"{self.info.run}.lock").unlink(missing_ok=True)
            self._file.close()
            self._file = None


def _registered_runs(root: Path, lock: int) -> Iterator[tuple[Path, bool]]:
    """Each registered run's lock file and whether its process is alive (still holds the lock). For a dead
    run, the lock taken here (``lock``: shared to look, exclusive to clean up) is held until the caller
    moves on to the next run."""
    for path in sorted((state_dir(root) / "runs").glob("*.lock")):
        with _open_existing(path) as f:
            if f is None:
                continue
            try:
                fcntl.flock(f.fileno(), lock | fcntl.LOCK_NB)
                alive = False
            except BlockingIOError:
                alive = True
            yield path, alive


def live_runs(root: Path, exclude: str | None = None) -> list[RunInfo]:
    """Runs whose process still holds its lock."""
    out = []
    for path, alive in _registered_runs(root, fcntl.LOCK_SH):
        if alive and path.stem != exclude:
            data = json.loads(path.read_text())
            out.append(RunInfo(data["run"], data["recipe"], tuple(data["shard"]), data["configs"]))
    return out


def clean_dead_runs(root: Path) -> int:
    """Delete the part files (and temp files) of killed runs that no commit names; unregister those runs.
    Returns how many files went. Files of live runs, files any commit names (also one pulled from the Hub
    whose other parts are missing), and files no run of this machine registered (pulled from the Hub,
    written by the Python API) are never touched: a run's own files carry its id as their third field."""
    removed = 0
    named = Manifest(root).named()
    for path, alive in _registered_runs(root, fcntl.LOCK_EX):
        if alive:
            continue
        run = path.stem
        for part in sorted(root.glob(f"l*h*/part-*-{run}-*")):
            rel = part.relative_to(root).as_posix()
            if CONFIG_DIR.match(part.parent.name) and part_run(part.name) == run and rel not in named:
                safe_unlink(root, rel)
                removed += 1
        path.unlink(missing_ok=True)
    for tmp in sorted(state_dir(root).glob("commits/*/*.json.tmp")):
        safe_unlink(root, tmp.relative_to(root).as_posix())
    if removed:
        log.warning(
            "removed %d part files left by an interrupted run (their rows were never committed)", removed
        )
    return removed


def part_run(name: str) -> str | None:
    """The run that wrote a part file: ``part-<shard>-<run>-<seq>.parquet`` or ``part-compact-<run>-...``."""
    fields = name.split("-")
    return fields[2] if len(fields) > 3 and fields[0] == "part" else None


@contextmanager
def _open_existing(path: Path) -> Iterator[IO[str] | None]:
    try:
        f = open(path)  # noqa: SIM115
    except FileNotFoundError:
        yield None
        return
    try:
        yield f
    finally:
        f.close()


@contextmanager
def maintenance_lock(root: Path) -> Iterator[None]:
    """Serialises changes to existing commits, the metadata and the card across processes."""
    state_dir(root).mkdir(parents=True, exist_ok=True)
    with open(state_dir(root) / "maintenance.lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def record_model(root: Path, metadata: dict[str, Any]) -> None:
    """Record the model identity before the first row, so a dir is claimed even if the run dies early."""
    path = state_dir(root) / MODEL_FILE
    if not path.exists():
        write_json_atomic(path, model_identity(metadata))


def check_no_overlap(root: Path, info: RunInfo) -> None:
    """Two live processes on the same examples of one recipe would write rows twice: refuse."""
    for other in live_runs(root, exclude=info.run):
        if other.recipe != info.recipe:
            continue
        same_split = other.shard[1] == info.shard[1]
        if not same_split or other.shard[0] == info.shard[0]:
            raise UserError(
                f"output.dir={str(root)!r}: another process (run {other.run}) is capturing "
                f"dataset.shard_index={other.shard[0]} of dataset.num_shards={other.shard[1]} with the same "
                "recipe; runs sharing a dir must use the same num_shards and distinct shard_index values"
            )


def commits_on_disk(root: Path, commit: Commit) -> bool:
    """Whether every file a commit names exists (used by tests and the compaction check)."""
    return all((root / p).exists() for p in commit.paths())
