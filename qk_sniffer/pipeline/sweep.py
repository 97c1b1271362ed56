"""Where each job of a multirun (``-m``) writes when ``output.dir`` names one dir for the whole sweep.

Jobs that differ only in keys a recipe leaves out (shards, layers, heads, max_samples, batch size, device,
output and tracking settings) write the same rows for the same (example, config): they share output.dir
and merge, as the shards of one capture must. A sweep over anything else (a sampler, a model, a dataset,
pre_rope...) would put several recipes' rows in one dir, where each job refuses the next and suggests
``output.mode=replace``, which would delete its sibling's rows. Those jobs write into a subdir named by
the swept values that change the recipe, e.g. ``<output.dir>/sampler=uniform`` (its shards merge there).

The swept keys are read from the sweep dir's ``multirun.yaml`` (Hydra writes it before it launches the
jobs). Without it, each job writes into ``<output.dir>/job<N>``: never mixed, merged with nothing.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

# Keys, and groups of keys, that a recipe leaves out (qk_sniffer.store.manifest.recipe_of): sweeping one
# changes which rows a job writes, never what a row holds. Any key not listed gets its own subdir.
ROW_CHOOSING = (
    "capture.layers",
    "capture.heads",
    "capture.head_sampling",
    "capture.full_attention_only",
    "capture.queries",
    "capture.keys",
    "dataset.max_samples",
    "dataset.num_shards",
    "dataset.shard_index",
    "dataset.num_examples",
    "dataset.streaming",
    "dataset.slug",
    "model.slug",
    "model.device",
    "model.device_map",
    "model.attn_implementation",
    "inference",
    "output",
    "wandb",
    "report",
    "dry_run",
)


def chooses_rows_only(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in ROW_CHOOSING)


def job_output_dir(output_dir: Path, hydra: Any) -> Path:
    """output.dir for the multirun job ``hydra`` (its Hydra config) describes."""
    mine = {o.key_or_group: o for o in _parse(_raw(hydra.overrides.task))}
    if "output.dir" in mine and "${" in str(mine["output.dir"].value()):
        return output_dir  # e.g. out_${hydra:job.num}: each job has a dir of its own already
    swept = swept_keys(Path(str(hydra.sweep.dir)))
    if swept is None:
        log.warning(
            "cannot read the sweep's keys from %s: this job writes into its own subdir", hydra.sweep.dir
        )
        return output_dir / f"job{hydra.job.num}"
    apart = sorted(k for k in swept if not chooses_rows_only(k))
    if not apart:
        return output_dir
    name = ",".join(f"{key}={mine[key].get_value_element_as_str() if key in mine else None}" for key in apart)
    return output_dir / re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)


def swept_keys(sweep_dir: Path) -> set[str] | None:
    """The keys (or config groups) the sweep gives several values, from its ``multirun.yaml``; None when
    that cannot be read."""
    try:
        return swept_keys_of(OmegaConf.load(sweep_dir / "multirun.yaml"))
    except Exception as exc:  # a missing or unreadable file, or overrides Hydra itself no longer parses
        log.debug("no sweep keys in %s: %s", sweep_dir, exc)
        return None


def swept_keys_of(master: Any) -> set[str]:
    """The swept keys of a multirun's own config (the command line's and ``hydra.sweeper.params``)."""
    overrides = _raw(master.hydra.overrides.task)
    params = OmegaConf.select(master, "hydra.sweeper.params")
    overrides += [f"{key}={value}" for key, value in (_raw(params) if params is not None else {}).items()]
    return {o.key_or_group for o in _parse(overrides) if o.is_sweep_override()}


def swept_values(overrides: list[str], keys: set[str]) -> list[str]:
    """The ``key=value`` overrides of one job that set a swept key."""
    return [text for text, o in zip(overrides, _parse(overrides), strict=True) if o.key_or_group in keys]


def _raw(node: Any) -> Any:
    """A config node's values as written (``out_${hydra:job.num}``, not this job's ``out_3``)."""
    return OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node


def _parse(overrides: list[str]) -> list[Any]:
    return list(OverridesParser.create().parse_overrides(overrides))
