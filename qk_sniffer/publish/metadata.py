"""The run's metadata (``qk_sniffer.json``): what the card, later runs and the Hub push need to know.

Built from the config before capture (:mod:`.run_metadata`), completed with whole-dir totals from the
manifest after it (:func:`final_metadata`). It never holds secrets: tokens never reach the config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..inputs.stats import DataStats
from ..store import Store
from ..store.files import atomic_file
from ..store.layout import METADATA
from ..store.manifest import recipe_difference, recipe_id, recipe_of


def write_metadata(out_dir: Path, metadata: dict[str, Any]) -> None:
    with atomic_file(out_dir / METADATA, "w") as f:
        f.write(json.dumps(metadata, indent=2, sort_keys=True, default=str))


def refreshed_metadata(store: Store, metadata: dict[str, Any]) -> dict[str, Any]:
    """The dir's recorded metadata with totals and recipes recomputed from the manifest as it is now (after
    a pull, a repair or a compaction), for a step that has no run of its own."""
    stats = DataStats(
        skipped_empty=int(metadata.get("skipped_empty") or 0),
        truncated_to_model_limit=int(metadata.get("truncated_to_model_limit") or 0),
    )
    return final_metadata(store, metadata, recipe_id(recipe_of(metadata)), stats)


def final_metadata(store: Store, metadata: dict[str, Any], rid: str, stats: DataStats) -> dict[str, Any]:
    """This run's metadata, with totals and recipes read from the manifest (so they cover every shard and
    every earlier run merged into the dir)."""
    manifest = store.manifest()
    meta = dict(metadata)
    meta["examples"], meta["tokens"] = manifest.totals(rid)
    # The dir is the union of every shard's rows, not this shard's: shard fields describe the runs instead.
    dataset = dict(meta.get("dataset", {}))
    num_shards = dataset.pop("num_shards", 1)
    dataset.pop("shard_index", None)
    meta["dataset"] = dataset
    if num_shards and num_shards > 1:
        meta["sharded_runs"] = {"num_shards": num_shards}
    meta["skipped_empty"] = stats.skipped_empty
    # Texts longer than the model's positions, cut to them (tokenizer.max_length=null): never silent.
    meta["truncated_to_model_limit"] = stats.truncated_to_model_limit
    by_recipe: dict[str, list[str]] = {}
    for config, rids in manifest.recipes_by_config().items():
        for r in rids:
            by_recipe.setdefault(r, []).append(config)
    meta["recipes"] = [
        {
            "id": r,
            "configs": sorted(cs),
            "examples": manifest.totals(r)[0],
            "tokens": manifest.totals(r)[1],
            "recipe": manifest.recipes.get(r),
        }
        for r, cs in sorted(by_recipe.items())
    ]
    # Rebuilt from the manifest every time, so writing the metadata again never repeats a note.
    notes = []
    for r, cs in sorted(by_recipe.items()):
        if r != rid:
            diff = "; ".join(recipe_difference(manifest.recipes.get(r, {}), manifest.recipes.get(rid, {})))
            shown = ", ".join(sorted(cs)[:4]) + (", ..." if len(cs) > 4 else "")
            notes.append(
                f"{len(cs)} configs ({shown}) were captured with another recipe (theirs -> the "
                f"latest run's: {diff}); see `recipes` in {METADATA}"
            )
    if notes:
        meta["notes"] = notes
    return meta
