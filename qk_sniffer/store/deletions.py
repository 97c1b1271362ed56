"""Files leaving the dataset and then the disk: configs taken over by another recipe (output.mode=replace),
and the garbage nothing needs any more. A file leaves the dataset (its commit is dropped, superseded or
rewritten) first; the caller rewrites the card; only then is it deleted (:meth:`collect_garbage`)."""

from __future__ import annotations

import logging
from contextlib import suppress
from pathlib import Path

from ..core.naming import CONFIG_NAME
from .base import StoreBase
from .layout import TMP_SUFFIX, part_run
from .leases import live_run_ids, registered_runs
from .manifest import write_commit

log = logging.getLogger(__name__)


class Deletions(StoreBase):
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
