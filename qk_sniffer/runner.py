"""The run, as short named steps: check -> build -> capture -> export -> publish."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import card, hub
from .capture import Block
from .compact import compact_dir
from .config import Config
from .data import Batch, DataStats, Example, batches, load_rows, synthetic_examples, tokenized_examples
from .errors import UserError
from .export import (
    ParquetWriter,
    RowBuffer,
    config_name,
    keep_missing,
    name_widths,
    return_freed_buffers_to_the_os,
)
from .figures import render_after_run
from .heads import HeadSelection
from .manifest import Manifest, ResumeFilter, committer, recipe_id, recipe_of, write_recipe
from .metadata import final_metadata, run_metadata, write_metadata
from .models import load_model
from .outdir import (
    RunInfo,
    RunLease,
    check_no_overlap,
    check_recipe,
    claim_output_dir,
    clean_dead_runs,
    finish_deletions,
    live_runs,
    maintenance_lock,
    record_model,
    take_over,
)
from .plan import CapturePlan, plan_capture
from .samplers import KINDS
from .session import CaptureSession
from .tokenization import encoder, load_tokenizer, pad_id, token_strings
from .tracking import Tracker, make_tracker

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    output_dir: Path
    rows: int
    examples: int
    tokens: int
    skipped_empty: int
    files: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    # Examples skipped because their rows were already durable in output.dir (resume / merge).
    resumed_examples: int = 0


def resolve_output_dir(cfg: Config) -> Path:
    if cfg.output.dir:
        return Path(cfg.output.dir).expanduser().resolve()
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) / "capture"


@dataclass
class Prepared:
    """Everything a run settles before it loads weights."""

    plan: CapturePlan
    widths: tuple[int, int]
    configs: list[str]
    out_dir: Path
    metadata: dict[str, Any]
    recipe: dict[str, Any]
    rid: str
    # Configs on disk that another recipe wrote and this run replaces (output.mode=replace).
    taken: list[str]
    resume: ResumeFilter
    tokenizer: Any
    stats: DataStats
    batches: Iterator[Batch]


def run(cfg: Config) -> RunResult:
    t_start = time.perf_counter()
    phases: dict[str, float] = {}
    prep = _prepare(cfg)
    tracker = make_tracker(cfg, prep.metadata)
    try:
        with _phase(phases, "load_s"):
            model = load_model(cfg.model, prep.plan.model_config)
        prep.metadata["attn_implementation"] = str(model.config.get_text_config()._attn_implementation)
        run_id = uuid.uuid4().hex[:12]
        shard = (cfg.dataset.shard_index, cfg.dataset.num_shards)
        with _lease(prep.out_dir, prep.metadata, prep.recipe, RunInfo(run_id, prep.rid, shard, prep.configs)):
            writer = ParquetWriter(
                prep.out_dir,
                f"part-{shard[0]:03d}-{run_id}",
                prep.widths,
                token_strings(prep.tokenizer) if (cfg.capture.token_strings and prep.tokenizer) else None,
                on_durable=committer(prep.out_dir, prep.rid, run_id, shard[0]),
            )
            tracker.watch_writer(writer)
            with _phase(phases, "capture_s"):
                signum = _capture(cfg, prep, model, writer, tracker)
            if signum is not None:
                raise RunInterrupted(signum, prep.out_dir, writer.examples_committed)
            with _phase(phases, "export_s"):
                _export(cfg, prep, run_id)
        with _phase(phases, "push_s"):
            hub.publish(cfg, prep.out_dir)  # only with output.hub.push=true
        stats = prep.stats
        result = RunResult(
            prep.out_dir,
            writer.rows_written,
            stats.examples,
            stats.tokens,
            stats.skipped_empty,
            phases=phases,
            resumed_examples=prep.resume.skipped,
        )
        phases["total_s"] = time.perf_counter() - t_start
        tracker.summary(result, writer.bytes_written)
    finally:
        tracker.finish()
    if result.skipped_empty:
        log.warning("skipped %d empty or null texts", result.skipped_empty)
    if result.resumed_examples:
        log.info(
            "resumed: %d examples were already durable in %s and were skipped",
            result.resumed_examples,
            prep.out_dir,
        )
    return result


def _prepare(cfg: Config) -> Prepared:
    """Check everything that needs no weights: config values, layer/head ranges, the output dir and what it
    already holds, the Hub (with push on), and the dataset's first batch."""
    plan = plan_capture(cfg)
    layout = plan.layout
    widths = name_widths(layout.num_layers, max(layout.num_q_heads, layout.num_kv_heads))
    configs = config_names(plan.selection, widths)
    out_dir = resolve_output_dir(cfg)
    metadata = run_metadata(cfg, layout, plan.selection, plan.sampler)
    claim_output_dir(out_dir, metadata, mode=cfg.output.mode)
    recipe = recipe_of(metadata)
    rid = recipe_id(recipe)
    hub.preflight(cfg.output.hub)
    # With push on, another machine's examples on the branch join the manifest before it is read.
    hub.pull_before_run(cfg, out_dir, metadata, recipe, configs)
    # What is already durable for this recipe: rerunning a command resumes it; other layers merge in.
    manifest = Manifest(out_dir)
    taken = check_recipe(out_dir, manifest, recipe, rid, configs, cfg.output.mode)
    resume = ResumeFilter(manifest.done(rid), configs, out_dir)
    tokenizer = None if cfg.dataset.path == "synthetic" else load_tokenizer(cfg.tokenizer, cfg.model)
    stats = DataStats()
    vocab_size = int(plan.model_config.get_text_config().vocab_size)
    examples = resume.filter(_examples(cfg, tokenizer, stats, vocab_size))
    first_batches = _peek(batches(examples, cfg.inference.batch_size, pad_id(tokenizer), stats))
    return Prepared(
        plan, widths, configs, out_dir, metadata, recipe, rid, taken, resume, tokenizer, stats, first_batches
    )


