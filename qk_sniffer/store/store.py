"""The one object that owns an output dir: claiming it, registering writers, commits, verification,
repair, deletions, and the one view of what the dataset holds.

Invariants (kept under test in tests/integration/test_store_faults.py):

- The dataset is exactly the committed files: a part file is part of the dataset only while a trusted,
  live commit names it (:meth:`Store.view`). The card lists those files by name, so ``load_dataset`` never
  sees another file, and publish uploads no other part file.
- A commit is trusted only while every file it names is on disk with its recorded size and sha256.
  :meth:`Store.repair` drops a commit that is not (one line naming the file), so the next run captures its
  examples again, and nothing else.
- Every step is crash-safe: files appear under their final name complete (temp, fsync, rename), a commit
  appears only after its files, and a file leaves the dataset (its commit is dropped, superseded or
  rewritten) before it is deleted. A reader sees the old state or the new one, never both.
- The store writes, overwrites and deletes only files it made (names it owns), only inside the dir, and
  refuses a dir it cannot account for (:meth:`Store.check_claim`) without touching it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ..core.errors import UserError
from ..core.naming import CONFIG_NAME
from .files import DamagedFile, read_json, sha256_of, write_json_atomic
from .layout import FIGURE_PATH, PART_NAME, STATE, TMP_SUFFIX, TOP_LEVEL, Paths, part_run
from .leases import RunInfo, RunLease, live_run_ids, live_runs, maintenance_lock, registered_runs
from .manifest import (
    Commit,
    Manifest,
    PartFile,
    model_identity,
    plain_json,
    recipe_difference,
    write_commit,
)
from .writer import ExampleRecord, OnDurable

log = logging.getLogger(__name__)


class StoreError(UserError):
    """The dir cannot be used as asked; the message names the file or key and what to do."""


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
class DatasetView:
    """What the dataset holds: each config's committed part files, from live trusted commits."""

    files: dict[str, list[PartFile]] = field(default_factory=dict)
    recipe_of: dict[str, str] = field(default_factory=dict)  # part file (relative path) -> its recipe

    @property
    def configs(self) -> list[str]:
        return sorted(self.files)

    def rows(self, config: str) -> int:
        return sum(p.rows for p in self.files.get(config, []))

    @property
    def total_rows(self) -> int:
        return sum(self.rows(c) for c in self.files)

    def paths(self) -> list[str]:
        return sorted(p.rel for parts in self.files.values() for p in parts)


