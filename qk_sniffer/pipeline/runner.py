"""The run, as short named steps: check -> build -> capture -> export -> publish."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.figure_process import FigureDrawer, start_drawer
from ..analysis.figures import current_figures
from ..capture.gather import RowBuffer, keep_missing, return_freed_buffers_to_the_os
from ..capture.heads import HeadSelection
from ..capture.models import attention_backend
from ..capture.rows import Block
from ..capture.samplers import KINDS
from ..capture.session import CaptureSession
from ..core.config import Config
from ..core.errors import UserError
from ..core.naming import config_name, name_widths
from ..inputs.data import Batch, DataStats, Example, batches, synthetic_examples, tokenized_examples
from ..inputs.sources import load_rows
from ..inputs.tokenization import encoder, load_tokenizer, pad_id, token_strings
from ..publish import documents, hub
from ..publish.branches import branch_name, dataset_url
from ..publish.metadata import final_metadata
from ..publish.run_metadata import check_release_of_dir, run_metadata
from ..publish.sync import pull_before_run
from ..store import RunInfo, Store
from ..store.compact import compact_store
from ..store.manifest import model_identity, recipe_id, recipe_of
from ..store.resume import ResumeFilter
from ..store.writer import PartWriter
from ..tracking.summary import EndSummary
from ..tracking.tracker import Tracker, make_tracker
from .budget import Budget, run_budget
from .dry_run import example_length
from .helpers import drop_early, start_helpers
from .plan import CapturePlan, load_checked, plan_capture
from .signals import RunInterrupted, StopSignals
from .sweep import job_output_dir
from .weights import checkpoint_digest, local_checkpoint

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
    # What the dir's dataset holds once the run ended, its card and figures: printed at the end.
    summary: EndSummary | None = None


def resolve_output_dir(cfg: Config) -> Path:
    """output.dir; in a multirun, the dir of this job inside it (:mod:`.sweep`); without output.dir,
    ``capture/`` inside the Hydra run (or job) dir."""
    from hydra.core.hydra_config import HydraConfig

    if cfg.output.dir:
        root = Path(cfg.output.dir).expanduser().resolve()
        return job_output_dir(root, HydraConfig.get()) if in_multirun() else root
    return Path(HydraConfig.get().runtime.output_dir) / "capture"


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (``-m``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@dataclass
class Prepared:
    """Everything a run settles before it loads weights."""

    plan: CapturePlan
    widths: tuple[int, int]
    configs: list[str]
    store: Store
    metadata: dict[str, Any]
    recipe: dict[str, Any]
    rid: str
    # Configs on disk that another recipe wrote and this run replaces (output.mode=replace).
    taken: list[str]
    resume: ResumeFilter
    tokenizer: Any
    stats: DataStats
    batches: Iterator[Batch]
    # The memory budget: the chunk sizes of each batch (checked up front for a known length).
    budget: Budget

    @property
    def out_dir(self) -> Path:
        return self.store.root


def run(cfg: Config) -> RunResult:
    start_helpers(cfg)  # if the command did not: W&B and the figures get ready on another core meanwhile
    try:
        return _run(cfg)
    finally:
        drop_early()  # a helper the run stopped before taking


def _run(cfg: Config) -> RunResult:
    t_start = time.perf_counter()
    phases: dict[str, float] = {}
    prep = _prepare(cfg)
    tracker = make_tracker(cfg, prep.metadata)
    drawer: FigureDrawer | None = None
    try:
        drawer = start_drawer() if cfg.report.enabled else None
        with _phase(phases, "load_s"):
            model = load_checked(cfg.model, prep.plan.model_config, prep.plan.layout)
        prep.metadata["attn_implementation"] = attention_backend(model)
        run_id = uuid.uuid4().hex[:12]
        shard = (cfg.dataset.shard_index, cfg.dataset.num_shards)
        info = RunInfo(run_id, prep.rid, shard, prep.configs)
        identity = model_identity(prep.metadata)
        with prep.store.registered(info, prep.recipe, identity, cfg.output.mode) as registration:
            prep.taken = registration.taken
            writer = PartWriter(
                prep.out_dir,
                f"{shard[0]:03d}",
                run_id,
                prep.store.committer(prep.rid, run_id, f"{shard[0]:03d}"),
            )
            tracker.watch_writer(writer)
            with _phase(phases, "capture_s"):
                try:
                    signum = _capture_all(cfg, prep, model, writer, tracker)
                except Exception:
                    _settle_committed(cfg, prep)
                    raise
            if signum is not None:
                _settle_committed(cfg, prep)
                raise RunInterrupted(signum, prep.out_dir, writer.examples_committed)
            with _phase(phases, "export_s"):
                try:
                    _export(cfg, prep, run_id, drawer)
                except KeyboardInterrupt:  # Ctrl-C while the figures draw: the dir keeps a true card
                    _settle_committed(cfg, prep)
                    raise
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
        result.summary = _end_summary(cfg, prep.store)
        tracker.summary(result, writer.bytes_written, result.summary.dataset_url, result.summary.figures)
    finally:
        if drawer is not None:
            drawer.close()
        tracker.finish()
    if result.skipped_empty:
        log.warning("skipped %d empty or null texts", result.skipped_empty)
    if prep.stats.truncated_to_model_limit:
        log.warning("cut %d texts to the model's positions", prep.stats.truncated_to_model_limit)
    if result.resumed_examples:
        log.info(
            "resumed: %d examples were already durable in %s and were skipped",
            result.resumed_examples,
            prep.out_dir,
        )
    return result


def _end_summary(cfg: Config, store: Store) -> EndSummary:
    view = store.view()
    return EndSummary(
        store.root,
        {config: view.rows(config) for config in view.configs},
        card=store.paths.card if store.paths.card.is_file() else None,
        figures=current_figures(store.root),
        dataset_url=dataset_url(cfg),
        figures_off=not cfg.report.enabled,
    )


def _prepare(cfg: Config) -> Prepared:
    """Check everything that needs no weights: config values, layer/head ranges, the output dir and what it
    already holds, the Hub (with push on), and the dataset's first batch."""
    plan = plan_capture(cfg)
    budget = run_budget(cfg, plan)
    length = example_length(cfg)
    if length is not None:  # a plan that cannot fit is refused before anything is read or loaded
        budget.check(cfg.inference.batch_size, length)
    layout = plan.layout
    widths = name_widths(layout.num_layers, layout.max_heads)
    configs = config_names(plan.selection, widths)
    store = Store(resolve_output_dir(cfg))
    metadata = run_metadata(cfg, layout, plan.selection, plan.sampler, plan.model_config.model_type)
    checkpoint = local_checkpoint(cfg.model)
    if checkpoint is not None:  # a path can hold other weights tomorrow: identify them by content
        metadata["weights"] = checkpoint_digest(checkpoint)
    store.check_claim(model_identity(metadata))
    release_note = check_release_of_dir(store.recorded_metadata(), metadata, store.where)
    if release_note:
        log.warning(release_note)
    recipe = recipe_of(metadata)
    rid = recipe_id(recipe)
    hub.preflight(cfg.output.hub)
    # With push on, another machine's examples on the branch join the manifest before it is read.
    pull_before_run(cfg, store, metadata, recipe, configs)
    info = RunInfo("(this run)", rid, (cfg.dataset.shard_index, cfg.dataset.num_shards), configs)
    taken = store.check_recipe(recipe, info, cfg.output.mode) if store.claimed() else []
    if store.claimed():
        store.repair()  # before reading what is done: a dropped commit's examples are captured again
    # What is already durable for this recipe: rerunning a command resumes it; other layers merge in.
    manifest = store.manifest()
    seen = manifest.examples(manifest.same_texts(recipe))
    resume = ResumeFilter(manifest.done(rid), configs, store.root, seen)
    tokenizer = None if cfg.dataset.path == "synthetic" else load_tokenizer(cfg.tokenizer, cfg.model)
    stats = DataStats()
    vocab_size = int(plan.model_config.get_text_config().vocab_size)
    examples = resume.filter(_examples(cfg, tokenizer, stats, vocab_size, plan))
    first_batches = _peek(batches(examples, cfg.inference.batch_size, pad_id(tokenizer), stats))
    return Prepared(
        plan,
        widths,
        configs,
        store,
        metadata,
        recipe,
        rid,
        taken,
        resume,
        tokenizer,
        stats,
        first_batches,
        budget,
    )


