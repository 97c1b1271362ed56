"""The W&B side of a run: which mode, what the run is called, the config it shows, and the sink that logs
one history point per batch. ``wandb`` is imported only when a run is wanted; when it is missing, disabled,
or fails, the capture goes on with the progress bar alone: watching a capture must never be what breaks it.
The W&B run lives in a process of its own (:mod:`.wandb_process`): importing wandb and starting its service
take about a second of interpreter time, more online, which a thread would take from the capture.
"""

from __future__ import annotations

import importlib.util
import logging
import netrc
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..capture.samplers import KINDS
from ..core.child import Helper, log_in_parent, take
from ..core.config import Config, plain
from ..core.errors import UserError
from ..core.naming import last_part

log = logging.getLogger(__name__)

WANDB_PROCESS = "qk_sniffer.tracking.wandb_process"

MODES = ("online", "offline", "disabled")
# Older spellings wandb itself still accepts in $WANDB_MODE.
MODE_ALIASES = {"dryrun": "offline", "run": "online"}
DEFAULT_WANDB_HOST = "https://api.wandb.ai"
MAX_GROUP_CHARS = 128
SECRET_PREFIXES = ("hf_", "sk-", "ghp_", "gho_", "github_pat_", "wandb_", "api_")
LONG_OPAQUE = re.compile(r"[A-Za-z0-9_\-]{32,}")


# ------------------------------------------------------------------------------------------ mode and naming


def choose_mode(explicit: str | None, environ: Mapping[str, str]) -> tuple[str, str | None]:
    """(mode, note): ``wandb.mode``, else $WANDB_MODE, else online with an API key; online without a key
    becomes offline with a note, so a run never stops at a login prompt."""
    if explicit is not None:
        if explicit not in MODES:
            raise UserError(f"wandb.mode={explicit!r} is unknown; choose one of {', '.join(MODES)} (or null)")
        mode = explicit
    elif environ.get("WANDB_MODE"):
        value = environ["WANDB_MODE"]
        mode = MODE_ALIASES.get(value, value)
        if mode not in MODES:
            raise UserError(f"WANDB_MODE={value!r} is unknown; choose one of {', '.join(MODES)}")
    else:
        mode = "online"
    if mode == "online" and not has_api_key(environ):
        return "offline", (
            "no W&B API key (WANDB_API_KEY or ~/.netrc): logging offline; upload later with `wandb sync`"
        )
    return mode, None


def has_api_key(environ: Mapping[str, str]) -> bool:
    """A key in the environment or in the netrc file wandb itself reads; never asks for one."""
    if environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(environ.get("WANDB_BASE_URL") or DEFAULT_WANDB_HOST).hostname
    path = environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        entry = netrc.netrc(path).authenticators(host or "")
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def run_name(cfg: Config, metadata: dict[str, Any]) -> str:
    """``wandb.name``, else ``<model>-<sampler>-<dataset>`` from the same slugs the Hub branch uses."""
    if cfg.wandb.name:
        return str(cfg.wandb.name)
    model = cfg.model.slug or last_part(cfg.model.name) or metadata["layout"].get("model_type") or "model"
    dataset = cfg.dataset.slug or last_part(cfg.dataset.path) or "dataset"
    return f"{model}-{metadata['sampler']['name']}-{dataset}"