@dataclass
class Registration:
    """What registering a run settled: the configs it takes over (output.mode=replace) and the damage that
    was repaired first."""

    taken: list[str]
    repaired: list[Damage]


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths = Paths(root)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    @property
    def where(self) -> str:
        return f"output.dir={str(self.root)!r}"

    # ------------------------------------------------------------------------------------ what the dir is

    def claimed(self) -> bool:
        return self.paths.model.is_file()

    def identity(self) -> dict[str, Any] | None:
        """The model identity recorded before the first row; None for a dir not claimed yet."""
        if not self.claimed():
            return None
        try:
            data = read_json(self.paths.model)
        except DamagedFile:
            raise StoreError(
                f"{self.where}: {STATE}/model.json is damaged (not valid JSON), so the dir's model cannot be "
                f"checked; rebuild it from the dir's metadata with: python -m qk_sniffer.verify "
                f"output.dir={self.root} repair=true"
            ) from None
        return data if isinstance(data, dict) else {}

    def recorded_metadata(self) -> dict[str, Any]:
        """The dir's ``qk_sniffer.json``; {} when there is none or it cannot be read (the next run or push
        rewrites it whole, from the manifest)."""
        try:
            data = read_json(self.paths.metadata)
        except (FileNotFoundError, DamagedFile):
            return {}
        return data if isinstance(data, dict) else {}

    def check_claim(self, identity: dict[str, Any]) -> None:
        """Refuse a dir this tool cannot account for, or one that holds another model. Writes nothing."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise StoreError(f"{self.where} exists and is not a directory")
        if root.is_dir() and self._holds_anything():
            self.check_accountable()
            old = self.identity()
            new = plain_json(identity)
            if old != new:
                assert old is not None
                diff = ", ".join(
                    f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
                    for k in sorted(set(old) | set(new))
                    if old.get(k) != new.get(k)
                )
                raise StoreError(
                    f"{self.where} holds a capture of a different model or vector kind ({diff}); "
                    "use another output.dir (one model per dir and branch)"
                )
        # Created by the first write, so a run that fails its checks leaves nothing behind; check we could.
        parent = root
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise StoreError(f"{self.where} cannot be created: {str(parent)!r} is not a directory")
        if not os.access(parent, os.W_OK):
            raise StoreError(f"{self.where} is not writable ({str(parent)!r} denies writes)")

    def _holds_anything(self) -> bool:
        """Anything but the lock and leases a registration in progress makes (which hold no data)."""
        if any(entry.name != STATE for entry in self.root.iterdir()):
            return True
        state = self.paths.state
        return state.exists() and any(e.name not in ("maintenance.lock", "runs") for e in state.iterdir())

    def check_accountable(self) -> None:
        """A non-empty dir must be one this tool claimed, hold nothing of ours as a symlink, and hold no
        foreign file where the tool writes."""
        if not self.claimed():
            if self.paths.state.exists():
                raise StoreError(
                    f"{self.where}: its manifest is incomplete ({STATE}/model.json is missing), so its rows "
                    "cannot be accounted for; restore .qk_sniffer/ from a copy, or capture into a new "
                    "output.dir"
                )
            if self.paths.metadata.exists():
                raise StoreError(
                    f"{self.where} holds {self.paths.metadata.name} but no manifest ({STATE}/): its rows "
                    "cannot be accounted for, so nothing is added to it; capture into a new output.dir "
                    "(or restore .qk_sniffer/ from a copy)"
                )
            raise StoreError(
                f"{self.where} is not empty and holds no qk-sniffer capture; choose an empty or new directory"
            )
        problems = self.foreign_entries()
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise StoreError(f"{self.where}: {problems[0]}{more}; nothing was changed")

    def foreign_entries(self) -> list[str]:
        """Where the tool writes, anything it did not make: symlinks (which could lead out of the dir) and
        files of other names. Each entry is one phrase naming the path and what to do."""
        out = []
        for entry in sorted(self.root.iterdir()):
            name = entry.name
            ours = name in TOP_LEVEL or CONFIG_NAME.match(name)
            if ours and entry.is_symlink():
                out.append(
                    f"{name} is a symbolic link (to {os.readlink(entry)!r}); qk_sniffer writes only real "
                    "files inside output.dir: replace the link with the directory's contents"
                )
                continue
            if CONFIG_NAME.match(name) and entry.is_dir():
                for item in sorted(entry.iterdir()):
                    if item.is_symlink() or not item.is_file() or not PART_NAME.match(name_of(item)):
                        out.append(f"{name}/{item.name} was not made by qk_sniffer: move it out of the dir")
            elif name == self.paths.figures.name and entry.is_dir():
                for item in sorted(entry.iterdir()):
                    if item.is_symlink() or not FIGURE_PATH.match(f"{name}/{item.name}"):
                        out.append(f"{name}/{item.name} was not made by qk_sniffer: move it out of the dir")
            elif ours and name in (self.paths.card.name, self.paths.metadata.name) and not entry.is_file():
                out.append(f"{name} is not a file: move it out of the dir")
        if self.paths.state.is_dir():
            for item in sorted(self.paths.state.rglob("*")):
                if item.is_symlink():
                    out.append(f"{self.paths.rel(item)} is a symbolic link: remove it")
        return out

    # ---------------------------------------------------------------------------------- registration

    @contextmanager
    def maintenance(self) -> Iterator[None]:
        with maintenance_lock(self.paths):
            yield

    @contextmanager
    def registered(
        self, info: RunInfo, recipe: dict[str, Any], identity: dict[str, Any], mode: str
    ) -> Iterator[Registration]:
        """Claim the dir, repair damage, check the recipe and register this run as a writer, as one step
        under the maintenance lock: two runs starting at once cannot both pass a check the other breaks."""
        self.check_claim(identity)
        lease = RunLease(self.paths, info)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with self.maintenance():
                self.check_claim(identity)  # again, now that nobody else can change the dir
                repaired = self.repair() if self.claimed() else []
                taken = self.check_recipe(recipe, info, mode)
                self.check_no_overlap(info)
                # Only a run that passed every check leaves a trace: its model, its recipe, its lease.
                if not self.paths.model.exists():
                    write_json_atomic(self.paths.model, plain_json(identity))
                if not self.paths.recipe(info.recipe).is_file():
                    write_json_atomic(self.paths.recipe(info.recipe), recipe)
                lease.__enter__()
        except OSError as exc:
            raise self.write_error("its manifest (.qk_sniffer/)", exc) from None
        try:
            yield Registration(taken, repaired)
        except BaseException as exc:
            lease.__exit__(type(exc), exc, None)
            raise
        lease.__exit__(None, None, None)

    def lease(self, info: RunInfo) -> RunLease:
        """A lease for a process that writes files but captures nothing (compaction)."""
        return RunLease(self.paths, info)

    def write_error(self, what: str, exc: OSError, *, committed: bool = False) -> StoreError:
        kept = "the rows already committed are kept" if committed else "nothing of this run is claimed"
        return StoreError(
            f"{self.where}: cannot write {what}: {exc.strerror or exc} (errno {exc.errno}); {kept}. Free "
            "space or fix permissions, then run the same command again"
        )

    def check_recipe(
        self,
        recipe: dict[str, Any],
        info: RunInfo,
        mode: str,
        *,
        manifest: Manifest | None = None,
        place: str | None = None,
        held: str = "on disk",
        alternative: str = "output.dir",
    ) -> list[str]:
        """Refuse to mix rows of another recipe into a config (unless mode=replace), whether they are
        committed or being written right now by another live run. Returns the configs this run takes over
        from other recipes (only with mode=replace)."""
        manifest = manifest or Manifest(self.root)
        rid = info.recipe
        owners = {c: set(r) for c, r in manifest.recipes_by_config().items()}
        writing: dict[str, RunInfo] = {}
        for other in live_runs(self.paths, exclude=info.run):
            if other.recipe not in (rid, "compact"):
                for config in other.configs:
                    owners.setdefault(config, set()).add(other.recipe)
                    writing[config] = other
        taken = sorted(c for c in info.configs if owners.get(c, set()) - {rid})
        if not taken:
            return []
        busy = [c for c in taken if c in writing]
        if busy and mode == "replace":
            other = writing[busy[0]]
            raise StoreError(
                f"{self.where}: another process (run {other.run}) is writing configs {_shown(busy)} with a "
                "different recipe right now; run this command again once it has ended"
            )
        if mode != "replace":
            other_rid = sorted(owners[taken[0]] - {rid})[0]
            # The manifest read here holds every recipe file in the dir (a live run's too).
            diff = recipe_difference(manifest.recipes.get(other_rid, {}), recipe)
            now = " (being written right now)" if busy else ""
            raise StoreError(
                f"{place or self.where}: configs {_shown(taken)} already hold rows captured with a "
                f"different recipe{now} ({held} -> this run: {'; '.join(diff) or 'recipe ' + other_rid}). "
                "Use output.mode=replace to replace those configs (their old files are deleted once the "
                f"new rows are complete), or another {alternative}"
            )
        return taken

    def check_no_overlap(self, info: RunInfo) -> None:
        """Two live processes on the same examples of one recipe would write rows twice: refuse."""
        for other in live_runs(self.paths, exclude=info.run):
            if other.recipe != info.recipe:
                continue
            same_split = other.shard[1] == info.shard[1]
            if not same_split or other.shard[0] == info.shard[0]:
                raise StoreError(
                    f"{self.where}: another process (run {other.run}) is capturing "
                    f"dataset.shard_index={other.shard[0]} of dataset.num_shards={other.shard[1]} with the "
                    "same recipe; runs sharing a dir must use the same num_shards and distinct shard_index "
                    "values"
                )

    # --------------------------------------------------------------------------------------- commits

    def committer(self, rid: str, run: str, tag: str) -> OnDurable:
        """The writer's ``on_durable``: record a flush's examples and files as one commit."""

        def commit(seq: int, examples: list[ExampleRecord], parts: list[PartFile]) -> None:
            groups: dict[tuple[str, ...], list[list[int]]] = {}
            for index, example_id, tokens, configs in examples:
                groups.setdefault(tuple(configs), []).append([index, example_id, tokens])
            groups_json = [{"configs": list(c), "examples": e} for c, e in groups.items() if c]
            write_commit(self.paths, Commit(f"{tag}-{run}-{seq:05d}", rid, run, parts, groups_json))

        return commit

    def manifest(self) -> Manifest:
        return Manifest(self.root)

    def view(self, remote: Collection[str] = ()) -> DatasetView:
        """The dataset: every config's files named by a live trusted commit. ``remote``: paths present on
        the Hub branch a partial download came from (a commit naming other configs' files there is still
        trusted)."""
        view = DatasetView()
        for commit in Manifest(self.root, remote=remote).commits:
            for part in commit.parts:
                view.files.setdefault(part.config, []).append(part)
                view.recipe_of[part.rel] = commit.recipe
        for parts in view.files.values():
            parts.sort(key=lambda p: p.name)
        return view

    # ------------------------------------------------------------------------------- verification

    def verify(self) -> list[Damage]:
        """Every problem with the files the dataset relies on. Reads only (but caches hashes it checked)."""
        manifest = self.manifest()
        damaged = list(manifest.damaged)
        if self.claimed():
            try:
                read_json(self.paths.model)
            except DamagedFile:
                damaged.insert(0, self.paths.model)
        damage = [Damage(self.paths.rel(p), "cannot be read (not valid JSON)") for p in damaged]
        cache = self._hash_cache()
        checked: dict[str, list[Any]] = {}
        for commit in [*manifest.commits, *manifest.untrusted]:
            for part in commit.parts:
                problem = self._check_part(part, cache, checked)
                if problem:
                    examples = sum(len(g["examples"]) for g in commit.groups)
                    damage.append(Damage(part.rel, problem, f"{commit.recipe}/{commit.name}", examples))
                    break
        if any(cache.get(k) != v for k, v in checked.items()):
            with suppress(OSError):  # only a cache: the next check hashes again
                write_json_atomic(self.paths.verified, {**cache, **checked})
        return damage

    def _check_part(
        self, part: PartFile, cache: dict[str, list[Any]], checked: dict[str, list[Any]]
    ) -> str | None:
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
        key = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        known = cache.get(part.rel)
        digest = known[3] if known and known[:3] == key else sha256_of(path)
        checked[part.rel] = [*key, digest]
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

    # ------------------------------------------------------------------------------------ deletions

    def take_over(self, rid: str, configs: list[str]) -> int:
        """mode=replace, once this recipe's rows are complete: drop ``configs`` from other recipes'
        commits. Their files leave the dataset now; :meth:`collect_garbage` deletes them. Returns how many
        files were dropped."""
        targets = set(configs)
        dropped = 0
        with self.maintenance():
            for commit in self.manifest().commits:
                if commit.recipe == rid or not commit.configs & targets:
                    continue
                rest = commit.without(targets)
                dropped += len(commit.parts) - len(rest.parts)
                if rest.configs:
                    write_commit(self.paths, rest)
                else:
                    self._unlink(self.paths.commit(commit.recipe, commit.name))
        return dropped

    def garbage(self) -> list[Path]:
        """Files of ours that nothing needs: part files (and temp files) no live commit names whose run is
        not alive, superseded commits, temp state files, and the leases of dead runs."""
        manifest = self.manifest()
        alive = live_run_ids(self.paths)
        needed = manifest.referenced()
        out: list[Path] = []
        for directory in sorted(self.root.glob("l*h*[qk]")):
            if not CONFIG_NAME.match(directory.name) or not directory.is_dir() or directory.is_symlink():
                continue
            for item in sorted(directory.iterdir()):
                run = part_run(item.name)
                if run is None or run in alive or item.is_symlink():
                    continue
                if item.name.endswith(TMP_SUFFIX) or self.paths.rel(item) not in needed:
                    out.append(item)
        out += [self.paths.commit(c.recipe, c.name) for c in manifest.superseded]
        for tmp in sorted(self.paths.commits.glob(f"*/*.json{TMP_SUFFIX}")):
            fields = tmp.name.split("-")
            if len(fields) < 3 or fields[1] not in alive:
                out.append(tmp)
        out += sorted(self.paths.recipes.glob(f"*{TMP_SUFFIX}"))
        for path, _, is_alive in registered_runs(self.paths):
            if not is_alive:
                out.append(path)
        return out

    def collect_garbage(self) -> int:
        """Delete :meth:`garbage`. Call only once the card lists no file that is about to go (the caller
        rewrites it first). Returns how many part files went."""
        removed = 0
        with self.maintenance():
            for path in self.garbage():
                self._unlink(path)
                removed += path.name.startswith("part-") and not path.name.endswith(TMP_SUFFIX)
            for directory in self.root.glob("l*h*[qk]"):  # a config left with no file is no config
                if CONFIG_NAME.match(directory.name) and directory.is_dir() and not directory.is_symlink():
                    with suppress(OSError):
                        directory.rmdir()  # only succeeds when empty
        if removed:
            log.info("%s: removed %d part files that no commit names", self.where, removed)
        return removed

    def _unlink(self, path: Path) -> None:
        """Delete a file only if it is one this tool names, inside the dir (never follows a symlink out)."""
        base = self.root.resolve()
        target = path.parent.resolve() / path.name
        if not target.is_relative_to(base) or target == base:
            raise RuntimeError(f"refusing to delete {str(target)!r}: outside {self.where}")
        parts = target.relative_to(base).parts
        ours = (len(parts) == 2 and CONFIG_NAME.match(parts[0]) and part_run(parts[1])) or parts[0] == STATE
        if not ours:
            raise RuntimeError(f"refusing to delete {str(target)!r}: not a file qk_sniffer made")
        target.unlink(missing_ok=True)

    def new_examples_check(self, rid: str, configs: list[str], example_ids: set[int]) -> None:
        """Refuse rows for (config, example id) pairs the dir already holds under this recipe."""
        for commit in self.manifest().of_recipe(rid):
            for config in configs:
                repeated = commit.example_ids(config) & example_ids
                if repeated:
                    raise StoreError(
                        f"{self.where} already holds {config} rows of example_id {min(repeated)} "
                        "captured with the same recipe; writing them again would repeat rows. Write to "
                        "another dir, or pass other example_ids"
                    )


def name_of(path: Path) -> str:
    """A part file's name without the temporary suffix a write in flight has."""
    return path.name.removesuffix(TMP_SUFFIX)


def _shown(configs: list[str]) -> str:
    return ", ".join(configs[:4]) + (f" and {len(configs) - 4} more" if len(configs) > 4 else "")