def _capture_all(cfg: Config, prep: Prepared, model: Any, writer: PartWriter, tracker: Tracker) -> int | None:
    """Run every batch through the capture session; returns the signal that stopped it early, if any."""
    plan = prep.plan
    with (
        CaptureSession(
            model, plan.selection, plan.sampler, pre_rope=cfg.capture.pre_rope, chunking=prep.budget
        ) as session,
        StopSignals() as stop,
    ):
        try:
            tokens = token_strings(prep.tokenizer) if (cfg.capture.token_strings and prep.tokenizer) else None
            _run_batches(cfg, session, prep.batches, writer, tracker, prep.resume, prep.widths, tokens, stop)
        finally:
            writer.close()  # commits every flush already queued, also when capture failed
    return stop.signum


def _export(cfg: Config, prep: Prepared, run_id: str, drawer: FigureDrawer | None) -> None:
    """Metadata and card from what the dataset holds (every shard's, whoever finishes last), after the
    changes this run owes the dir (replaced configs, compaction); then files that left the dataset go."""
    store = prep.store

    def change() -> None:
        if prep.taken:
            _take_over(store, prep.rid, prep.taken, run_id)
        if cfg.output.compact:
            compact_store(store, run_id)

    documents.settle(
        store,
        lambda: final_metadata(store, prep.metadata, prep.rid, prep.stats),
        repo_id=cfg.output.hub.repo_id,
        branch=branch_name(cfg) if cfg.output.hub.repo_id else None,
        change=change,
        draw=drawer.draw if drawer is not None else None,
    )