def _hydra_config() -> Any | None:
    """Hydra's runtime config when this process runs under ``@hydra.main`` (not under ``compose``)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def sweep_group(hydra: Any | None) -> str | None:
    """In a multirun, the sweep dir: every job of one sweep lands in one W&B group."""
    from hydra.types import RunMode

    if hydra is None or hydra.mode != RunMode.MULTIRUN:
        return None
    sweep_dir = Path(str(hydra.sweep.dir))
    if sweep_dir.is_absolute() and sweep_dir.is_relative_to(Path.cwd()):
        sweep_dir = sweep_dir.relative_to(Path.cwd())
    return str(sweep_dir)[-MAX_GROUP_CHARS:]


def wandb_dir(hydra: Any | None, environ: Mapping[str, str]) -> str | None:
    """$WANDB_DIR, else the Hydra run (or sweep job) dir, next to its config and log. Never output.dir:
    that dir is the dataset (everything in it is pushed to the Hub) and must stay claimable."""
    if environ.get("WANDB_DIR"):
        return environ["WANDB_DIR"]
    if hydra is not None:
        return str(hydra.runtime.output_dir)
    return None  # wandb's own default: ./wandb


# ------------------------------------------------------------------------------------------ the run's config


def run_config(cfg: Config, metadata: dict[str, Any]) -> dict[str, Any]:
    """The resolved config W&B shows and filters on; secrets never reach it."""
    selection = metadata.get("selection", {})
    config = {
        "model": metadata["model"],
        "layout": metadata["layout"],
        "dataset": metadata["dataset"],
        "tokenizer": metadata["tokenizer"],
        "sampler": metadata["sampler"],
        "capture": metadata["capture"],
        "inference": plain(cfg.inference),
        "output": plain(cfg.output),
        "captured_heads": {kind: sum(len(h) for h in selection.get(kind, {}).values()) for kind in KINDS},
    }
    stripped = strip_secrets(config)
    assert isinstance(stripped, dict)
    return stripped


def strip_secrets(node: Any) -> Any:
    """Drop every key naming a token whose value looks like a credential, at any depth."""
    if isinstance(node, dict):
        return {
            key: strip_secrets(value)
            for key, value in node.items()
            if not ("token" in str(key).lower() and looks_secret(value))
        }
    if isinstance(node, list):
        return [strip_secrets(value) for value in node]
    return node


def looks_secret(value: Any) -> bool:
    return isinstance(value, str) and (
        value.startswith(SECRET_PREFIXES) or bool(LONG_OPAQUE.fullmatch(value))
    )


# ------------------------------------------------------------------------------------------ the sink


class WandbSink:
    """One W&B run, kept by a process of its own (:mod:`.wandb_process`): one history point per batch,
    with its timings and its rows, sent as they come; the helper applies them in order."""

    def __init__(self, helper: Helper) -> None:
        self._helper: Helper | None = helper
        self._step = 0
        self._total_rows = 0

    def batch(self, metrics: dict[str, float], by_kind: dict[str, int]) -> None:
        batch_rows = sum(by_kind.values())
        self._total_rows += batch_rows
        point = {**metrics, **{f"rows/{kind}": n for kind, n in by_kind.items()}}
        point.update({"rows/batch": batch_rows, "rows/cumulative": self._total_rows})
        self._send({"log": point, "step": self._step})
        self._step += 1

    def close(self, summary: dict[str, Any], charts: dict[str, Any]) -> None:
        """``charts``: the data of :func:`.wandb_process.charts` (tables and the figures' paths)."""
        # Same step as the last batch: W&B merges these into that point instead of adding one.
        self._send({"charts": charts, "step": max(self._step - 1, 0)})
        self._send({"summary": summary})

    def finish(self, failed: bool) -> None:
        """A run that never reached its summary is marked failed in W&B. Waits until the helper has
        finished the run (its files are complete when the command returns), and logs what it reported."""
        helper, self._helper = self._helper, None
        if helper is None:
            return
        helper.send({"finish": 1 if failed else 0})
        replies = []
        while (reply := helper.receive()) is not None and not reply.get("finished"):
            replies.append(reply)
        if reply is not None:
            log_in_parent(replies)
            helper.close(wait=False)  # what is left is its interpreter's exit
            return
        replies += helper.close()  # it ended without finishing: its exit status says why
        log_in_parent(replies)
        if helper.returncode and not replies:
            log.warning("the W&B process ended (exit %s); the capture went on without W&B", helper.returncode)

    def _send(self, message: dict[str, Any]) -> None:
        if self._helper is not None:
            self._helper.send(message)  # a helper that is gone says so when it is closed


def start_wandb(cfg: Config, metadata: dict[str, Any], mode: str, note: str | None) -> WandbSink | None:
    """A sink for this job's W&B run, which its helper process starts (started early by the command, or
    now); None when wandb is not installed (a failure to start is reported at the end, never fatal)."""
    if not wandb_installed():
        log.warning("wandb is not installed: W&B tracking is off for this run (pip install wandb)")
        return None
    if note:
        log.warning(note)
    hydra = _hydra_config()
    settings: dict[str, Any] = {
        "project": cfg.wandb.project,
        "entity": cfg.wandb.entity,
        "name": run_name(cfg, metadata),
        "group": cfg.wandb.group or sweep_group(hydra),
        "tags": [str(tag) for tag in cfg.wandb.tags],
        "job_type": "capture",
        "config": run_config(cfg, metadata),
        "dir": wandb_dir(hydra, os.environ),
        # Never "online" without credentials (see choose_mode), so wandb has nothing to prompt for.
        "mode": mode,
    }
    helper = take(WANDB_PROCESS)
    helper.send({"init": settings})
    return WandbSink(helper)


def wandb_installed() -> bool:
    try:
        return importlib.util.find_spec("wandb") is not None
    except ValueError:  # sys.modules["wandb"] is None: imports of it are refused
        return False
