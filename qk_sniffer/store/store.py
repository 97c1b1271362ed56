"""The one object that owns an output dir: claiming it, registering writers, commits, verification,
repair, deletions, and the one view of what the dataset holds. Each responsibility lives in its own
module (:mod:`.claim`, :mod:`.admission`, :mod:`.integrity`, :mod:`.deletions`); :class:`Store` is them
together, plus registration, commits and the view.

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

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .admission import Admission
from .deletions import Deletions
from .files import write_json_atomic
from .integrity import Damage, Integrity
from .leases import RunInfo, RunLease
from .manifest import Commit, Manifest, PartFile, plain_json, write_commit
from .writer import ExampleRecord, OnDurable


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


class Store(Integrity, Admission, Deletions):
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

    def committer(self, rid: str, run: str, tag: str) -> OnDurable:
        """The writer's ``on_durable``: record a flush's examples and files as one commit."""

        def commit(seq: int, examples: list[ExampleRecord], parts: list[PartFile]) -> None:
            groups: dict[tuple[str, ...], list[list[Any]]] = {}
            for index, example_id, tokens, digest, configs in examples:
                groups.setdefault(tuple(configs), []).append([index, example_id, tokens, digest])
            groups_json = [{"configs": list(c), "examples": e} for c, e in groups.items() if c]
            write_commit(self.paths, Commit(f"{tag}-{run}-{seq:05d}", rid, run, parts, groups_json))

        return commit

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
