"""Run tracking: a terminal progress bar and (optionally) a Weights & Biases run. Knows no Hub.

The runner calls one tracker: :meth:`Tracker.watch_writer` once, :meth:`Tracker.batch` after each batch with
its blocks and timings, :meth:`Tracker.summary` once the data is exported (with the dataset URL and the
figures, which the runner hands over), :meth:`Tracker.finish` always. The statistics it logs are computed
in :mod:`qk_sniffer.capture.stats`. The W&B run gets one history point per batch and a summary.
``wandb`` is imported only when a run is wanted; when it
is missing, disabled, or fails, the capture goes on with the progress bar alone: watching a capture must
never be what breaks it.
"""

from __future__ import annotations

import contextlib
import logging
import netrc
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import numpy as np
import torch
from omegaconf import OmegaConf

from .capture.rows import Block
from .capture.samplers import KINDS
from .capture.stats import CaptureStats, layer_kind
from .core.config import Config, DatasetConfig
from .core.errors import UserError
from .inputs.data import Batch

log = logging.getLogger(__name__)

MODES = ("online", "offline", "disabled")
# Older spellings wandb itself still accepts in $WANDB_MODE.
MODE_ALIASES = {"dryrun": "offline", "run": "online"}
DEFAULT_WANDB_HOST = "https://api.wandb.ai"
MAX_GROUP_CHARS = 128
SECRET_PREFIXES = ("hf_", "sk-", "ghp_", "gho_", "github_pat_", "wandb_", "api_")
LONG_OPAQUE = re.compile(r"[A-Za-z0-9_\-]{32,}")


class Tracker(Protocol):
    def watch_writer(self, writer: Any) -> None: ...

    def batch(
        self, batch: Batch, blocks: list[Block], step: dict[str, float], wall_s: float, buffer_bytes: int
    ) -> None: ...

    def summary(
        self, result: Any, bytes_written: int, dataset_url: str | None = None, figures: Sequence[Path] = ()
    ) -> None: ...

    def finish(self) -> None: ...


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
    model = cfg.model.slug or _last_part(cfg.model.name) or metadata["layout"].get("model_type") or "model"
    dataset = cfg.dataset.slug or _last_part(cfg.dataset.path) or "dataset"
    return f"{model}-{metadata['sampler']['name']}-{dataset}"


def _last_part(value: str | None) -> str:
    return value.rstrip("/").split("/")[-1] if value else ""


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
        "inference": _plain(cfg.inference),
        "output": _plain(cfg.output),
        "captured_heads": {kind: sum(len(h) for h in selection.get(kind, {}).values()) for kind in KINDS},
    }
    stripped = strip_secrets(config)
    assert isinstance(stripped, dict)
    return stripped


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else asdict(node)


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


def expected_examples(dataset: DatasetConfig) -> int | None:
    """Examples this shard will see when the config alone says so (for the bar's ETA); else None."""
    limit = dataset.num_examples if dataset.path == "synthetic" else dataset.max_samples
    if limit is None:
        return None
    return len(range(dataset.shard_index, limit, dataset.num_shards))


def gpu_memory() -> dict[str, float]:
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return {}
    gib = float(2**30)
    return {
        "gpu/memory_allocated_gib": torch.cuda.memory_allocated() / gib,
        "gpu/max_memory_allocated_gib": torch.cuda.max_memory_allocated() / gib,
        "gpu/memory_reserved_gib": torch.cuda.memory_reserved() / gib,
    }


# ------------------------------------------------------------------------------------------ progress bar


class ProgressBar:
    """A tqdm bar over examples, with tokens/s and an ETA when the example count is known; silent unless
    stderr is a terminal. Started at the first batch, so model loading does not skew the rate."""

    def __init__(self, enabled: bool, total_examples: int | None) -> None:
        self._enabled = enabled and sys.stderr.isatty()
        self._total = total_examples
        self._bar: Any = None
        self._tokens = 0
        self._started = 0.0

    def update(self, batch: Batch, wall_s: float) -> None:
        if not self._enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=self._total, unit="ex", desc="capture", dynamic_ncols=True)
            self._started = time.perf_counter() - wall_s
        self._tokens += batch.num_tokens
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        self._bar.set_postfix_str(f"{self._tokens / elapsed:,.0f} tok/s", refresh=False)
        self._bar.update(len(batch.examples))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# ------------------------------------------------------------------------------------------ W&B run


