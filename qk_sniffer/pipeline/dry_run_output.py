"""The dry run's plan for people (one line per captured layer, the sampler, the expected cost) and for
scripts (one JSON line last). Light on purpose: a remembered plan is shown without importing torch."""

from __future__ import annotations

import json
from typing import Any

from ..core.ranges import format_ranges


def show(plan: dict[str, Any]) -> None:
    """Print the plan, then one JSON line."""
    for line in describe(plan):
        print(line)
    print(json.dumps(plan, separators=(",", ":")))


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
