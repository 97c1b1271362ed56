"""The report's figures, drawn from :mod:`qk_sniffer.analysis.numbers`'s aggregates: one bar, cell or line
point per bin, never one mark per row, so drawing costs the same for a thousand rows or a billion.

Figures are built with ``matplotlib.figure.Figure`` directly (the Agg canvas, no pyplot): no global state,
no display needed, safe in a worker or a notebook kernel that uses another backend. Margins are fixed in
inches instead of solved by a layout engine, which costs more than the drawing itself. Axes read alike in
every figure: positions and distances on a log2 axis labelled 0, 1, 2, 4, ... (8k, 16k past 4096), row
counts on a log10 axis labelled 1, 10, 100, 1k, ..., layers as integers, colour bars on round numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator, ScalarFormatter

from .numbers import Extents, LogitByDistance, NormStats, Sums, parse_config

KINDS = {"q": "queries", "k": "keys"}
# Finer samplers (e.g. `all`, one bucket per position) are folded into at most this many equal ranges of
# buckets, so bars and heatmap columns stay readable.
MAX_BUCKET_COLUMNS = 64
DPI = 100
# zlib level 1: PNG encoding at the default level costs as much as drawing, for files ~15% smaller.
PNG_OPTIONS = {"compress_level": 1}


def fold(sums: Sums, size: int, max_columns: int = MAX_BUCKET_COLUMNS) -> tuple[list[str], Sums]:
    """Buckets 0..size-1 as at most ``max_columns`` equal ranges: labels and summed totals and counts."""
    starts = _fold_starts(size, max_columns)
    total = np.pad(sums.total, (0, max(0, size - len(sums.total))))[:size]
    count = np.pad(sums.count, (0, max(0, size - len(sums.count))))[:size]
    labels = [f"{a}-{b - 1}" if b - a > 1 else str(a) for a, b in _ranges(starts, size)]
    if not size:
        return labels, Sums(total, count)
    return labels, Sums(np.add.reduceat(total, starts), np.add.reduceat(count, starts))


def _fold_starts(size: int, max_columns: int = MAX_BUCKET_COLUMNS) -> np.ndarray:
    if size <= max_columns:
        return np.arange(size)
    return np.unique(np.linspace(0, size, max_columns + 1).astype(np.int64)[:-1])


def _ranges(starts: np.ndarray, size: int) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in zip(starts, np.r_[starts[1:], size], strict=True)]


def bucket_labels(extents: Extents | None, size: int) -> tuple[list[str], str]:
    """One tick label per bucket column, and the axis title. Each bucket is labelled with the token
    positions its rows hold (``3: 7-14``, or ``5`` where bucket 5 is position 5); folded columns by their
    positions alone (``0-63``)."""
    starts = _fold_starts(size)
    folded = len(starts) < size
    labels = []
    for a, b in _ranges(starts, size):
        buckets = f"{a}-{b - 1}" if b - a > 1 else str(a)
        span = extents.span(a, b) if extents is not None else None
        positions = None if span is None else str(span[0]) if span[0] == span[1] else f"{span[0]}-{span[1]}"
        if positions is None or (not folded and positions == buckets):
            labels.append(buckets)
        else:
            labels.append(positions if folded else f"{buckets}: {positions}")
    if folded:
        return labels, f"token positions ({size} sampler buckets in {len(starts)} columns)"
    return labels, "sampler bucket: token positions"


def power_of_two_label(value: float) -> str:
    """1, 2, 4, ..., 4096, then 8k, 16k, ...: how context lengths are spoken of."""
    n = int(round(value))
    return f"{n // 1024}k" if n >= 8192 and n % 1024 == 0 else str(n)


def count_label(value: float, _pos: Any = None) -> str:
    """1, 10, 100, 1k, 10k, 100k, 1M, ... for a log10 axis of row counts."""
    n = int(round(value))
    for unit, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def _figure(width: float, height: float, left: float, right: float, bottom: float, top: float) -> Figure:
    """A figure whose margins are given in inches (converted to the fractions matplotlib wants)."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    fig.subplots_adjust(
        left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height
    )
    return fig