class WandbSink:
    """One W&B run: one history point per batch, with its timings and its rows."""

    def __init__(self, run: Any) -> None:
        self.run: Any = run
        self._step = 0
        self._total_rows = 0

    def batch(self, metrics: dict[str, float], by_kind: dict[str, int]) -> None:
        batch_rows = sum(by_kind.values())
        self._total_rows += batch_rows
        point = {**metrics, **{f"rows/{kind}": n for kind, n in by_kind.items()}}
        point.update({"rows/batch": batch_rows, "rows/cumulative": self._total_rows})
        self._call(lambda run: run.log(point, step=self._step))
        self._step += 1

    def close(self, summary: dict[str, Any], charts: dict[str, Any]) -> None:
        # Same step as the last batch: W&B merges these into that point instead of adding one.
        self._call(lambda run: run.log(charts, step=max(self._step - 1, 0)))
        self._call(lambda run: run.summary.update(summary))

    def finish(self, failed: bool) -> None:
        """A run that never reached its summary is marked failed in W&B."""
        self._call(lambda run: run.finish(exit_code=1 if failed else 0))
        self.run = None

    def _call(self, action: Callable[[Any], Any]) -> None:
        if self.run is None:
            return
        try:
            action(self.run)
        except Exception as exc:  # noqa: BLE001 - tracking must never end a capture
            log.warning("W&B logging failed (%s); the capture goes on without W&B", exc)
            run, self.run = self.run, None
            with contextlib.suppress(Exception):
                run.finish(exit_code=1)


def start_wandb(cfg: Config, metadata: dict[str, Any], mode: str, note: str | None) -> WandbSink | None:
    """A W&B run for this job, or None (wandb missing or failing to start: noted, never fatal)."""
    try:
        import wandb
    except ImportError:
        log.warning("wandb is not installed: W&B tracking is off for this run (pip install wandb)")
        return None
    if note:
        log.warning(note)
    hydra = _hydra_config()
    try:
        run = wandb.init(
            project=cfg.wandb.project,
            entity=cfg.wandb.entity,
            name=run_name(cfg, metadata),
            group=cfg.wandb.group or sweep_group(hydra),
            tags=[str(tag) for tag in cfg.wandb.tags],
            job_type="capture",
            config=run_config(cfg, metadata),
            dir=wandb_dir(hydra, os.environ),
            # Never "online" without credentials (see choose_mode), so wandb has nothing to prompt for.
            mode=mode,  # type: ignore[arg-type] # one of MODES
        )
    except Exception as exc:  # noqa: BLE001 - tracking must never end a capture
        log.warning("could not start W&B (%s); the capture goes on without it", exc)
        return None
    return WandbSink(run)


# ------------------------------------------------------------------------------------------ the tracker


