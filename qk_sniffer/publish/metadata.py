"""The run's metadata (``qk_sniffer.json``): what the card, later runs and the Hub push need to know.

Built from the config before capture (:func:`run_metadata`), completed with whole-dir totals from the
manifest after it (:func:`final_metadata`). It never holds secrets: tokens never reach the config.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ..capture.heads import HeadSelection
from ..capture.layout import ModelLayout
from ..capture.points import CapturePoint
from ..capture.samplers import Sampler
from ..core.config import Config
from ..inputs.stats import DataStats
from ..store import Store
from ..store.files import atomic_file
from ..store.layout import METADATA
from ..store.manifest import recipe_difference, recipe_id, recipe_of


def run_metadata(
    cfg: Config, layout: ModelLayout, selection: HeadSelection, sampler: Sampler
) -> dict[str, Any]:
    """What the card and later runs need to know about this run (no secrets: tokens never reach cfg)."""
    model = OmegaConf.to_container(
        OmegaConf.structured(cfg.model) if not OmegaConf.is_config(cfg.model) else cfg.model, resolve=True
    )
    assert isinstance(model, dict)
    model.pop("architecture", None)
    return {
        "model": model,
        "layout": asdict(layout),
        "dataset": _dataset_keys(_plain(cfg.dataset)),
        "tokenizer": _plain(cfg.tokenizer),
        "max_length": cfg.tokenizer.max_length,
        "sampler": {"name": sampler.name, **sampler.params()},
        "capture": _plain(cfg.capture),
        "capture_point": CapturePoint.of(cfg.capture.pre_rope).value,
        "selection": {
            "q": {str(k): list(v) for k, v in selection.q_heads.items()},
            "k": {str(k): list(v) for k, v in selection.k_heads.items()},
        },
    }


# Keys that only the synthetic dataset reads: recorded for another dataset they would describe nothing.
SYNTHETIC_ONLY = ("seq_len", "num_examples", "seed")


def _dataset_keys(dataset: dict[str, Any]) -> dict[str, Any]:
    if dataset.get("path") == "synthetic":
        return dataset
    return {k: v for k, v in dataset.items() if k not in SYNTHETIC_ONLY}


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else asdict(node)


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
