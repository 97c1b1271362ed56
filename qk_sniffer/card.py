"""The dataset card (README.md), regenerated from what is on disk plus the run's recorded metadata.

The YAML front matter's ``configs:`` list is what lets ``datasets.load_dataset(<dir or repo>, "l00h00q")``
find each config's files.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

CARD = "README.md"
METADATA = "qk_sniffer.json"
CONFIG_DIR = re.compile(r"^l(\d+)h(\d+)([qk])$")


@dataclass
class DiskSummary:
    """What the output dir holds, read from the Parquet footers and bucket columns."""

    configs: dict[str, int] = field(default_factory=dict)  # config name -> rows
    rows_per_bucket: dict[str, Counter[int]] = field(default_factory=dict)  # kind -> bucket -> rows
    coverage: dict[tuple[int, str], list[int]] = field(default_factory=dict)  # (layer, kind) -> heads

    @property
    def total_rows(self) -> int:
        return sum(self.configs.values())


def config_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and CONFIG_DIR.match(p.name)) if root.exists() else []


def summarize(root: Path) -> DiskSummary:
    summary = DiskSummary()
    buckets: dict[str, Counter[int]] = defaultdict(Counter)
    for directory in config_dirs(root):
        match = CONFIG_DIR.match(directory.name)
        assert match is not None
        layer, head, kind = int(match[1]), int(match[2]), match[3]
        rows = 0
        for part in sorted(directory.glob("*.parquet")):
            column = pq.read_table(part, columns=["bucket"]).column("bucket").to_numpy()
            rows += len(column)
            values, counts = _unique(column)
            for value, count in zip(values, counts, strict=True):
                buckets[kind][int(value)] += int(count)
        if rows:
            summary.configs[directory.name] = rows
            summary.coverage.setdefault((layer, kind), []).append(head)
    summary.rows_per_bucket = dict(buckets)
    return summary


def _unique(values: Any) -> tuple[Any, Any]:
    import numpy as np

    return np.unique(values, return_counts=True)  # type: ignore[no-any-return]


def read_metadata(root: Path) -> dict[str, Any]:
    path = root / METADATA
    return json.loads(path.read_text()) if path.exists() else {}


def front_matter(summary: DiskSummary, metadata: dict[str, Any]) -> dict[str, Any]:
    model = metadata.get("model", {})
    matter: dict[str, Any] = {
        "configs": [
            {"config_name": name, "data_files": [{"split": "train", "path": f"{name}/*.parquet"}]}
            for name in sorted(summary.configs)
        ],
        "models": [{"name": model.get("name"), "revision": model.get("revision")}],
        "tags": ["attention", "query-key", "interpretability", "qk-sniffer"],
    }
    if metadata.get("dataset", {}).get("path") not in (None, "embedded", "synthetic", "json", "csv", "parquet"):
        matter["source_datasets"] = [metadata["dataset"]["path"]]
    return matter


def render(root: Path, repo_id: str | None = None, branch: str | None = None) -> str:
    summary = summarize(root)
    metadata = read_metadata(root)
    matter = yaml.safe_dump(front_matter(summary, metadata), sort_keys=False)
    return f"---\n{matter}---\n\n{_body(summary, metadata, repo_id, branch)}"


def write_card(root: Path, repo_id: str | None = None, branch: str | None = None) -> Path:
    path = root / CARD
    tmp = path.with_name(CARD + ".tmp")
    tmp.write_text(render(root, repo_id, branch))
    tmp.replace(path)
    return path


def _body(summary: DiskSummary, meta: dict[str, Any], repo_id: str | None, branch: str | None) -> str:
    model = meta.get("model", {})
    layout = meta.get("layout", {})
    dataset = meta.get("dataset", {})
    sampler = meta.get("sampler", {})
    capture = meta.get("capture", {})
    lines = [
        f"# Query/key vectors of {model.get('name') or model.get('slug') or 'a model'}",
        "",
        "Sampled attention query and key vectors captured with qk-sniffer. One config per "
        "(layer, head, q|k), named `l{layer}h{head}{q|k}`; each row is one token position of one example.",
        "",
        "## Source",
        "",
        f"- Model: `{model.get('name')}` (revision `{model.get('revision') or 'main'}`, dtype "
        f"{model.get('dtype')}, attention backend {meta.get('attn_implementation')})",
        f"- Dataset: `{dataset.get('path')}` (config `{dataset.get('name')}`, split `{dataset.get('split')}`, "
        f"text column `{dataset.get('text_column')}`), {meta.get('examples', 0)} examples, "
        f"{meta.get('tokens', 0)} tokens, max_length {meta.get('max_length')}",
        f"- Vectors: {'pre' if capture.get('pre_rope') else 'post'}-RoPE "
        f"({'after any q/k norm, before the rotation' if capture.get('pre_rope') else 'as the attention sees them'}), "
        "float32",
        f"- Sampler: `{sampler.get('name')}` with "
        + ", ".join(f"{k}={v}" for k, v in sampler.items() if k != "name"),
        f"- Head sampling: {_head_sampling(capture)}",
        "",
        "## Layout",
        "",
        f"- Layers: {layout.get('num_layers')}, query heads: {layout.get('num_q_heads')}, key/value heads: "
        f"{layout.get('num_kv_heads')}, head_dim: {layout.get('head_dim')}",
        f"- Sliding-window layers: {_sliding(layout)}",
        f"- RoPE: {layout.get('rope') or 'none'}",
    ]
    for note in meta.get("notes", []):
        lines.append(f"- {note}")
    lines += ["", "## Columns", "",
              "| column | type | meaning |", "|---|---|---|",
              "| bucket | int32 | sampler bucket of the position |",
              "| example_id | int64 | id of the source example |",
              "| position | int32 | token position in the example (0-based) |",
              "| vector | fixed_size_list<float32> | the query or key vector of that head |",
              "| sliding_window | int32 | the layer's window, null on full-attention layers |"]
    if capture.get("token_strings"):
        lines.append("| token_str | string | the token at that position |")
    lines += ["", f"## Rows ({summary.total_rows} in {len(summary.configs)} configs)", ""]
    lines += _bucket_table(summary)
    lines += ["", "## Coverage", "", "| layer | query heads | key heads |", "|---|---|---|"]
    for layer in sorted({layer for layer, _ in summary.coverage}):
        q = summary.coverage.get((layer, "q"), [])
        k = summary.coverage.get((layer, "k"), [])
        lines.append(f"| {layer} | {_ranges(q)} | {_ranges(k)} |")
    first = min(summary.configs) if summary.configs else "l00h00q"
    where = f'"{repo_id}"' if repo_id else '"<path or repo id>"'
    revision = f', revision="{branch}"' if branch else ""
    lines += ["", "## Loading", "", "```python", "from datasets import load_dataset", "",
              f'ds = load_dataset({where}, "{first}"{revision}, split="train")', "```", ""]
    return "\n".join(lines)


def _head_sampling(capture: dict[str, Any]) -> str:
    sampling = capture.get("head_sampling") or {}
    if sampling.get("count"):
        return f"{sampling['count']} query heads sampled with seed {sampling.get('seed')} (their key heads kept)"
    return "all allowed heads"


def _sliding(layout: dict[str, Any]) -> str:
    windows = layout.get("sliding_windows") or []
    sliding = [f"{i} ({w})" for i, w in enumerate(windows) if w]
    return ", ".join(sliding) if sliding else "none"


def _bucket_table(summary: DiskSummary) -> list[str]:
    buckets = sorted({b for c in summary.rows_per_bucket.values() for b in c})
    lines = ["| bucket | query rows | key rows |", "|---|---|---|"]
    for b in buckets:
        q = summary.rows_per_bucket.get("q", Counter())[b]
        k = summary.rows_per_bucket.get("k", Counter())[b]
        lines.append(f"| {b} | {q} | {k} |")
    return lines


def _ranges(values: list[int]) -> str:
    values = sorted(values)
    if not values:
        return "-"
    parts, start, prev = [], values[0], values[0]
    for v in values[1:] + [None]:  # type: ignore[list-item]
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(parts)
