"""``dry_run=true``: what a run would capture and what it would cost, worked out without weights.

It reads the model's config only (a local checkpoint dir, the Hub, or with ``model.random_init=true`` the
preset's ``architecture``), selects the heads and builds the sampler exactly as a run does
(:func:`qk_sniffer.pipeline.plan.plan_capture`), and writes nothing: no output dir, no dataset read beyond
what its size needs. Its last stdout line is one JSON object, so scripts can read the plan.
"""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa

from ..capture.chunking import ChunkSizes
from ..capture.memory import GB, estimate
from ..capture.models import ModelLayout
from ..capture.samplers import KINDS
from ..core.arrow import schema
from ..core.child import LogRecords
from ..core.config import Config
from ..core.errors import UserError
from .budget import Budget, expected_kept_positions, run_budget
from .dry_run_cache import remember
from .dry_run_output import show
from .plan import CapturePlan, plan_capture

# The chunk the dry run shows "with chunking" at, when the budget needs none.
SHOWN_CHUNK = 4096


def row_bytes(head_dim: int) -> int:
    """Bytes of one row's fixed-width columns (bucket, example_id, position, vector, sliding_window) before
    Parquet encoding, read off the schema the writer uses."""

    def width(dtype: pa.DataType) -> int:
        if isinstance(dtype, pa.FixedSizeListType):
            return int(dtype.list_size) * width(dtype.value_type)
        return dtype.bit_width // 8

    return sum(width(f.type) for f in schema(head_dim, token_strings=False))


def example_length(cfg: Config) -> int | None:
    """The tokens per example the estimate assumes: the synthetic length, else ``tokenizer.max_length`` (each
    text at most that long: the estimate is then an upper bound per example)."""
    if cfg.dataset.path == "synthetic":
        n = cfg.dataset.seq_len
        return min(n, cfg.tokenizer.max_length) if cfg.tokenizer.max_length else n
    return cfg.tokenizer.max_length


def known_examples(cfg: Config) -> int | None:
    """How many examples this shard would process, when that is known without reading a dataset."""
    from ..inputs.data import EMBEDDED_CORPUS, select_rows

    data = cfg.dataset
    if data.path == "synthetic":
        rows: list[Any] = list(range(data.num_examples))
        return len(list(select_rows(rows, data)))
    if data.path == "embedded":
        with open(EMBEDDED_CORPUS, encoding="utf-8") as f:
            rows = [line for line in f if line.strip()]
        return len(list(select_rows(rows, data)))
    return None


def _plan_without_weights(cfg: Config) -> CapturePlan:
    name = cfg.model.name
    try:
        return plan_capture(cfg)
    except UserError as exc:
        if (
            name
            and not cfg.model.random_init
            and not os.path.isdir(name)
            and "cannot load its config" in str(exc)
        ):
            raise UserError(
                f"dry_run: model.name={name!r} is not a local directory and its config could not be "
                "fetched from the Hub (offline?). Pass a local checkpoint dir as model.name, or "
                "model.random_init=true to plan from the preset's model.architecture."
            ) from None
        raise