def _settle_committed(cfg: Config, prep: Prepared) -> None:
    """A run that stops early (a bad row mid-stream, a full disk, a signal) still leaves the dir's card
    and metadata listing exactly what is committed: a claimed dir never goes without its card. Nothing it
    owed the dir on success (replace, compaction, figures) is done. Best effort: the error that stopped
    the run is the one to report."""
    try:
        documents.settle(
            prep.store,
            lambda: final_metadata(prep.store, prep.metadata, prep.rid, prep.stats),
            repo_id=cfg.output.hub.repo_id,
            branch=branch_name(cfg) if cfg.output.hub.repo_id else None,
        )
    except (OSError, UserError) as exc:
        log.warning("could not rewrite the card after the run stopped: %s", exc)


@contextmanager
def _phase(phases: dict[str, float], name: str) -> Iterator[None]:
    """Wall seconds of one step, for the summary."""
    start = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = time.perf_counter() - start


def _examples(
    cfg: Config, tokenizer: Any, stats: DataStats, vocab_size: int, plan: CapturePlan
) -> Iterator[Example]:
    if cfg.dataset.path == "synthetic":
        return synthetic_examples(cfg.dataset, vocab_size)
    rows = load_rows(cfg.dataset)
    limit = plan.position_limit.positions if plan.position_limit else None
    return tokenized_examples(rows, cfg.dataset, encoder(tokenizer), cfg.tokenizer.max_length, stats, limit)


def _peek(it: Iterator[Batch]) -> Iterator[Batch]:
    """Pull the first batch now, so dataset errors (missing column, bad file) surface before weights load."""
    first = next(it, None)

    def chained() -> Iterator[Batch]:
        if first is not None:
            yield first
            yield from it

    return chained()


def _run_batches(
    cfg: Config,
    session: CaptureSession,
    batch_iter: Iterator[Batch],
    writer: PartWriter,
    tracker: Tracker,
    resume: ResumeFilter,
    widths: tuple[int, int],
    token_strings_of: Callable[[np.ndarray], list[str]] | None,
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
            writer.submit(flush.tables(widths, token_strings_of), flush.examples)
        t1 = time.perf_counter()
        tracker.batch(batch, kept, step, t1 - t0, buffer.nbytes)
        t0 = t1
    flush = buffer.drain()
    writer.submit(flush.tables(widths, token_strings_of), flush.examples)


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
    buffer.complete(
        [(e.index, e.example_id, e.length, e.token_hash, resume.todo(e.index)) for e in batch.examples]
    )
    return blocks


def config_names(selection: HeadSelection, widths: tuple[int, int]) -> list[str]:
    """The dataset configs this run writes, one per captured (layer, head, kind)."""
    return sorted(
        config_name(layer, head, kind, *widths)
        for layer in selection.layers
        for kind in KINDS
        for head in selection.heads(layer, kind)
    )


def _take_over(store: Store, rid: str, taken: list[str], run_id: str) -> None:
    dropped = store.take_over(rid, taken)
    log.info(
        "output.mode=replace: %d configs now hold only this recipe's rows (%d old files dropped)",
        len(taken),
        dropped,
    )
