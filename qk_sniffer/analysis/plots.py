"""The report's figures, drawn from :mod:`qk_sniffer.analysis.numbers`'s numbers.

Figures are built with ``matplotlib.figure.Figure`` directly (the Agg canvas, no pyplot): no global state,
no display needed, safe in a worker or a notebook kernel that uses another backend.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .numbers import POSITION_BINS_PER_OCTAVE, LogitByDistance, NormStats, Sums, parse_config

KINDS = {"q": "queries", "k": "keys"}
# Finer samplers (e.g. `all`, one bucket per position) are folded into at most this many equal ranges of
# buckets, so bars and heatmap columns stay readable.
MAX_BUCKET_COLUMNS = 64
DPI = 110


def fold(sums: Sums, size: int, max_columns: int = MAX_BUCKET_COLUMNS) -> tuple[list[str], Sums]:
    """Buckets 0..size-1 as at most ``max_columns`` equal ranges: labels and summed totals and counts."""
    total = np.pad(sums.total, (0, max(0, size - len(sums.total))))[:size]
    count = np.pad(sums.count, (0, max(0, size - len(sums.count))))[:size]
    if size <= max_columns:
        return [str(b) for b in range(size)], Sums(total, count)
    starts = np.unique(np.linspace(0, size, max_columns + 1).astype(np.int64)[:-1])
    ends = np.r_[starts[1:], size]
    labels = [f"{a}-{b - 1}" if b - a > 1 else str(a) for a, b in zip(starts, ends, strict=True)]
    return labels, Sums(np.add.reduceat(total, starts), np.add.reduceat(count, starts))


def _bucket_count(stats: NormStats) -> int:
    return max((len(s.count) for s in stats.rows_per_bucket.values()), default=0)


def _ticks(ax: Any, labels: list[str], axis: str = "x") -> None:
    step = max(1, len(labels) // 16)
    positions = list(range(0, len(labels), step))
    if axis == "x":
        ax.set_xticks(positions, [labels[i] for i in positions], rotation=45, ha="right", fontsize=7)
    else:
        ax.set_yticks(positions, [labels[i] for i in positions], fontsize=7)


def rows_per_bucket(stats: NormStats) -> Figure:
    fig = Figure(figsize=(10, 4), dpi=DPI, layout="constrained")
    size = _bucket_count(stats)
    for i, kind in enumerate(KINDS):
        ax = fig.add_subplot(1, 2, i + 1)
        labels, folded = fold(stats.rows_per_bucket.get(kind, Sums()), size)
        ax.bar(range(len(labels)), folded.count, color="tab:blue" if kind == "q" else "tab:orange")
        ax.set_yscale("log")
        _ticks(ax, labels)
        ax.set_xlabel("sampler bucket")
        ax.set_ylabel("rows (all captured heads)")
        ax.set_title(f"Rows per bucket: {KINDS[kind]}")
    return fig


def mean_norm_heatmap(stats: NormStats, num_layers: int) -> Figure:
    fig = Figure(figsize=(11, max(3.5, 0.25 * num_layers + 2)), dpi=DPI, layout="constrained")
    size = _bucket_count(stats)
    for i, kind in enumerate(KINDS):
        ax = fig.add_subplot(1, 2, i + 1)
        grid = np.full((num_layers, max(1, min(size, MAX_BUCKET_COLUMNS))), np.nan)
        labels: list[str] = []
        for layer in range(num_layers):
            sums = stats.norm_by_layer_bucket.get((kind, layer))
            if sums is not None:
                labels, folded = fold(sums, size)
                grid[layer, : len(labels)] = folded.mean()
        image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", origin="lower", cmap="viridis")
        fig.colorbar(image, ax=ax, label="mean L2 norm", format="%.5g")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        _ticks(ax, labels or [str(b) for b in range(grid.shape[1])])
        ax.set_xlabel("sampler bucket")
        ax.set_ylabel("layer")
        ax.set_title(f"Mean norm by layer x bucket: {KINDS[kind]}")
    return fig


def norm_vs_position(stats: NormStats, num_layers: int) -> Figure:
    fig = Figure(figsize=(11, 4.5), dpi=DPI, layout="constrained")
    colors = _layer_colors(num_layers)
    for i, kind in enumerate(KINDS):
        ax = fig.add_subplot(1, 2, i + 1)
        for config, sums in sorted(stats.norm_by_position.items()):
            key = parse_config(config)
            if key.kind != kind:
                continue
            x = stats.position_by_bin[config].mean() + 1.0
            y = sums.mean()
            shown = np.isfinite(y)
            ax.plot(x[shown], y[shown], color=colors(key.layer), alpha=0.6, linewidth=1)
        ax.set_xscale("log")
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_xlabel(f"token position + 1 (mean of {POSITION_BINS_PER_OCTAVE} bins per octave)")
        ax.set_ylabel("mean L2 norm")
        ax.set_title(f"Norm against position: {KINDS[kind]}, one line per head")
        _layer_colorbar(fig, ax, num_layers)
    return fig


def _layer_colors(num_layers: int) -> Any:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return lambda layer: cmap(layer / max(1, num_layers - 1))


def _layer_colorbar(fig: Figure, ax: Any, num_layers: int) -> None:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    mappable = ScalarMappable(norm=Normalize(0, max(1, num_layers - 1)), cmap="viridis")
    fig.colorbar(mappable, ax=ax, label="layer")


def coverage_map(maps: dict[str, np.ndarray]) -> Figure:
    fig = Figure(figsize=(10, max(3.5, 0.2 * maps["q"].shape[0] + 2)), dpi=DPI, layout="constrained")
    cmap = ListedColormap(["#eeeeee", "#1f77b4"])
    for i, (kind, title) in enumerate((("q", "query heads"), ("k", "key/value heads"))):
        ax = fig.add_subplot(1, 2, i + 1)
        grid = maps[kind]
        layers, heads = grid.shape
        # One cell per (layer, head), outlined so that a full map still shows its cells.
        ax.pcolormesh(
            np.arange(heads + 1) - 0.5,
            np.arange(layers + 1) - 0.5,
            grid.astype(float),
            cmap=cmap,
            vmin=0,
            vmax=1,
            edgecolors="white",
            linewidth=0.5 if layers * heads <= 4096 else 0,
        )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(f"Captured {title}: {int(grid.sum())} of {grid.size}")
    return fig


def logit_vs_distance(logits: LogitByDistance, num_layers: int) -> Figure | None:
    layers = sorted({layer for layer, _ in logits.sums})
    if not layers:
        return None
    columns = min(4, len(layers))
    rows = -(-len(layers) // columns)
    fig = Figure(figsize=(3.6 * columns + 1, 3 * rows + 0.8), dpi=DPI, layout="constrained")
    width = max(len(s.count) for s in logits.sums.values())
    labels = ["0"] + [f"{2 ** (b - 1)}" for b in range(1, width)]
    for i, layer in enumerate(layers):
        ax = fig.add_subplot(rows, columns, i + 1)
        for (lay, head), sums in sorted(logits.sums.items()):
            if lay != layer:
                continue
            mean = sums.mean()
            shown = np.isfinite(mean)
            x = np.arange(len(mean))
            label = f"q{head} -> k{logits.kv_head[(lay, head)]}"
            ax.plot(x[shown], mean[shown], marker=".", linewidth=1, label=label)
        _ticks(ax, labels)
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xlabel("distance i - j (from, log2 bins)", fontsize=8)
        ax.set_ylabel("mean q·k / sqrt(d)", fontsize=8)
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle("Mean pre-softmax logit against query-key distance (same example, i >= j)")
    return fig


def draw_all(
    stats: NormStats, coverage: dict[str, np.ndarray], logits: LogitByDistance, num_layers: int
) -> dict[str, Figure]:
    """Figure name (the PNG's stem) -> figure."""
    figures = {
        "rows_per_bucket": rows_per_bucket(stats),
        "mean_norm_by_layer_bucket": mean_norm_heatmap(stats, num_layers),
        "norm_vs_position": norm_vs_position(stats, num_layers),
        "coverage": coverage_map(coverage),
    }
    logit_figure = logit_vs_distance(logits, num_layers)
    if logit_figure is not None:
        figures["logit_vs_distance"] = logit_figure
    return figures
