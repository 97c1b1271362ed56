"""Writing what a notebook :class:`~qk_sniffer.api.Recording` captured into a capture dir, exactly as a CLI
run would: registered with the store under the recording's recipe, written by the same part writer, one
commit naming every example, then the metadata and card settled."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..capture.gather import ExampleRecord, PendingRows, tables_for
from ..capture.heads import HeadSelection
from ..capture.models import ModelLayout
from ..capture.rows import Block
from ..capture.samplers import Sampler
from ..core.config import CaptureConfig, Config, DatasetConfig, ModelConfig, TokenizerConfig
from ..inputs.data import DataStats
from ..publish import documents
from ..publish.metadata import final_metadata
from ..publish.run_metadata import check_release_of_dir, run_metadata
from ..store import RunInfo, Store
from ..store.manifest import model_identity, recipe_id, recipe_of
from ..store.writer import PartWriter
from .weights import checkpoint_digest, local_checkpoint

log = logging.getLogger(__name__)


def recording_metadata(
    *,
    model_name: str | None,
    model_type: str,
    dtype: str,
    tokenizer_name: str | None,
    max_length: int | None,
    dataset: str | None,
    layout: ModelLayout,
    selection: HeadSelection,
    sampler: Sampler,
    capture_cfg: CaptureConfig,
    attn_implementation: str,
    stats: DataStats,
) -> dict[str, Any]:
    """The run metadata the CLI records, for a model and texts handed over in Python."""
    cfg = Config(
        # Without a name (a model built from a config) the card and branch fall back to the family.
        model=ModelConfig(name=model_name, slug=None if model_name else layout.model_type, dtype=dtype),
        tokenizer=TokenizerConfig(name=tokenizer_name, max_length=max_length),
        dataset=DatasetConfig(path=dataset),  # type: ignore[arg-type] # None: texts from Python
        sampler={"name": sampler.name, **sampler.params()},
        capture=capture_cfg,
    )  # output and tracking stay unset: run_metadata reads neither
    metadata = run_metadata(cfg, layout, selection, sampler, model_type)
    checkpoint = local_checkpoint(cfg.model)
    if checkpoint is not None:  # loaded from a local dir: identified by its files, as a CLI run is
        metadata["weights"] = checkpoint_digest(checkpoint)
    metadata.update(
        attn_implementation=attn_implementation,
        examples=stats.examples,
        tokens=stats.tokens,
        skipped_empty=stats.skipped_empty,
    )
    return metadata


def write_recorded(
    root: Path,
    metadata: dict[str, Any],
    configs: list[str],
    records: list[ExampleRecord],
    blocks: dict[tuple[int, str], list[Block]],
    widths: tuple[int, int],
    token_strings: Callable[[np.ndarray], list[str]] | None,
    stats: DataStats,
    *,
    repo_id: str | None,
    branch: str | None,
) -> None:
    """Register, write and commit the recorded rows in ``root`` (new, empty, or the same model's capture),
    then settle its metadata and card. Refused, writing nothing, where an example is already there."""
    store = Store(root)
    release_note = check_release_of_dir(store.recorded_metadata(), metadata, store.where)
    if release_note:  # rows of another transformers release are there: said here, kept in the metadata
        log.warning(release_note)
    recipe = recipe_of(metadata)
    rid = recipe_id(recipe)
    run_id = uuid.uuid4().hex[:12]
    info = RunInfo(run_id, rid, (0, 1), configs)
    # Every example completes every config: the commit says so, as a CLI run's commits do.
    examples = [(i, eid, n, digest, tuple(configs)) for i, eid, n, digest, _ in records]
    with store.registered(info, recipe, model_identity(metadata), "append"):
        store.new_examples_check(rid, configs, {e[1] for e in examples})
        writer = PartWriter(root, "api", run_id, store.committer(rid, run_id, "api"))
        pending = {key: PendingRows(list(b)) for key, b in blocks.items()}

        def tables() -> Iterator[tuple[str, pa.Table]]:
            for rows in pending.values():
                yield from tables_for(rows, widths, token_strings).items()

        try:
            writer.submit(tables, examples)
        finally:
            writer.close()
        documents.settle(
            store, lambda: final_metadata(store, metadata, rid, stats), repo_id=repo_id, branch=branch
        )
