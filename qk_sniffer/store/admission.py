"""Who may add rows to a dir: one recipe per config (unless output.mode=replace), no two live processes on
the same examples, no example written twice. Checked under the maintenance lock as part of registering."""

from __future__ import annotations

from typing import Any

from .base import StoreBase, StoreError, shown
from .leases import RunInfo, live_runs
from .manifest import Manifest, recipe_difference


class Admission(StoreBase):
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
                f"{self.where}: another process (run {other.run}) is writing configs {shown(busy)} with a "
                "different recipe right now; run this command again once it has ended"
            )
        if mode != "replace":
            other_rid = sorted(owners[taken[0]] - {rid})[0]
            # The manifest read here holds every recipe file in the dir (a live run's too).
            diff = recipe_difference(manifest.recipes.get(other_rid, {}), recipe)
            now = " (being written right now)" if busy else ""
            raise StoreError(
                f"{place or self.where}: configs {shown(taken)} already hold rows captured with a "
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