def dry_run_plan(cfg: Config) -> dict[str, Any]:
    """The plan as one JSON-ready dict (see the module docstring)."""
    plan = _plan_without_weights(cfg)
    sel, layout = plan.selection, plan.layout
    length = example_length(cfg)
    kept = expected_kept_positions(plan.sampler, length) if length else None
    vectors = sel.count("q") + sel.count("k")
    rows = kept * vectors if kept is not None else None
    # Bytes per row, averaged over the selected vectors: families whose layers differ in head_dim (Gemma 4,
    # Inkling) write rows of their own layer's length.
    widths = [row_bytes(layout.head_dim_of(layer)) for layer in sel.layers for kind in KINDS
              for _ in sel.heads(layer, kind)]  # fmt: skip
    per_row = round(sum(widths) / len(widths)) if widths else row_bytes(layout.head_dim)
    examples = known_examples(cfg)
    memory = memory_plan(cfg, plan, length)
    return {
        "model": cfg.model.name,
        "revision": cfg.model.revision,
        "model_type": layout.model_type,
        "num_layers": layout.num_layers,
        "num_q_heads": layout.num_q_heads,
        "num_kv_heads": layout.num_kv_heads,
        "head_dim": layout.head_dim,
        **per_layer_shapes(layout),
        "skipped_layers": skipped_layers(layout),
        "layers": sel.layers,
        "query_heads": sorted([layer, h] for layer, hs in sel.q_heads.items() for h in hs),
        "key_heads": sorted([layer, h] for layer, hs in sel.k_heads.items() for h in hs),
        "sampler": {"name": plan.sampler.name, **plan.sampler.params()},
        "pre_rope": cfg.capture.pre_rope,
        "tokens_per_example": length,
        "expected_positions_per_example": kept,
        "expected_rows_per_example": rows,
        "bytes_per_row": per_row,
        "expected_bytes_per_example": rows * per_row if rows is not None else None,
        "examples": examples,
        "expected_rows_total": rows * examples if rows is not None and examples is not None else None,
        "expected_bytes_total": rows * per_row * examples
        if rows is not None and examples is not None
        else None,
        "memory": memory,
    }


def memory_plan(cfg: Config, plan: CapturePlan, length: int | None) -> dict[str, Any] | None:
    """Estimated peak memory of one batch at ``length`` with and without chunking, and what the budget picks;
    a plan that cannot fit is refused here, naming the longest length that would."""
    if length is None:
        return None
    budget: Budget = run_budget(cfg, plan)
    batch = cfg.inference.batch_size
    chosen = budget.check(batch, length)  # raises the refusal
    shown = (
        chosen.sizes
        if chosen.sizes.tokens
        else ChunkSizes(min(SHOWN_CHUNK, length), min(SHOWN_CHUNK, length))
    )
    chunked = estimate(budget.shape, batch, length, shown, budget.kept_bytes(batch, length))
    return {
        "budget_gb": round(budget.budget / GB, 2),
        "budget_source": budget.source,
        "attn_implementation": budget.shape.backend,
        "weights_gb": round(chosen.one_pass.weights / GB, 2),
        "one_pass_peak_gb": round(chosen.one_pass.peak / GB, 2),
        "chunked_peak_gb": round(chunked.peak / GB, 2),
        "chunked_token_chunk": shown.tokens,
        "token_chunk": chosen.sizes.tokens,
        "query_chunk": chosen.sizes.queries,
        "peak_gb": round(chosen.chosen.peak / GB, 2),
        "longest_fitting_tokens": budget.longest(batch),
    }


def per_layer_shapes(layout: ModelLayout) -> dict[str, list[int]]:
    """Per-layer heads and head dims, only where the model's layers differ (read off its attention calls)."""
    fields = {
        "q_heads_per_layer": layout.q_heads_per_layer,
        "kv_heads_per_layer": layout.kv_heads_per_layer,
        "head_dims": layout.head_dims,
    }
    return {key: list(values) for key, values in fields.items() if values}


def skipped_layers(layout: ModelLayout) -> dict[str, list[int]]:
    """Decoder layers with no self-attention to capture, by why."""
    return {
        key: list(values)
        for key, values in (
            ("cross_attention", layout.cross_attention_layers),
            ("no_softmax_attention", layout.linear_attention_layers),
        )
        if values
    }


def dry_run(cfg: Config) -> dict[str, Any]:
    """Print the plan, then one JSON line; return the plan. A plan made from local inputs alone is
    remembered (:mod:`.dry_run_cache`), with what it logged, for the next identical dry run."""
    with LogRecords.attached("qk_sniffer") as records:
        plan = dry_run_plan(cfg)
    remember(cfg, plan, records.take())
    show(plan)
    return plan