class RunTracker:
    """The progress bar always; statistics and the W&B run when one is open."""

    def __init__(self, cfg: Config, progress: ProgressBar, sink: WandbSink | None) -> None:
        self.cfg = cfg
        self.progress = progress
        self.sink = sink
        self.stats = CaptureStats()
        self._writer: Any = None
        self._write_s = 0.0
        self._tokens = 0
        self._examples = 0
        self._summarized = False

    def watch_writer(self, writer: Any) -> None:
        """The Parquet writer whose background ``write_seconds`` feed the per-batch time split."""
        self._writer = writer

    def batch(
        self, batch: Batch, blocks: list[Block], step: dict[str, float], wall_s: float, buffer_bytes: int
    ) -> None:
        self.progress.update(batch, wall_s)
        if self.sink is None:
            return
        self._tokens += batch.num_tokens
        self._examples += len(batch.examples)
        write_total = float(getattr(self._writer, "write_seconds", 0.0))
        write_s, self._write_s = write_total - self._write_s, write_total
        lengths = np.array([e.length for e in batch.examples], dtype=np.int64)
        wall = max(wall_s, 1e-9)
        metrics = {
            "tokens_per_s": batch.num_tokens / wall,
            "examples_per_s": len(batch.examples) / wall,
            "tokens/cumulative": self._tokens,
            "examples/cumulative": self._examples,
            "seq_len/mean": float(lengths.mean()) if len(lengths) else 0.0,
            "seq_len/min": int(lengths.min()) if len(lengths) else 0,
            "seq_len/max": int(lengths.max()) if len(lengths) else 0,
            "seq_len/padded": int(batch.input_ids.shape[-1]),
            "time/batch_s": wall_s,
            "time/forward_s": step.get("forward_s", 0.0),
            # Host time inside the forward's attention calls (both are part of forward_s): the whole capture
            # hook (choosing rows, uploading their indices, launching the gathers) and its planning share.
            "time/capture_hook_s": step.get("hook_s", 0.0),
            "time/capture_plan_s": step.get("plan_s", 0.0),
            "time/host_copy_s": step.get("host_copy_s", 0.0),
            # Seconds the background writer spent since the previous batch (it overlaps the forward).
            "time/write_s": write_s,
            "buffer/host_mib": buffer_bytes / 2**20,
            **gpu_memory(),
        }
        self.sink.batch(metrics, self.stats.add(blocks))

    def summary(
        self, result: Any, bytes_written: int, dataset_url: str | None = None, figures: Sequence[Path] = ()
    ) -> None:
        """``dataset_url``: where the data was pushed; ``figures``: the PNGs drawn for the card."""
        if self.sink is None:
            return
        summary: dict[str, Any] = {
            "rows": int(result.rows),
            "examples": int(result.examples),
            "tokens": int(result.tokens),
            "bytes_written": int(bytes_written),
            "output_dir": str(result.output_dir),
            **{f"phase/{name}": float(seconds) for name, seconds in result.phases.items()},
            "rows_per_layer_kind": self.stats.rows_per_layer_kind(),
            "rows_per_bucket": self.stats.rows_per_bucket(),
            "mean_norm": self.stats.mean_norms(),
        }
        if dataset_url:
            summary["dataset_url"] = dataset_url
        self.sink.close(summary, {**self._charts(), **self._images(figures)})
        self._summarized = True

    def _charts(self) -> dict[str, Any]:
        """Tables and the rows-per-bucket bar chart (wandb is importable: a sink exists)."""
        import wandb

        _, labels = self.stats.bucket_groups()
        per_bucket = self.stats.rows_per_bucket()
        bucket_rows = wandb.Table(
            columns=["bucket", "rows", *(f"{kind}_rows" for kind in KINDS)],
            data=[
                [
                    label,
                    sum(per_bucket.get(k, {}).get(label, 0) for k in KINDS),
                    *(per_bucket.get(k, {}).get(label, 0) for k in KINDS),
                ]
                for label in labels
            ],
        )
        norms = self.stats.mean_norms()
        rows = self.stats.rows_per_layer_kind()
        long = wandb.Table(columns=["layer", "kind", "bucket", "mean_norm"])
        for key in sorted(self.stats.counts):
            for label, value in norms[layer_kind(*key)].items():
                long.add_data(key[0], key[1], label, value)
        # One row per (layer, kind), one column per bucket: the position-effect heatmap at a glance.
        heatmap = wandb.Table(
            columns=["layer_kind", "rows", *labels],
            data=[[name, rows[name], *(per.get(label) for label in labels)] for name, per in norms.items()],
        )
        return {
            "charts/rows_per_bucket": wandb.plot.bar(bucket_rows, "bucket", "rows", title="Rows per bucket"),
            "tables/rows_per_bucket": bucket_rows,
            "tables/mean_norm": long,
            "tables/mean_norm_heatmap": heatmap,
        }

    def _images(self, figures: Sequence[Path]) -> dict[str, Any]:
        """The figures the run drew for the card (report.enabled), as the same images."""
        import wandb

        return {f"figures/{path.stem}": wandb.Image(str(path)) for path in figures}

    def finish(self) -> None:
        self.progress.close()
        if self.sink is not None:
            self.sink.finish(failed=not self._summarized)


def make_tracker(cfg: Config, metadata: dict[str, Any]) -> Tracker:
    """Raises UserError for a bad ``wandb.mode`` / $WANDB_MODE (before any weights load)."""
    mode, note = choose_mode(cfg.wandb.mode, os.environ)
    progress = ProgressBar(cfg.wandb.progress, expected_examples(cfg.dataset))
    sink = None if mode == "disabled" else start_wandb(cfg, metadata, mode, note)
    return RunTracker(cfg, progress, sink)
