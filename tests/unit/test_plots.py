"""The figures' axes, from aggregates built by hand: bucket labels name their positions, ticks are round,
layers are integers, the logit panels share one y axis, and the coverage map has a legend."""

from __future__ import annotations

import numpy as np

from qk_sniffer.analysis import plots
from qk_sniffer.analysis.numbers import Extents, LogitByDistance, NormStats, Sums


def _sums(bins: list[int], values: list[float]) -> Sums:
    sums = Sums()
    sums.add(np.array(bins), np.array(values, dtype=np.float64))
    return sums


def _stats(num_layers: int = 3, buckets: int = 5) -> NormStats:
    stats = NormStats()
    positions = np.arange(2**buckets - 1)
    bucket_of = np.frexp((positions + 1).astype(np.float64))[1] - 1  # log_bucket's buckets
    for kind in ("q", "k"):
        stats.rows_per_bucket[kind] = _sums(list(bucket_of), [1.0] * len(positions))
        stats.bucket_positions[kind] = Extents()
        stats.bucket_positions[kind].add(bucket_of, positions)
        for layer in range(num_layers):
            # Norms that differ only in the fifth decimal: "%.5g" printed them all as 3.9999.
            stats.norm_by_layer_bucket[(kind, layer)] = _sums(
                list(range(buckets)), [3.99990 + 1e-5 * layer] * 5
            )
            config = f"l{layer:02d}h00{kind}"
            stats.norm_by_position[config] = _sums([0, 4, 8], [4.0, 4.1, 4.2])
            stats.position_by_bin[config] = _sums([0, 4, 8], [0.0, 1.0, 3.0])
    return stats


def _ticks(axis) -> list[str]:
    """The tick labels inside the axis's view."""
    low, high = sorted(axis.get_view_interval())
    pairs = zip(axis.get_ticklocs(), axis.get_ticklabels(), strict=True)
    return [t.get_text() for v, t in pairs if low - 1e-9 <= v <= high + 1e-9]


def test_bucket_labels_name_the_positions_each_bucket_holds():
    extents = Extents()
    extents.add(np.array([0, 1, 1, 3]), np.array([0, 1, 2, 9]))
    labels, title = plots.bucket_labels(extents, 4)
    assert labels == ["0", "1: 1-2", "2", "3: 9"]
    assert title == "sampler bucket: token positions"
    # `all` keeps one bucket per position: folded into 64 columns labelled by their positions.
    every = Extents()
    every.add(np.arange(4096), np.arange(4096))
    labels, title = plots.bucket_labels(every, 4096)
    assert len(labels) == 64 and labels[0] == "0-63" and labels[-1] == "4032-4095"
    assert title == "token positions (4096 sampler buckets in 64 columns)"


def test_log_axes_use_one_way_of_writing_numbers():
    assert [plots.power_of_two_label(v) for v in (0, 1, 2, 4096, 8192, 131072)] == [
        "0",
        "1",
        "2",
        "4096",
        "8k",
        "128k",
    ]
    assert [plots.count_label(v) for v in (1, 10, 1000, 2000, 10**6, 1500)] == [
        "1",
        "10",
        "1k",
        "2k",
        "1M",
        "1500",
    ]


def test_colour_bars_tick_round_numbers_and_layers_are_integers():
    stats = _stats()
    heatmap = plots.mean_norm_heatmap(stats, 3)
    heatmap.canvas.draw()
    bar = heatmap.axes[1]  # the colour bar of the first panel
    labels = _ticks(bar.yaxis)
    shown = [float(label) for label in labels]
    assert len(set(labels)) == len(labels) >= 2
    step = np.diff(shown)
    np.testing.assert_allclose(step, step[0])
    # Round: a step of 1, 2, 2.5 or 5 times a power of ten, and every tick a multiple of it.
    mantissa = step[0] / 10 ** np.floor(np.log10(step[0]))
    assert any(np.isclose(mantissa, m) for m in (1, 2, 2.5, 5)), step[0]
    np.testing.assert_allclose(np.array(shown) / step[0], np.round(np.array(shown) / step[0]), atol=1e-6)

    lines = plots.norm_vs_position(stats, 3)
    lines.canvas.draw()
    layer_bar = next(ax for ax in lines.axes if ax.get_ylabel() == "layer")
    assert _ticks(layer_bar.yaxis) == ["0", "1", "2"]
    assert _ticks(lines.axes[0].xaxis) == ["0", "1", "2"]  # positions 0 to 3 on a log2 axis
    # Every head's line in one collection per panel, at (log2(position + 1), mean norm), coloured by layer,
    # and inside the axes' view.
    for panel, kind in zip(lines.axes[:3:2], ("queries", "keys"), strict=True):
        assert kind in panel.get_title()
        (collection,) = panel.collections
        paths = collection.get_paths()
        assert len(paths) == 3  # one head per layer
        np.testing.assert_allclose(paths[0].vertices, [[0.0, 4.0], [1.0, 4.1], [np.log2(4.0), 4.2]])
        assert len({tuple(c) for c in collection.get_colors()}) == 3
        low, high = panel.get_ylim()
        assert low <= 4.0 and high >= 4.2


def test_logit_panels_share_one_y_axis_and_the_coverage_map_has_a_legend():
    logits = LogitByDistance()
    for layer in range(3):
        for head in range(2):
            logits.sums[(layer, head)] = _sums([0, 1, 2], [0.1 * layer, -0.2, 0.3 * head])
            logits.kv_head[(layer, head)] = 0
    fig = plots.logit_vs_distance(logits, 3)
    assert fig is not None
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 3
    assert all(panels[0].get_shared_y_axes().joined(panels[0], ax) for ax in panels[1:])

    coverage = plots.coverage_map({"q": np.eye(2, dtype=bool), "k": np.ones((2, 1), dtype=bool)})
    [legend] = coverage.legends
    assert [t.get_text() for t in legend.get_texts()] == ["not captured", "captured"]


def test_each_bucket_bar_rises_to_its_row_count():
    stats = _stats()  # log_bucket's buckets of positions 0..30: 1, 2, 4, 8, 16 rows
    fig = plots.rows_per_bucket(stats)
    for ax in fig.axes[:2]:
        [bars] = ax.collections
        tops = [float(path.vertices[:, 1].max()) for path in bars.get_paths()]
        assert tops == [1.0, 2.0, 4.0, 8.0, 16.0]
        floor = {float(path.vertices[:, 1].min()) for path in bars.get_paths()}
        assert floor == {ax.get_ylim()[0]}
        low, high = ax.get_xlim()
        assert low < 0 and 4 < high < 5
