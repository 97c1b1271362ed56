"""Remembered dry runs: ``dry_run=true`` asked again of the same local inputs answers at once.

A plan needs the model's layout measured on a weightless model, so torch and transformers' modeling code
(three seconds of imports) for a JSON object that only changes when its inputs do. A plan is remembered
when every input is local and named in its key, and it is shown again, with what it logged, without those
imports. The key holds:

- the whole config except ``output``, ``wandb``, ``report`` and ``dry_run`` (which change no plan);
- the model's own files for a local checkpoint (``*.json`` and ``*.py``: its config, and any remote code);
- the versions of Python, torch, transformers and qk_sniffer, and the size and time of every file of this
  package (its code, presets and support matrices: an edited checkout is a new key).

Nothing is remembered for a model named on the Hub (its config may change there), a dataset other than the
embedded corpus or synthetic data, or a memory plan read off the device's free memory (it changes from one
minute to the next). Plans live in ``$QK_SNIFFER_CACHE/dry_run/`` (by default
``$XDG_CACHE_HOME/qk_sniffer``, else ``~/.cache/qk_sniffer``), one small JSON file each; a file that does
not parse is ignored and written again. Deleting the dir forgets them all; ``QK_SNIFFER_CACHE=off``
remembers nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..core.child import Message, log_in_parent
from ..core.config import Config, plain
from .user_cache import entry_key, read_entry, write_entry

KIND = "dry_run"
LOCAL_DATASETS = ("embedded", "synthetic")
CHECKPOINT_TEXT = (".json", ".py")
UNPLANNED = ("output", "wandb", "report", "dry_run")


def cache_key(cfg: Config) -> str | None:
    """The key of this config's plan; None when an input is not local (nothing is remembered)."""
    if cfg.dataset.path not in LOCAL_DATASETS:
        return None
    model_files = _checkpoint_files(cfg)
    if model_files is None:
        return None
    config = {k: v for k, v in plain(cfg).items() if k not in UNPLANNED}
    return entry_key(json.dumps(config, sort_keys=True, default=str), json.dumps(model_files, sort_keys=True))


def recall(cfg: Config) -> dict[str, Any] | None:
    """The remembered plan for ``cfg`` (what it logged is logged again), or None."""
    key = cache_key(cfg)
    entry = None if key is None else read_entry(KIND, key)
    try:
        plan, records = entry["plan"], entry["records"]  # type: ignore[index]
    except (KeyError, TypeError):
        return None
    if not isinstance(plan, dict):
        return None
    log_in_parent(records)
    return plan


def remember(cfg: Config, plan: dict[str, Any], records: list[Message]) -> None:
    """Keep ``plan`` for the next identical dry run, when all it depends on is in its key."""
    memory = plan.get("memory")
    if memory is not None and (
        memory.get("budget_source") != "inference.memory_budget_gb" or cfg.model.device == "auto"
    ):
        return  # read off the device: its free memory, or which device "auto" finds

    key = cache_key(cfg)
    if key is not None:
        write_entry(KIND, key, {"plan": plan, "records": records})


def _checkpoint_files(cfg: Config) -> dict[str, str] | None:
    """The digests of a local checkpoint's text files ({} for a model built from the config's architecture:
    the embedded model, ``model.random_init``); None for a model named on the Hub."""
    name = cfg.model.name
    if cfg.model.random_init or not name:
        return {}
    if not os.path.isfile(os.path.join(name, "config.json")):
        return None
    files = {}
    for path in sorted(Path(name).iterdir()):
        if path.suffix in CHECKPOINT_TEXT and path.is_file():
            files[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files
