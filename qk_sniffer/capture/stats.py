"""Capture statistics computed on the fly from each batch's blocks: rows and mean vector norms per
(layer, kind) and bucket. Kept apart from the tracker that logs them (a logging module computes nothing)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .rows import Block
from .samplers import KINDS

# Bucket columns in charts and the norm heatmap; finer samplers (e.g. `all` with bucket_size=1) are folded
# into equal ranges of buckets so a table stays readable and under W&B's row limits.
MAX_CHART_BUCKETS = 64


@dataclass
class CaptureStats:
    """Rows and summed Q/K vector L2 norms per (layer, kind), indexed by bucket, from each batch's blocks.

    Computed as the rows arrive (one vectorised pass over vectors already on the host), so the statistics
    need no second read of the exported data."""

    norm_sums: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)
    counts: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)

    def add(self, blocks: list[Block]) -> dict[str, int]:
        """Accumulate; returns this batch's rows by kind (a row = one head's vector at one position)."""
        rows = dict.fromkeys(KINDS, 0)
        for block in blocks:
            n_heads, n_rows = block.vectors.shape[:2]
            if n_heads == 0 or n_rows == 0:
                continue
            # (K,) norms summed over heads: every head of a (layer, kind) shares the row plan.
            norms = np.linalg.norm(block.vectors, axis=-1).sum(axis=0, dtype=np.float64)
            buckets = np.asarray(block.plan.buckets, dtype=np.int64)
            key = (block.layer, block.kind)
            _add_into(self.norm_sums, key, np.bincount(buckets, weights=norms))
            _add_into(self.counts, key, np.bincount(buckets).astype(np.float64) * n_heads)
            rows[block.kind] += n_heads * n_rows
        return rows

    def bucket_groups(self) -> tuple[int, list[str]]:
        """(width, labels): buckets folded into at most MAX_CHART_BUCKETS equal ranges."""
        size = max((len(c) for c in self.counts.values()), default=0)
        width = max(1, math.ceil(size / MAX_CHART_BUCKETS))
        groups = math.ceil(size / width)
        labels = [str(g) if width == 1 else f"{g * width}-{(g + 1) * width - 1}" for g in range(groups)]
        return width, labels

    def folded(self, store: dict[tuple[int, str], np.ndarray], key: tuple[int, str]) -> np.ndarray:
        width, labels = self.bucket_groups()
        values = np.zeros(len(labels) * width)
        values[: len(store[key])] = store[key]
        return values.reshape(len(labels), width).sum(axis=1)

    def rows_per_layer_kind(self) -> dict[str, int]:
        return {layer_kind(*key): int(self.counts[key].sum()) for key in sorted(self.counts)}

    def rows_per_bucket(self) -> dict[str, dict[str, int]]:
        _, labels = self.bucket_groups()
        out: dict[str, dict[str, int]] = {}
        for key in sorted(self.counts):
            per_kind = out.setdefault(key[1], dict.fromkeys(labels, 0))
            for label, count in zip(labels, self.folded(self.counts, key), strict=True):
                per_kind[label] += int(count)
        return out

    def mean_norms(self) -> dict[str, dict[str, float]]:
        """(layer, kind) -> bucket -> mean L2 norm, only where rows were captured."""
        _, labels = self.bucket_groups()
        out = {}
        for key in sorted(self.counts):
            sums, counts = self.folded(self.norm_sums, key), self.folded(self.counts, key)
            out[layer_kind(*key)] = {
                label: float(s / c) for label, s, c in zip(labels, sums, counts, strict=True) if c > 0
            }
        return out


def _add_into(store: dict[tuple[int, str], np.ndarray], key: tuple[int, str], values: np.ndarray) -> None:
    old = store.get(key)
    if old is None:
        store[key] = values.astype(np.float64)
        return
    if len(old) < len(values):
        old = np.pad(old, (0, len(values) - len(old)))
    old[: len(values)] += values
    store[key] = old


def layer_kind(layer: int, kind: str) -> str:
    return f"l{layer:02d}{kind}"