def _capture(cfg: Config, prep: Prepared, model: Any, writer: ParquetWriter, tracker: Tracker) -> int | None:
    """Run every batch through the capture session; returns the signal that stopped it early, if any."""
    plan = prep.plan
    with (
        CaptureSession(model, plan.selection, plan.sampler, pre_rope=cfg.capture.pre_rope) as session,
        StopSignals() as stop,
    ):
        try:
            _capture_loop(cfg, session, prep.batches, writer, tracker, prep.resume, prep.widths, stop)
        finally:
            writer.close()  # commits every flush already queued, also when capture failed
    return stop.signum


def _export(cfg: Config, prep: Prepared, run_id: str) -> None:
    """Metadata and card from what is on disk (every shard's, whoever finishes last), after the cleanups
    this run owes the dir: planned deletions, dead runs' leftovers, replaced configs, compaction."""
    out_dir = prep.out_dir
    with maintenance_lock(out_dir):
        finish_deletions(out_dir)
        clean_dead_runs(out_dir)
        if prep.taken:
            _take_over(out_dir, prep.rid, prep.taken, run_id)
        if cfg.output.compact:
            compact_dir(out_dir, run_id)
        write_metadata(out_dir, final_metadata(out_dir, prep.metadata, prep.rid, prep.stats))
        if cfg.report.enabled:  # before the card, which links the figures drawn from the data it describes
            render_after_run(out_dir)
        card.write_card(out_dir, cfg.output.hub.repo_id, cfg.output.hub.branch)


@contextmanager
def _phase(phases: dict[str, float], name: str) -> Iterator[None]:
    """Wall seconds of one step, for the summary."""
    start = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = time.perf_counter() - start


def _examples(cfg: Config, tokenizer: Any, stats: DataStats, vocab_size: int) -> Iterator[Example]:
    if cfg.dataset.path == "synthetic":
        return synthetic_examples(cfg.dataset, vocab_size)
    rows = load_rows(cfg.dataset)
    return tokenized_examples(rows, cfg.dataset, encoder(tokenizer), cfg.tokenizer.max_length, stats)


def _peek(it: Iterator[Batch]) -> Iterator[Batch]:
    """Pull the first batch now, so dataset errors (missing column, bad file) surface before weights load."""
    first = next(it, None)

    def chained() -> Iterator[Batch]:
        if first is not None:
            yield first
            yield from it

    return chained()


