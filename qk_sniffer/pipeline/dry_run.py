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

import numpy as np
import pyarrow as pa

from ..capture.gather import schema
from ..capture.samplers import Sampler
from ..core.config import Config
from ..core.errors import UserError
from .plan import CapturePlan, plan_capture


def expected_kept_positions(sampler: Sampler, length: int) -> float:
    """Mean number of positions the sampler keeps in one ``length``-token example (per layer and q|k: one
    mask serves every head of a layer and kind)."""
    buckets = sampler.buckets(np.arange(length, dtype=np.int64))
    return float(np.sum(sampler.keep_probability(buckets)))


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
    per_row = row_bytes(layout.head_dim)
    examples = known_examples(cfg)
    return {
        "model": cfg.model.name,
        "revision": cfg.model.revision,
        "model_type": layout.model_type,
        "num_layers": layout.num_layers,
        "num_q_heads": layout.num_q_heads,
        "num_kv_heads": layout.num_kv_heads,
        "head_dim": layout.head_dim,
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
    }


def _amount(value: float | None, unit: str = "") -> str:
    if value is None:
        return "unknown"
    for scale, suffix in ((1e12, " T"), (1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}{unit}"
    return f"{value:.1f} {unit}".rstrip()


def describe(plan: dict[str, Any]) -> list[str]:
    """The plan for people: one line per captured layer, then the sampler and the expected cost."""
    by_layer_q: dict[int, list[int]] = {}
    by_layer_k: dict[int, list[int]] = {}
    for layer, head in plan["query_heads"]:
        by_layer_q.setdefault(layer, []).append(head)
    for layer, head in plan["key_heads"]:
        by_layer_k.setdefault(layer, []).append(head)
    lines = [
        f"dry run: {plan['model'] or plan['model_type']} ({plan['model_type']}, {plan['num_layers']} layers, "
        f"{plan['num_q_heads']} query / {plan['num_kv_heads']} KV heads, head_dim {plan['head_dim']}); "
        "no weights loaded, nothing written",
        f"capturing {len(plan['query_heads'])} query heads and {len(plan['key_heads'])} key heads "
        f"on {len(plan['layers'])} layers ({'pre' if plan['pre_rope'] else 'post'}-RoPE):",
    ]
    for layer in plan["layers"]:
        lines.append(f"  layer {layer:>3}: q {by_layer_q.get(layer, [])}  k {by_layer_k.get(layer, [])}")
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