def _bucket_axis(ax: Any, extents: Extents | None, size: int) -> None:
    labels, title = bucket_labels(extents, size)
    step = max(1, -(-len(labels) // 16))
    positions = list(range(0, len(labels), step))
    ax.set_xticks(positions, [labels[i] for i in positions], rotation=45, ha="right", fontsize=7)
    ax.set_xlabel(title)


def _position_axis(ax: Any, top: float) -> None:
    """An x axis of ``log2(position + 1)``: ticks at position 0 and the powers of two up to ``top``,
    labelled with the positions themselves."""
    values = [0] + [2**k for k in range(int(np.log2(max(top, 1.0))) + 1)]
    shown = values[:: max(1, -(-len(values) // 12))]
    ax.set_xticks(np.log2(np.array(shown) + 1.0), [power_of_two_label(v) for v in shown], fontsize=7)
    ax.xaxis.set_minor_locator(NullLocator())


def _count_axis(ax: Any, counts: list[np.ndarray]) -> None:
    """A log10 axis over whole decades around the counts, so it always has ticks to read."""
    values = np.concatenate([c[c > 0] for c in counts]) if counts else np.zeros(0)
    if len(values):
        low, high = np.floor(np.log10(values.min())), np.ceil(np.log10(values.max() * 1.001))
        ax.set_ylim(10**low, 10 ** max(high, low + 1))
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10))
    ax.yaxis.set_major_formatter(FuncFormatter(count_label))
    ax.yaxis.set_minor_locator(NullLocator())


def _bars(ax: Any, heights: np.ndarray, color: str) -> None:
    """A bar per column as one collection: ``ax.bar`` makes a patch per bar, which costs more than the
    rest of the figure (64 columns x 2 panels). Bars rise from the axis's floor (log axes have no 0)."""
    from matplotlib.collections import PolyCollection

    floor = ax.get_ylim()[0]
    boxes = [
        [(x - 0.4, floor), (x - 0.4, h), (x + 0.4, h), (x + 0.4, floor)]
        for x, h in enumerate(heights.tolist())
        if h > 0
    ]
    ax.add_collection(PolyCollection(boxes, facecolors=color, edgecolors="none"), autolim=False)
    ax.set_xlim(-0.6, max(len(heights), 1) - 0.4)


def _round_colorbar(fig: Figure, mappable: Any, ax: Any, label: str) -> None:
    bar = fig.colorbar(mappable, ax=ax, label=label)
    bar.locator = MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10])
    formatter = ScalarFormatter(useOffset=False)
    formatter.set_scientific(False)
    bar.formatter = formatter
    bar.update_ticks()


def _bucket_count(stats: NormStats) -> int:
    return max((len(s.count) for s in stats.rows_per_bucket.values()), default=0)


def rows_per_bucket(stats: NormStats) -> Figure:
    fig = _figure(10, 4, left=0.8, right=0.2, bottom=1.2, top=0.4)
    size = _bucket_count(stats)
    axes = fig.subplots(1, 2, sharey=True)
    fig.subplots_adjust(wspace=0.08)
    counts = {kind: fold(stats.rows_per_bucket.get(kind, Sums()), size)[1].count for kind in KINDS}
    for ax, kind in zip(axes, KINDS, strict=True):
        _count_axis(ax, list(counts.values()))
        _bars(ax, counts[kind], "tab:blue" if kind == "q" else "tab:orange")
        _bucket_axis(ax, stats.bucket_positions.get(kind), size)
        ax.set_title(f"Rows per bucket: {KINDS[kind]}")
    axes[0].set_ylabel("rows (all captured heads)")
    return fig


def mean_norm_heatmap(stats: NormStats, num_layers: int) -> Figure:
    fig = _figure(12, max(3.5, 0.25 * num_layers + 2), left=0.7, right=0.6, bottom=1.3, top=0.4)
    fig.subplots_adjust(wspace=0.3)
    size = _bucket_count(stats)
    columns = max(1, min(size, MAX_BUCKET_COLUMNS))
    for i, kind in enumerate(KINDS):
        ax = fig.add_subplot(1, 2, i + 1)
        grid = np.full((num_layers, columns), np.nan)
        for layer in range(num_layers):
            sums = stats.norm_by_layer_bucket.get((kind, layer))
            if sums is not None:
                _, folded = fold(sums, size)
                grid[layer, : len(folded.count)] = folded.mean()
        image = ax.imshow(
            np.ma.masked_invalid(grid), aspect="auto", origin="lower", cmap="viridis", interpolation="nearest"
        )
        _round_colorbar(fig, image, ax, "mean L2 norm")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        _bucket_axis(ax, stats.bucket_positions.get(kind), max(size, 1))
        ax.set_ylabel("layer")
        ax.set_title(f"Mean norm by layer x bucket: {KINDS[kind]}")
    return fig


def norm_vs_position(stats: NormStats, num_layers: int) -> Figure:
    fig = _figure(12, 4.5, left=1.1, right=0.5, bottom=0.7, top=0.4)
    fig.subplots_adjust(wspace=0.4)
    cmap, norm = _layer_scale(num_layers)
    for i, kind in enumerate(KINDS):
        ax = fig.add_subplot(1, 2, i + 1)
        top = 1.0
        lines, colours = [], []
        for config, sums in sorted(stats.norm_by_position.items()):
            key = parse_config(config)
            if key.kind != kind:
                continue
            positions = stats.position_by_bin[config].mean()
            y = sums.mean()
            shown = np.isfinite(y)
            if shown.any():
                lines.append(np.column_stack([np.log2(positions[shown] + 1.0), y[shown]]))
                colours.append(cmap(norm(key.layer)))
                top = max(top, float(positions[shown].max()))
        # One collection for every head's line: a model's thousand-odd heads as separate lines cost a
        # millisecond each to build and draw.
        ax.add_collection(LineCollection(lines, colors=colours, alpha=0.6, linewidths=1))
        ax.autoscale_view()
        _position_axis(ax, top)
        ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
        ax.set_xlabel("token position (log scale; one point per quarter octave)")
        ax.set_ylabel("mean L2 norm")
        ax.set_title(f"Norm against position: {KINDS[kind]}, one line per head")
        _layer_colorbar(fig, ax, cmap, norm, num_layers)
    return fig


def _layer_scale(num_layers: int) -> tuple[Any, BoundaryNorm]:
    """One colour per layer: integer boundaries, so the colour bar's ticks are layers, never 0.5."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"].resampled(max(1, num_layers))
    return cmap, BoundaryNorm(np.arange(max(1, num_layers) + 1) - 0.5, cmap.N)


def _layer_colorbar(fig: Figure, ax: Any, cmap: Any, norm: BoundaryNorm, num_layers: int) -> None:
    from matplotlib.cm import ScalarMappable

    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="layer")
    bar.locator = MaxNLocator(nbins=min(8, max(1, num_layers)), integer=True)
    bar.update_ticks()


def coverage_map(maps: dict[str, np.ndarray]) -> Figure:
    fig = _figure(10, max(3.5, 0.2 * maps["q"].shape[0] + 2.2), left=0.7, right=0.2, bottom=1.1, top=0.4)
    fig.subplots_adjust(wspace=0.2)
    colours = ["#eeeeee", "#1f77b4"]
    cmap = ListedColormap(colours)
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
    handles = [
        Patch(facecolor=c, edgecolor="grey", label=t)
        for c, t in zip(colours, ("not captured", "captured"), strict=True)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False)
    return fig


def logit_vs_distance(logits: LogitByDistance, num_layers: int) -> Figure | None:
    layers = sorted({layer for layer, _ in logits.sums})
    if not layers:
        return None
    columns = min(4, len(layers))
    rows = -(-len(layers) // columns)
    fig = _figure(3.6 * columns + 1, 3 * rows + 1.0, left=0.8, right=0.2, bottom=0.8, top=0.7)
    fig.subplots_adjust(wspace=0.08, hspace=0.45)
    width = max(len(s.count) for s in logits.sums.values())
    # Bin b >= 1 holds distances [2**(b-1), 2**b): labelled by its smallest distance.
    labels = ["0"] + [power_of_two_label(2 ** (b - 1)) for b in range(1, width)]
    step = max(1, -(-width // 10))
    axes = fig.subplots(rows, columns, sharey=True, squeeze=False).ravel()
    for ax, layer in zip(axes, layers, strict=False):
        for (lay, head), sums in sorted(logits.sums.items()):
            if lay != layer:
                continue
            mean = sums.mean()
            shown = np.isfinite(mean)
            x = np.arange(len(mean))
            label = f"q{head} -> k{logits.kv_head[(lay, head)]}"
            ax.plot(x[shown], mean[shown], marker=".", linewidth=1, label=label)
        ax.set_xticks(range(0, width, step), labels[::step], fontsize=7)
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xlabel("distance i - j (log2 bins)", fontsize=8)
        ax.legend(fontsize=6, ncol=2)
    for ax in axes[len(layers) :]:
        ax.set_visible(False)
    for ax in axes[::columns]:
        ax.set_ylabel("mean q·k / sqrt(d)", fontsize=8)
    fig.suptitle("Mean pre-softmax logit against query-key distance (same example, i >= j)")
    return fig


def draw_all(
    stats: NormStats,
    coverage: dict[str, np.ndarray],
    logits: LogitByDistance,
    num_layers: int,
    names: Collection[str] | None = None,
) -> dict[str, Figure]:
    """Figure name (the PNG's stem) -> figure, for ``names`` (default: all); the logit figure is left out
    when no layer has both query and key rows."""
    makers: dict[str, Callable[[], Figure | None]] = {
        "rows_per_bucket": lambda: rows_per_bucket(stats),
        "mean_norm_by_layer_bucket": lambda: mean_norm_heatmap(stats, num_layers),
        "norm_vs_position": lambda: norm_vs_position(stats, num_layers),
        "coverage": lambda: coverage_map(coverage),
        "logit_vs_distance": lambda: logit_vs_distance(logits, num_layers),
    }
    figures = {}
    for name, make in makers.items():
        if names is None or name in names:
            figure = make()
            if figure is not None:
                figures[name] = figure
    return figures