def _capture_loop(
    cfg: Config,
    session: CaptureSession,
    batch_iter: Iterator[Batch],
    writer: ParquetWriter,
    tracker: Tracker,
    resume: ResumeFilter,
    widths: tuple[int, int],
    stop: StopSignals,
) -> None:
    return_freed_buffers_to_the_os()
    buffer = RowBuffer()
    # Flush at half the cap: the half being written and the half filling up stay within the cap together.
    flush_bytes = cfg.output.max_buffer_mb * 1024 * 1024 // 2
    t0 = time.perf_counter()
    for batch, blocks, step in session.stream(batch_iter, stop=lambda: stop.signum is not None):
        kept = _collect(blocks, batch, buffer, resume, widths)
        if buffer.nbytes >= flush_bytes or buffer.num_examples >= cfg.output.flush_every_examples:
            flush = buffer.drain()
            writer.submit(flush.rows, flush.examples)
        t1 = time.perf_counter()
        tracker.batch(batch, kept, step, t1 - t0, buffer.nbytes)
        t0 = t1
    flush = buffer.drain()
    writer.submit(flush.rows, flush.examples)


def _collect(
    blocks: list[Block],
    batch: Batch,
    buffer: RowBuffer,
    resume: ResumeFilter,
    widths: tuple[int, int],
) -> list[Block]:
    """Buffer the rows of ``batch`` not yet durable in output.dir; returns them."""
    blocks = keep_missing(blocks, [resume.done_for(e.index) for e in batch.examples], widths)
    buffer.add(blocks)
    buffer.complete([(e.index, e.example_id, e.length, resume.todo(e.index)) for e in batch.examples])
    return blocks


def config_names(selection: HeadSelection, widths: tuple[int, int]) -> list[str]:
    """The dataset configs this run writes, one per captured (layer, head, kind)."""
    return sorted(
        config_name(layer, head, kind, *widths)
        for layer in selection.layers
        for kind in KINDS
        for head in selection.heads(layer, kind)
    )


class RunInterrupted(UserError):
    """SIGINT/SIGTERM: everything complete was committed; the same command resumes."""

    def __init__(self, signum: int, out_dir: Path, committed: int) -> None:
        self.signum = signum
        # The shell convention for "ended by signal N", so schedulers see an interrupt, not a bad input.
        self.exit_code = 128 + signum
        super().__init__(
            f"interrupted by {signal.Signals(signum).name}: the {committed} examples this run completed are "
            f"saved and recorded in output.dir={str(out_dir)!r}; run the same command again to resume "
            "(completed examples are skipped)"
        )


class StopSignals:
    """During capture, SIGINT/SIGTERM ask the loop to stop after the current batch, so everything complete
    is flushed and committed before exiting. A second signal stops at once (committed rows stay valid)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python only allows handlers there
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        log.warning(
            "%s received: finishing the current batch and committing what is complete (send it again "
            "to stop at once)",
            signal.Signals(signum).name,
        )

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


@contextmanager
def _lease(
    out_dir: Path, metadata: dict[str, Any], recipe: dict[str, Any], info: RunInfo
) -> Iterator[RunLease]:
    """Create the dir, record its model and recipe, register this run, and clear killed runs' leftovers."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        record_model(out_dir, metadata)
        write_recipe(out_dir, recipe)
    except OSError as exc:
        raise UserError(f"output.dir={str(out_dir)!r} cannot be written: {exc.strerror or exc}") from None
    with RunLease(out_dir, info) as lease:
        check_no_overlap(out_dir, info)
        with maintenance_lock(out_dir):
            finish_deletions(out_dir)
            clean_dead_runs(out_dir)
        yield lease


def _take_over(out_dir: Path, rid: str, taken: list[str], run_id: str) -> None:
    busy = [
        r.run for r in live_runs(out_dir, exclude=run_id) if r.recipe != rid and set(r.configs) & set(taken)
    ]
    if busy:
        log.warning(
            "output.mode=replace: runs %s of another recipe still write these configs; the old rows "
            "stay until this command is run again after they end",
            ", ".join(busy),
        )
        return
    removed = take_over(out_dir, rid, taken)
    log.info(
        "output.mode=replace: %d configs now hold only this recipe's rows (%d old files deleted)",
        len(taken),
        removed,
    )
