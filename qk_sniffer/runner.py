"""The run, as short named steps: check -> build -> capture -> export -> publish."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from . import card, hub
from .capture import Block
from .config import Config
from .data import Batch, DataStats, Example, batches, load_rows, synthetic_examples, tokenized_examples
from .export import ParquetWriter, RowBuffer, name_widths
from .heads import HeadSelection, select_heads
from .models import ModelLayout, build_config, layout_from_config, load_model
from .outdir import claim_output_dir
from .samplers import Sampler, build_sampler
from .session import CaptureSession
from .tokenization import encoder, load_tokenizer, pad_id, token_strings
from .tracking import Tracker, make_tracker
from .validate import validate

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


def resolve_output_dir(cfg: Config) -> Path:
    if cfg.output.dir:
        return Path(cfg.output.dir).expanduser().resolve()
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) / "capture"


def run(cfg: Config) -> RunResult:
    t_start = time.perf_counter()
    phases: dict[str, float] = {}
    # 1. Check everything that needs no weights: config values, layer/head ranges, output dir, dataset.
    validate(cfg)
    model_config = build_config(cfg.model)
    layout = layout_from_config(model_config)
    validate(cfg, layout)
    selection = select_heads(cfg.capture, layout)
    sampler = build_sampler(cfg.sampler)
    out_dir = resolve_output_dir(cfg)
    metadata = run_metadata(cfg, layout, selection, sampler)
    claim_output_dir(out_dir, metadata, mode=cfg.output.mode)
    hub.preflight(cfg.output.hub)
    tokenizer = None if cfg.dataset.path == "synthetic" else load_tokenizer(cfg.tokenizer, cfg.model)
    stats = DataStats()
    examples = _examples(cfg, tokenizer, stats, int(model_config.get_text_config().vocab_size))
    first_batches = _peek(batches(examples, cfg.inference.batch_size, pad_id(tokenizer), stats))

    tracker = make_tracker(cfg, metadata)
    try:
        # 2. Build.
        t0 = time.perf_counter()
        model = load_model(cfg.model, model_config)
        phases["load_s"] = time.perf_counter() - t0
        metadata["attn_implementation"] = str(model.config.get_text_config()._attn_implementation)
        widths = name_widths(layout.num_layers, max(layout.num_q_heads, layout.num_kv_heads))
        writer = ParquetWriter(
            out_dir, f"part-{cfg.dataset.shard_index:03d}-{uuid.uuid4().hex[:8]}", widths,
            token_strings(tokenizer) if (cfg.capture.token_strings and tokenizer is not None) else None,
        )
        # 3. Capture.
        t0 = time.perf_counter()
        with CaptureSession(model, selection, sampler, pre_rope=cfg.capture.pre_rope) as session:
            _capture_loop(cfg, session, first_batches, writer, tracker)
        writer.close()
        phases["capture_s"] = time.perf_counter() - t0
        # 4. Export: metadata and card from what is on disk.
        t0 = time.perf_counter()
        metadata.update(examples=stats.examples, tokens=stats.tokens, skipped_empty=stats.skipped_empty)
        _write_metadata(out_dir, metadata)
        card.write_card(out_dir, cfg.output.hub.repo_id, cfg.output.hub.branch)
        phases["export_s"] = time.perf_counter() - t0
        # 5. Publish (only with output.hub.push=true).
        t0 = time.perf_counter()
        hub.publish(cfg, out_dir)
        phases["push_s"] = time.perf_counter() - t0
        result = RunResult(out_dir, writer.rows_written, stats.examples, stats.tokens, stats.skipped_empty,
                           phases=phases)
        phases["total_s"] = time.perf_counter() - t_start
        tracker.summary(result, writer.bytes_written)
    finally:
        tracker.finish()
    if stats.skipped_empty:
        log.warning("skipped %d empty or null texts", stats.skipped_empty)
    return result


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


def _capture_loop(cfg: Config, session: CaptureSession, batch_iter: Iterator[Batch], writer: ParquetWriter,
                  tracker: Tracker) -> None:
    buffer = RowBuffer()
    cap_bytes = cfg.output.max_buffer_mb * 1024 * 1024
    examples_since_flush = 0
    pending = None
    for batch in batch_iter:
        t0 = time.perf_counter()
        copy = session.forward(batch)
        # The previous batch's copy finished while this forward was queued; collect it now.
        if pending is not None:
            _collect(pending.result(), buffer, tracker)
        pending = copy
        examples_since_flush += len(batch.examples)
        if buffer.nbytes >= cap_bytes or examples_since_flush >= cfg.output.flush_every_examples:
            writer.submit(buffer.drain())
            examples_since_flush = 0
        tracker.batch(batch, session.timings.last, time.perf_counter() - t0, buffer.nbytes)
    if pending is not None:
        _collect(pending.result(), buffer, tracker)
    writer.submit(buffer.drain())


def _collect(blocks: list[Block], buffer: RowBuffer, tracker: Tracker) -> None:
    tracker.rows(blocks)
    buffer.add(blocks)


def run_metadata(cfg: Config, layout: ModelLayout, selection: HeadSelection, sampler: Sampler) -> dict[str, Any]:
    """What the card and later runs need to know about this run (no secrets: tokens never reach cfg)."""
    model = OmegaConf.to_container(OmegaConf.structured(cfg.model) if not OmegaConf.is_config(cfg.model)
                                   else cfg.model, resolve=True)
    assert isinstance(model, dict)
    model.pop("architecture", None)
    return {
        "model": model,
        "layout": asdict(layout),
        "dataset": _plain(cfg.dataset),
        "tokenizer": _plain(cfg.tokenizer),
        "max_length": cfg.tokenizer.max_length,
        "sampler": {"name": sampler.name, **sampler.params()},
        "capture": _plain(cfg.capture),
        "selection": {"q": {str(k): list(v) for k, v in selection.q_heads.items()},
                      "k": {str(k): list(v) for k, v in selection.k_heads.items()}},
    }


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else asdict(node)


def _write_metadata(out_dir: Path, metadata: dict[str, Any]) -> None:
    path = out_dir / card.METADATA
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str))
    tmp.replace(path)
