"""The one tracker a run calls: :meth:`RunTracker.watch_writer` once, :meth:`RunTracker.batch` after each
batch with its blocks and timings, :meth:`RunTracker.summary` once the data is exported (with the dataset URL
and the figures, which the runner hands over), :meth:`RunTracker.finish` always. The progress bar always;
statistics and one W&B history point per batch when a W&B run is open, and a W&B summary at the end."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..capture.rows import Block
from ..capture.samplers import KINDS
from ..capture.stats import CaptureStats, layer_kind
from ..core.config import Config
from ..inputs.data import Batch
from .progress import ProgressBar, expected_examples
from .wandb_run import WandbSink, choose_mode, start_wandb


class Tracker(Protocol):
    def watch_writer(self, writer: Any) -> None: ...

    def batch(
        self, batch: Batch, blocks: list[Block], step: dict[str, float], wall_s: float, buffer_bytes: int
    ) -> None: ...

    def summary(
        self, result: Any, bytes_written: int, dataset_url: str | None = None, figures: Sequence[Path] = ()
    ) -> None: ...

    def finish(self) -> None: ...


def gpu_memory() -> dict[str, float]:
    import torch  # loaded already: the capture runs on it

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return {}
    gib = float(2**30)
    return {
        "gpu/memory_allocated_gib": torch.cuda.memory_allocated() / gib,
        "gpu/max_memory_allocated_gib": torch.cuda.max_memory_allocated() / gib,
        "gpu/memory_reserved_gib": torch.cuda.memory_reserved() / gib,
    }


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
        self.sink.close(summary, self._charts(figures))
        self._summarized = True

    def _charts(self, figures: Sequence[Path]) -> dict[str, Any]:
        """The data of the W&B tables, the rows-per-bucket bar chart and the figures the run drew for the
        card (report.enabled); the W&B process builds the objects (:func:`.wandb_process.charts`)."""
        _, labels = self.stats.bucket_groups()
        per_bucket = self.stats.rows_per_bucket()
        norms = self.stats.mean_norms()
        rows = self.stats.rows_per_layer_kind()
        return {
            "rows_per_bucket": {
                "columns": ["bucket", "rows", *(f"{kind}_rows" for kind in KINDS)],
                "data": [
                    [
                        label,
                        sum(per_bucket.get(k, {}).get(label, 0) for k in KINDS),
                        *(per_bucket.get(k, {}).get(label, 0) for k in KINDS),
                    ]
                    for label in labels
                ],
            },
            "mean_norm": {
                "columns": ["layer", "kind", "bucket", "mean_norm"],
                "data": [
                    [key[0], key[1], label, value]
                    for key in sorted(self.stats.counts)
                    for label, value in norms[layer_kind(*key)].items()
                ],
            },
            # One row per (layer, kind), one column per bucket: the position-effect heatmap at a glance.
            "mean_norm_heatmap": {
                "columns": ["layer_kind", "rows", *labels],
                "data": [
                    [name, rows[name], *(per.get(label) for label in labels)] for name, per in norms.items()
                ],
            },
            "figures": [str(path) for path in figures],
        }

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
