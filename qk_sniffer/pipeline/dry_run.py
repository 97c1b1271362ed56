"""``dry_run=true``: what a run would capture and what it would cost, worked out without weights.

It reads the model's config only (a local checkpoint dir, the Hub, or with ``model.random_init=true`` the
preset's ``architecture``), selects the heads and builds the sampler exactly as a run does
(:func:`qk_sniffer.pipeline.plan.plan_capture`), and writes nothing: no output dir, no dataset read beyond
what its size needs. Its last stdout line is one JSON object, so scripts can read the plan.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pyarrow as pa

from ..capture.chunking import ChunkSizes
from ..capture.memory import GB, estimate
from ..capture.models import ModelLayout
from ..capture.samplers import KINDS
from ..core.arrow import schema
from ..core.config import Config
from ..core.errors import UserError
from ..core.ranges import format_ranges
from .budget import Budget, expected_kept_positions, run_budget
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


def _amount(value: float | None, unit: str = "") -> str:
    if value is None:
        return "unknown"
    for scale, suffix in ((1e12, " T"), (1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}{unit}"
    return f"{value:.1f} {unit}".rstrip()


_PER_LAYER = {"q_heads_per_layer": "query heads", "kv_heads_per_layer": "KV heads", "head_dims": "head_dim"}


def describe(plan: dict[str, Any]) -> list[str]:
    """The plan for people: one line per captured layer, then the sampler and the expected cost."""
    by_layer_q: dict[int, list[int]] = {}
    by_layer_k: dict[int, list[int]] = {}
    for layer, head in plan["query_heads"]:
        by_layer_q.setdefault(layer, []).append(head)
    for layer, head in plan["key_heads"]:
        by_layer_k.setdefault(layer, []).append(head)
    differ = " in most layers, per layer below" if any(k in plan for k in _PER_LAYER) else ""
    lines = [
        f"dry run: {plan['model'] or plan['model_type']} ({plan['model_type']}, {plan['num_layers']} layers, "
        f"{plan['num_q_heads']} query / {plan['num_kv_heads']} KV heads, head_dim {plan['head_dim']}"
        f"{differ}); no weights loaded, nothing written",
        f"capturing {len(plan['query_heads'])} query heads and {len(plan['key_heads'])} key heads "
        f"on {len(plan['layers'])} layers ({'pre' if plan['pre_rope'] else 'post'}-RoPE):",
    ]
    for layer in plan["layers"]:
        shape = ", ".join(f"{label} {plan[key][layer]}" for key, label in _PER_LAYER.items() if key in plan)
        shape = f" ({shape})" if shape else ""
        heads = f"q {by_layer_q.get(layer, [])}  k {by_layer_k.get(layer, [])}"
        lines.append(f"  layer {layer:>3}{shape}: {heads}")
    for why, layers in plan["skipped_layers"].items():
        lines.append(f"  skipped ({why.replace('_', ' ')}): layers {format_ranges(layers)}")
    params = ", ".join(f"{k}={v}" for k, v in plan["sampler"].items() if k != "name")
    lines.append(f"sampler: {plan['sampler']['name']} ({params})")
    length = plan["tokens_per_example"]
    if length is None:
        lines.append("tokenizer.max_length is null: the rows per example depend on each text's length")
    else:
        lines.append(
            f"per example of {length} tokens: {plan['expected_positions_per_example']:.1f} positions per "
            f"layer and q|k, {_amount(plan['expected_rows_per_example'])} rows, "
            f"{_amount(plan['expected_bytes_per_example'], 'B')} ({plan['bytes_per_row']} B per row before "
            "Parquet encoding and compression)"
        )
    memory = plan["memory"]
    if memory is not None:
        chunk = f"token_chunk={memory['token_chunk']}" if memory["token_chunk"] else "one pass"
        lines.append(
            f"memory (estimate, {memory['attn_implementation']}): weights {memory['weights_gb']} GB; peak "
            f"{memory['one_pass_peak_gb']} GB in one pass, {memory['chunked_peak_gb']} GB with "
            f"token_chunk={memory['chunked_token_chunk']}; budget {memory['budget_gb']} GB "
            f"({memory['budget_source']}): runs {chunk}, peak {memory['peak_gb']} GB; fits up to "
            f"{memory['longest_fitting_tokens']} tokens"
        )
    if plan["examples"] is not None and plan["expected_rows_total"] is not None:
        lines.append(
            f"for {plan['examples']} examples: {_amount(plan['expected_rows_total'])} rows, "
            f"{_amount(plan['expected_bytes_total'], 'B')}"
        )
    elif plan["examples"] is not None:
        lines.append(f"{plan['examples']} examples; totals need a length per example (tokenizer.max_length)")
    else:
        lines.append("dataset size unknown before reading it: no totals (multiply by the number of examples)")
    return lines


def dry_run(cfg: Config) -> dict[str, Any]:
    """Print the plan, then one JSON line; return the plan."""
    plan = dry_run_plan(cfg)
    for line in describe(plan):
        print(line)
    print(json.dumps(plan, separators=(",", ":")))
    return plan
