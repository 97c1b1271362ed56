"""The dataset card (README.md), regenerated from the store's view plus the run's recorded metadata.

The YAML front matter's ``configs:`` list is what lets ``datasets.load_dataset(<dir or repo>, "l00h00q")``
find each config's files. It names every committed part file explicitly (no glob), so a file that no
trusted commit names (a killed run's leftover, a compaction's old parts before they are deleted) is never
part of what ``load_dataset`` returns.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from ..analysis.figures import figure_section
from ..capture.points import CapturePoint
from ..core.arrow import numpy_values
from ..core.naming import parse_config_name
from ..core.ranges import format_ranges
from ..store import DatasetView, Store
from ..store.files import atomic_file

# The shape first; whatever else the layout records follows in its own order.
# Readable names for the layout fields whose key alone would puzzle a reader; others are shown by key.
LAYOUT_LABELS = {
    "num_q_heads": "Query heads",
    "num_kv_heads": "Key/value heads",
    "rope": "RoPE parameters as configured",
    "rope_type": "RoPE type",
    "rope_theta": "RoPE theta",
    "rope_scaling": "RoPE scaling",
    "rope_by_layer_type": "RoPE by layer type",
    "nope_layers": "Layers without rotation (pre-RoPE == post-RoPE)",
    "cross_attention_layers": "Cross-attention layers (not captured)",
    "linear_attention_layers": "Layers without softmax attention (state-space, linear; not captured)",
    "q_heads_per_layer": "Query heads per layer (0: no attention)",
    "kv_heads_per_layer": "Key/value heads per layer (0: no attention)",
    "head_dims": "Head dim per layer (0: no attention)",
    "partial_rotary_factor": "Rotated fraction of head_dim",
    "position_encoding": "Position encoding",
    "alibi_slopes": "ALiBi slope per query head (logit = scale * q.k + slope * key position)",
    "query_prescale": "Factor already in the captured query (its attention then scales q.k by 1)",
}
# Per-layer fields recorded only for families whose layers differ; empty, every layer has the uniform value.
PER_LAYER_OF = {
    "head_dims": "head_dim",
    "q_heads_per_layer": "num_q_heads",
    "kv_heads_per_layer": "num_kv_heads",
}
# Layout fields with one value per query head (not per layer, even when both counts agree).
PER_HEAD = ("alibi_slopes",)
LAYOUT_FIRST = ("model_type", "num_layers", "num_q_heads", "num_kv_heads", "head_dim", "sliding_windows")
LOCAL_DATASETS = (None, "embedded", "synthetic", "json", "csv", "parquet", "text", "arrow")


@dataclass
class DiskSummary:
    """What the output dir holds, read from the Parquet footers and bucket columns."""

    configs: dict[str, int] = field(default_factory=dict)  # config name -> rows
    rows_per_bucket: dict[str, Counter[int]] = field(default_factory=dict)  # kind -> bucket -> rows
    coverage: dict[tuple[int, str], list[int]] = field(default_factory=dict)  # (layer, kind) -> heads

    @property
    def total_rows(self) -> int:
        return sum(self.configs.values())


def summarize(store: Store, view: DatasetView) -> DiskSummary:
    """Rows per config, per bucket and coverage, read from the bucket column of the committed files."""
    summary = DiskSummary()
    buckets: dict[str, Counter[int]] = defaultdict(Counter)
    for config in view.configs:
        parsed = parse_config_name(config)
        assert parsed is not None
        layer, head, kind = parsed
        rows = 0
        for part in view.files[config]:
            # ParquetFile, not read_table: read_table imports pyarrow.dataset (and with it pandas).
            column = numpy_values(pq.ParquetFile(store.root / part.rel).read(columns=["bucket"]).column(0))
            rows += len(column)
            values, counts = _unique(column)
            for value, count in zip(values, counts, strict=True):
                buckets[kind][int(value)] += int(count)
        if rows:
            summary.configs[config] = rows
            summary.coverage.setdefault((layer, kind), []).append(head)
    summary.rows_per_bucket = dict(buckets)
    return summary


def _unique(values: Any) -> tuple[Any, Any]:
    import numpy as np

    return np.unique(values, return_counts=True)  # type: ignore[no-any-return]


def front_matter(view: DatasetView, summary: DiskSummary, metadata: dict[str, Any]) -> dict[str, Any]:
    model = metadata.get("model", {})
    matter: dict[str, Any] = {
        "configs": [
            {
                "config_name": name,
                "data_files": [{"split": "train", "path": [p.rel for p in view.files[name]]}],
            }
            for name in sorted(summary.configs)
        ],
        # No revision when none was pinned: the model's default branch, whatever it is named.
        "models": [
            {"name": model.get("name") or model.get("slug")}
            | ({"revision": model["revision"]} if model.get("revision") else {})
        ],
        "tags": ["attention", "query-key", "interpretability", "qk-sniffer"],
    }
    if metadata.get("dataset", {}).get("path") not in LOCAL_DATASETS:
        matter["source_datasets"] = [metadata["dataset"]["path"]]
    return matter


def render(store: Store, repo_id: str | None = None, branch: str | None = None) -> str:
    """The card for what the dataset holds. With a repo the loading snippet names it and its branch
    (the caller derives it like the push does); without one it names the local dir. Figures drawn from
    exactly this data are embedded."""
    view = store.view()
    summary = summarize(store, view)
    metadata = store.recorded_metadata()
    matter = yaml.safe_dump(front_matter(view, summary, metadata), sort_keys=False)
    where = repo_id or str(store.root.resolve())
    figures = "\n".join(figure_section(store.root))
    body = _body(summary, metadata, where, branch if repo_id else None)
    return f"---\n{matter}---\n\n{body}" + (f"\n{figures}" if figures else "")


def write_card(store: Store, repo_id: str | None = None, branch: str | None = None) -> Path:
    with atomic_file(store.paths.card, "w") as f:
        f.write(render(store, repo_id, branch))
    return store.paths.card


def _body(summary: DiskSummary, meta: dict[str, Any], where: str, branch: str | None) -> str:
    model = meta.get("model", {})
    lines = [
        f"# Query/key vectors of {model.get('name') or model.get('slug') or 'a model'}",
        "",
        "Sampled attention query and key vectors captured with qk-sniffer. One config per "
        "(layer, head, q|k), named `l{layer}h{head}{q|k}`; each row is one token position of one example.",
        "",
    ]
    lines += _model_section(meta)
    lines += _source_section(meta)
    lines += _sampling_section(meta)
    lines += _layout_section(meta.get("layout", {}))
    notes = meta.get("notes") or []
    if notes:
        lines += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    lines += [
        "## Columns",
        "",
        "| column | type | meaning |",
        "|---|---|---|",
        "| bucket | int32 | sampler bucket of the position |",
        "| example_id | int64 | the source text: its id (integer, or a string hashed to int64) or row |",
        "| position | int32 | token position in the example (0-based) |",
        "| vector | fixed_size_list<float32> | the query or key vector of that head |",
        "| sliding_window | int32 | the layer's window, null on full-attention layers |",
    ]
    if meta.get("capture", {}).get("token_strings"):
        lines.append("| token_str | string | the token at that position |")
    lines += ["", f"## Rows per bucket ({summary.total_rows} rows in {len(summary.configs)} configs)", ""]
    lines += _bucket_table(summary)
    lines += ["", "## Coverage", ""]
    lines += _coverage_table(summary, meta.get("layout", {}))
    first = min(summary.configs) if summary.configs else "l00h00q"
    revision = f', revision="{branch}"' if branch else ""
    lines += [
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'ds = load_dataset("{where}", "{first}"{revision}, split="train")',
        "```",
        "",
    ]
    return "\n".join(lines)


def _model_section(meta: dict[str, Any]) -> list[str]:
    model = meta.get("model", {})
    revision = (
        [f"- Revision: `{model['revision']}`"]
        if model.get("revision")
        else ["- Revision: not pinned (the repository's default branch)"]
        if model.get("name") and not model.get("random_init")
        else []
    )
    lines = [
        "## Model",
        "",
        f"- Name: `{model.get('name') or '(random weights: ' + str(model.get('slug')) + ')'}`",
        *revision,
        f"- dtype: {model.get('dtype')}, attention backend: {meta.get('attn_implementation')}",
    ]
    if model.get("random_init") or not model.get("name"):
        lines.append(f"- Random weights (seed {model.get('seed')})")
    if model.get("config_overrides"):
        lines.append(f"- Config overrides: {_inline(model['config_overrides'])}")
    return [*lines, *_release_lines(meta), ""]


def _release_lines(meta: dict[str, Any]) -> list[str]:
    """The releases the rows were captured with, and what was checked on them (absent in older dirs)."""
    versions = meta.get("versions")
    if not versions:
        return []
    line = (
        f"- Captured with transformers {versions.get('transformers')}, torch {versions.get('torch')}, "
        f"tokenizers {versions.get('tokenizers')}"
    )
    matrix = meta.get("support_matrix") or {}
    line += {
        "matrix": "; the family was measured exact on this release (the support matrix)",
        "probe": f"; the nearest support matrix is transformers {matrix.get('measured_on')}'s, so the family "
        "passed an exactness probe on this release before its weights loaded",
        "self-check": "; the family is in no support matrix: it passed a self-check against its own eager "
        "attention after loading",
    }.get(str(matrix.get("check")), "")
    lines = [line]
    if meta.get("earlier_transformers"):
        lines.append(
            f"- Earlier runs into this dataset used transformers {', '.join(meta['earlier_transformers'])}"
        )
    lines += [f"- On this release: {fact}" for fact in (meta.get("backend_facts") or {}).get("in_force", [])]
    return lines


def _source_section(meta: dict[str, Any]) -> list[str]:
    dataset = meta.get("dataset", {})
    source = f"`{dataset.get('path')}`" + (f" (config `{dataset['name']}`)" if dataset.get("name") else "")
    lines = [
        "## Source data",
        "",
        f"- Dataset: {source}, split `{dataset.get('split')}`, text column `{dataset.get('text_column')}`, "
        f"ids from `{dataset.get('id_column') or 'row index'}`",
    ]
    if dataset.get("max_samples") is not None:
        lines.append(f"- First {dataset['max_samples']} rows")
    if int(dataset.get("num_shards") or 1) > 1:
        lines.append(f"- Shard {dataset.get('shard_index')} of {dataset.get('num_shards')}")
    lines += [
        f"- Tokenizer: {_tokenizer(meta)}, "
        + (f"max_length {meta['max_length']}" if meta.get("max_length") else "texts not truncated"),
        f"- Captured: {meta.get('examples', 0)} examples, {meta.get('tokens', 0)} tokens"
        + (f", {meta['skipped_empty']} empty texts skipped" if meta.get("skipped_empty") else "")
        + (
            f", {meta['truncated_to_model_limit']} texts cut to the model's positions"
            if meta.get("truncated_to_model_limit")
            else ""
        ),
        "",
    ]
    return lines


def _tokenizer(meta: dict[str, Any]) -> str:
    """Which tokenizer made the token ids, as the run chose it (inputs.tokenization.load_tokenizer)."""
    if meta.get("dataset", {}).get("path") == "synthetic":
        return "none (random token ids, dataset=synthetic)"
    if (meta.get("tokenizer") or {}).get("name"):
        return f"`{meta['tokenizer']['name']}`"
    if (meta.get("model") or {}).get("name"):
        return f"the model's own (`{meta['model']['name']}`)"
    return "the small tokenizer shipped with qk_sniffer (`qk_sniffer/resources/tokenizer.json`)"


def _sampling_section(meta: dict[str, Any]) -> list[str]:
    sampler = dict(meta.get("sampler", {}))
    capture = meta.get("capture", {})
    name = sampler.pop("name", None)
    params = ", ".join(f"{k}={v}" for k, v in sampler.items()) or "no parameters"
    point = CapturePoint(meta.get("capture_point") or CapturePoint.of(bool(capture.get("pre_rope"))))
    kinds = [
        k for k, on in (("queries", capture.get("queries", True)), ("keys", capture.get("keys", True))) if on
    ]
    lines = [
        "## Sampling",
        "",
        f"- Vectors: {' and '.join(kinds)} at capture point `{point.value}` ({point.meaning}), float32",
        f"- Sampler: `{name}` with {params}",
        "- Positions are drawn on the host with numpy, seeded by example, layer and q|k. The original "
        "qk-sniffer drew them on the GPU with torch's generator, so qk_sniffer's attention-plasticity "
        "presets reproduce the original runs' settings and heads, not their rows (the same distribution, "
        "another sample).",
        f"- Head sampling: {_head_sampling(capture)}",
        f"- Layers requested: {_ranges(capture['layers']) if capture.get('layers') else 'all'}; query heads "
        f"requested: {_ranges(capture['heads']) if capture.get('heads') else 'all'}"
        + ("; sliding-window layers skipped" if capture.get("full_attention_only") else ""),
        "",
    ]
    return lines


def _layout_section(layout: dict[str, Any]) -> list[str]:
    """Every field the layout records, whatever a model family adds (rope, NoPE or cross-attention layers)."""
    lines = ["## Layer layout", ""]
    num_layers = layout.get("num_layers")
    first = [k for k in LAYOUT_FIRST if k in layout]
    for key in [*first, *(k for k in layout if k not in first)]:
        value = layout[key]
        if _not_applicable(key, value, layout):
            continue
        label = LAYOUT_LABELS.get(key, key.replace("_", " ").capitalize())
        if key in PER_LAYER_OF and not value:
            uniform = label.split(" (")[0]  # "(0: no attention)" says nothing when every layer is the same
            lines.append(f"- {uniform}: {layout.get(PER_LAYER_OF[key], '?')} in every layer")
            continue
        lines.append(f"- {label}: {_layout_value(key, value, num_layers)}")
    return [*lines, ""]


# Fields that describe one way of encoding positions: said only for models that use it.
ROPE_FIELDS = (
    "rope",
    "rope_type",
    "rope_theta",
    "rope_scaling",
    "rope_by_layer_type",
    "partial_rotary_factor",
    "nope_layers",
)
ONLY_WHEN_SET = ("alibi_slopes", "query_prescale")


def _not_applicable(key: str, value: Any, layout: dict[str, Any]) -> bool:
    """A field that says nothing about this model: RoPE settings of a model without RoPE (GPT-2's learned
    positions, BLOOM's ALiBi), ALiBi slopes or a query prescale it does not have."""
    if key in ONLY_WHEN_SET:
        return value is None or value == [] or value == ()
    rotates = layout.get("position_encoding", "rope") == "rope"
    return not rotates and key in ROPE_FIELDS


def _layout_value(key: str, value: Any, num_layers: Any) -> str:
    """``*_layers`` fields list layer indices; other lists with one entry per layer are per-layer values."""
    if value is None or value == [] or value == {}:
        return "none"
    if isinstance(value, list | tuple) and all(v is None for v in value):
        return "none"
    if isinstance(value, dict):
        return _inline(value)
    if isinstance(value, list | tuple):
        if key in PER_HEAD:
            return ", ".join(f"head {h}: {v:.6g}" for h, v in enumerate(value))
        if key.endswith("_layers") and all(isinstance(v, int) for v in value):
            return f"layers {_ranges(list(value))}"
        if len(value) == num_layers:
            return _per_layer(list(value))
        return ", ".join(str(v) for v in value)
    return str(value)


def _per_layer(values: list[Any]) -> str:
    """A per-layer list (e.g. sliding windows, None = full attention) grouped by value."""
    groups: dict[str, list[int]] = defaultdict(list)
    for layer, value in enumerate(values):
        groups["full attention" if value is None else str(value)].append(layer)
    return "; ".join(f"{value}: layers {_ranges(layers)}" for value, layers in groups.items())


def _inline(mapping: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v) if isinstance(v, dict | list) else v}" for k, v in mapping.items())


def _head_sampling(capture: dict[str, Any]) -> str:
    sampling = capture.get("head_sampling") or {}
    if sampling.get("count"):
        return (
            f"{sampling['count']} query heads sampled with seed {sampling.get('seed')} (their key heads kept)"
        )
    return "all allowed heads"


def _coverage_table(summary: DiskSummary, layout: dict[str, Any]) -> list[str]:
    """Layers x heads on disk: which query and key heads each captured layer has."""
    layers = sorted({layer for layer, _ in summary.coverage})
    lines = [
        f"{len(layers)} of {layout.get('num_layers', '?')} layers captured.",
        "",
        "| layer | query heads | key heads |",
        "|---|---|---|",
    ]
    for layer in layers:
        q = summary.coverage.get((layer, "q"), [])
        k = summary.coverage.get((layer, "k"), [])
        lines.append(f"| {layer} | {_ranges(q)} | {_ranges(k)} |")
    return lines


def _bucket_table(summary: DiskSummary) -> list[str]:
    buckets = sorted({b for c in summary.rows_per_bucket.values() for b in c})
    lines = ["| bucket | query rows | key rows |", "|---|---|---|"]
    for b in buckets:
        q = summary.rows_per_bucket.get("q", Counter())[b]
        k = summary.rows_per_bucket.get("k", Counter())[b]
        lines.append(f"| {b} | {q} | {k} |")
    return lines


def _ranges(values: list[int]) -> str:
    return format_ranges(values) or "-"
