"""qk_sniffer.load and the report's figures, on captures of the embedded tiny model: the arrays equal the
committed Parquet rows, keep_prob equals each sampler's probability, the logit-by-distance numbers equal a
direct numpy computation on loaded rows, every figure is a real image linked from the card, and the Hub
path downloads only the config's committed files (recording stand-in of HfApi)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import REPO, compose_cfg, files_with_bytes, read_configs, run_cli
from hub_stand_in import REPO_ID as HUB_REPO
from hub_stand_in import FakeHub, install_stand_in
from matplotlib.image import imread

import qk_sniffer
from qk_sniffer.analysis import numbers as report_data
from qk_sniffer.analysis.figures import INDEX, figure_section
from qk_sniffer.analysis.loading import committed_parts
from qk_sniffer.capture.samplers import build_sampler
from qk_sniffer.core.errors import UserError
from qk_sniffer.hub import download as hub_download
from qk_sniffer.pipeline.runner import run
from qk_sniffer.store.layout import CARD, METADATA
from qk_sniffer.store.layout import FIGURES as FIGURES_DIR

FIGURES = {
    "rows_per_bucket",
    "mean_norm_by_layer_bucket",
    "norm_vs_position",
    "coverage",
    "logit_vs_distance",
}


def capture(out: Path, *overrides: str) -> Path:
    run(compose_cfg([f"output.dir={out}", "dataset.max_samples=3", *overrides]))
    return out


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    # Every position (sampler=all) on two layers: enough pairs at every distance for the logit figure.
    return capture(
        tmp_path_factory.mktemp("cap") / "capture",
        "sampler=all",
        "capture.layers=[0,1]",
        "report.enabled=true",
    )


def run_report(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(list(args), cwd, env={"PYTHONPATH": str(REPO)}, module="qk_sniffer.report")


# ---------------------------------------------------------------------------------------------- load


def test_load_equals_the_committed_parquet_rows_and_shares_memory_with_torch(out):
    tables = read_configs(out)
    for config, table in tables.items():
        rows = qk_sniffer.load(out, config)
        assert rows.vectors.dtype == np.float32 and rows.vectors.shape == (table.num_rows, 16)
        expected = np.array(table.column("vector").to_pylist(), dtype=np.float32)
        np.testing.assert_array_equal(rows.vectors, expected)
        assert rows.positions.tolist() == table.column("position").to_pylist()
        assert rows.buckets.tolist() == table.column("bucket").to_pylist()
        assert rows.example_ids.tolist() == table.column("example_id").to_pylist()
    rows = qk_sniffer.load(str(out), "l01h02q")
    tensors = rows.to_torch()
    tensors["vectors"][0, 0] = 123.0  # a view, not a copy
    assert rows.vectors[0, 0] == 123.0
    assert tensors["positions"].tolist() == rows.positions.tolist()


def test_a_part_file_no_commit_names_is_not_visible(out, tmp_path):
    copy = tmp_path / "capture"
    shutil.copytree(out, copy)
    before = qk_sniffer.load(copy, "l00h00q")
    [part] = sorted((copy / "l00h00q").glob("*.parquet"))
    shutil.copy(part, part.with_name("part-999-killed-run.parquet"))  # a killed run's leftover
    after = qk_sniffer.load(copy, "l00h00q")
    np.testing.assert_array_equal(after.vectors, before.vectors)
    assert [p.path.name for p in committed_parts(copy)["l00h00q"]] == [part.name]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["sampler=log_bucket", "sampler.base_rate=2.0"], lambda b: np.minimum(1.0, 2.0 / 2.0**b)),
        (
            ["sampler=uniform", "sampler.base_rate=4.0", "sampler.bucket_size=16"],
            lambda b: np.full(len(b), 0.25),
        ),
        (["sampler=all", "sampler.bucket_size=8"], lambda b: np.ones(len(b))),
    ],
    ids=["log_bucket", "uniform", "all"],
)
def test_keep_prob_is_the_recorded_samplers_probability_of_each_rows_bucket(tmp_path, overrides, expected):
    out = capture(tmp_path / "capture", "capture.layers=[0]", *overrides)
    sampler = build_sampler(json.loads((out / METADATA).read_text())["sampler"])
    rows = qk_sniffer.load(out, "l00h01k")
    assert len(rows) > 0 and len(np.unique(rows.buckets)) > 1
    np.testing.assert_array_equal(rows.keep_prob, sampler.keep_probability(rows.buckets.astype(np.int64)))
    np.testing.assert_allclose(rows.keep_prob, expected(rows.buckets.astype(np.float64)))
    assert not (out / FIGURES_DIR).exists()  # report.enabled=false (the tests' default)


def test_bad_arguments_are_one_clear_message(out, tmp_path):
    with pytest.raises(UserError, match="'l09h00q' holds no committed rows .*configs held: l00h00k, "):
        qk_sniffer.load(out, "l09h00q")
    with pytest.raises(UserError, match="config='layer0' is not a config name"):
        qk_sniffer.load(out, "layer0")
    with pytest.raises(UserError, match="neither an existing output dir nor a Hub repo id"):
        qk_sniffer.load(tmp_path / "nowhere", "l00h00q")
    with pytest.raises(UserError, match="revision='main' applies to a Hub repo"):
        qk_sniffer.load(out, "l00h00q", revision="main")
    with pytest.raises(UserError, match="no .qk_sniffer/ manifest"):
        qk_sniffer.load(tmp_path, "l00h00q")


def test_a_hub_branch_loads_through_the_same_call_downloading_only_that_configs_committed_files(
    out, monkeypatch, tmp_path
):
    fake: FakeHub = install_stand_in(monkeypatch, tmp_path)
    monkeypatch.setattr(hub_download, "cache_root", lambda: tmp_path / "cache")
    tree = {f: b for f, b in files_with_bytes(out).items() if not f.startswith(".qk_sniffer/runs/")}
    stray = "l00h00q/part-999-killed-run.parquet"
    tree[stray] = tree[next(f for f in tree if f.startswith("l00h00q/"))]
    sha = fake.new_commit(tree)
    fake.branches[HUB_REPO] = {"main": fake.new_commit({}), "embedded-qwen3-tiny-embedded": sha}

    rows = qk_sniffer.load(HUB_REPO, "l00h00q", revision="embedded-qwen3-tiny-embedded")

    local = qk_sniffer.load(out, "l00h00q")
    np.testing.assert_array_equal(rows.vectors, local.vectors)
    np.testing.assert_array_equal(rows.keep_prob, local.keep_prob)
    downloads = [c for c in fake.calls if c[0] == "snapshot_download"]
    assert [c[2] for c in downloads] == [sha, sha]  # the branch's commit, resolved once
    committed = sorted(f"l00h00q/{p.path.name}" for p in committed_parts(out)["l00h00q"])
    assert downloads[1][3] == committed
    assert stray not in downloads[1][3]
    assert not any(f.startswith(("l00h01", "l01")) for f in files_with_bytes(tmp_path / "cache"))


# ------------------------------------------------------------------------------------------- figures


def test_every_figure_is_a_real_image_linked_from_the_card(out):
    index = json.loads((out / FIGURES_DIR / INDEX).read_text())
    assert set(index["figures"]) == FIGURES
    card = (out / CARD).read_text()
    for name in FIGURES:
        path = out / FIGURES_DIR / f"{name}.png"
        image = imread(path)
        assert image.shape[0] >= 200 and image.shape[1] >= 200, (name, image.shape)
        assert float(image[..., :3].var()) > 0, name
        assert f"](figures/{name}.png)" in card


def direct_logit_means(q, k, scale: float) -> np.ndarray:
    """Mean q.k*scale over every causal pair of the same example, by distance bin, one pair at a time."""
    total: dict[int, list[float]] = {}
    for example in np.unique(q.example_ids):
        qm, km = q.example_ids == example, k.example_ids == example
        logits = q.vectors[qm].astype(np.float64) @ k.vectors[km].astype(np.float64).T * scale
        distance = q.positions[qm][:, None].astype(int) - k.positions[km][None, :].astype(int)
        for d, value in zip(distance[distance >= 0], logits[distance >= 0], strict=True):
            b = 0 if d == 0 else int(np.floor(np.log2(d))) + 1
            total.setdefault(b, []).append(value)
    return np.array([np.mean(total[b]) for b in range(max(total) + 1)])


def test_logit_by_distance_equals_a_direct_computation_on_loaded_rows(out, monkeypatch):
    layout = json.loads((out / METADATA).read_text())["layout"]
    parts = committed_parts(out)
    streamed = report_data.aggregates(parts, layout)[1]
    # A tiny budget: one example per group, the path a big dir takes.
    monkeypatch.setattr(report_data, "PAIR_BUDGET_BYTES", 1)
    small = report_data.aggregates(parts, layout)[1]
    group = layout["num_q_heads"] // layout["num_kv_heads"]
    assert sorted(streamed.sums) == [(layer, h) for layer in (0, 1) for h in range(4)]
    for layer in (0, 1):
        for h in range(4):
            q = qk_sniffer.load(out, f"l{layer:02d}h{h:02d}q")
            k = qk_sniffer.load(out, f"l{layer:02d}h{h // group:02d}k")
            expected = direct_logit_means(q, k, 1 / 4.0)
            np.testing.assert_allclose(streamed.mean(layer, h), expected, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(small.mean(layer, h), expected, rtol=1e-10, atol=1e-12)
            assert streamed.kv_head[(layer, h)] == h // group


def by_bin(bins: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mean of ``values`` per integer bin, NaN where a bin is empty (as ``Sums.mean``)."""
    with np.errstate(invalid="ignore"):
        return np.bincount(bins, weights=values) / np.bincount(bins)


def assert_norms_equal_the_loaded_rows(stats, rows: dict[str, Any]) -> None:
    """Every norm sum of ``stats`` against the rows of each config, loaded and computed directly."""
    for kind in ("q", "k"):
        mine = {c: r for c, r in rows.items() if c.endswith(kind)}
        buckets = np.concatenate([r.buckets for r in mine.values()]).astype(int)
        positions = np.concatenate([r.positions for r in mine.values()]).astype(int)
        assert stats.rows_per_bucket[kind].count.tolist() == np.bincount(buckets).tolist()
        extents = stats.bucket_positions[kind]
        for b in np.unique(buckets):
            assert (extents.low[b], extents.high[b]) == (
                positions[buckets == b].min(),
                positions[buckets == b].max(),
            )
        for layer in sorted({int(c[1:3]) for c in mine}):
            of_layer = [r for c, r in mine.items() if int(c[1:3]) == layer]
            norms = np.concatenate([np.linalg.norm(r.vectors.astype(np.float64), axis=1) for r in of_layer])
            layer_buckets = np.concatenate([r.buckets for r in of_layer]).astype(int)
            np.testing.assert_allclose(
                stats.norm_by_layer_bucket[(kind, layer)].mean(), by_bin(layer_buckets, norms), rtol=1e-12
            )
    for config, r in rows.items():
        bins = np.floor(4 * np.log2(r.positions.astype(np.float64) + 1)).astype(int)
        norms = np.linalg.norm(r.vectors.astype(np.float64), axis=1)
        np.testing.assert_allclose(stats.norm_by_position[config].mean(), by_bin(bins, norms), rtol=1e-12)
        positions = r.positions.astype(np.float64)
        np.testing.assert_allclose(stats.position_by_bin[config].mean(), by_bin(bins, positions), rtol=1e-12)


@pytest.mark.parametrize("budget", [report_data.PAIR_BUDGET_BYTES, 1])
def test_the_figures_one_read_equals_the_loaded_rows_also_for_heads_read_unpaired(
    out, tmp_path, monkeypatch, budget
):
    """``aggregates`` feeds the norm sums from the logit statistic's reads. Every row counts once, also for a
    key config holding fewer examples than its query heads (their other rows are read for the norms alone),
    query heads without their key head and a key head without its query heads."""
    monkeypatch.setattr(report_data, "PAIR_BUDGET_BYTES", budget)
    layout = json.loads((out / METADATA).read_text())["layout"]
    fewer = capture(tmp_path / "fewer", "sampler=all", "capture.layers=[0]", "dataset.max_samples=2")
    parts = committed_parts(out)
    parts["l00h00k"] = committed_parts(fewer)["l00h00k"]
    for config in ("l01h01k", "l01h00q", "l01h01q"):
        del parts[config]
    norms, logits = report_data.aggregates(parts, layout)
    rows = {c: qk_sniffer.load(fewer if c == "l00h00k" else out, c) for c in parts}
    assert_norms_equal_the_loaded_rows(norms, rows)
    assert sorted(logits.sums) == [(0, 0), (0, 1), (0, 2), (0, 3)]  # layer 1 pairs no head
    for h in range(4):
        expected = direct_logit_means(rows[f"l00h{h:02d}q"], rows[f"l00h{h // 2:02d}k"], 1 / 4.0)
        np.testing.assert_allclose(logits.mean(0, h), expected, rtol=1e-10, atol=1e-12)
        assert logits.kv_head[(0, h)] == h // 2


def test_norm_statistics_equal_the_loaded_rows(out):
    layout = json.loads((out / METADATA).read_text())["layout"]
    parts = committed_parts(out)
    stats = report_data.aggregates(parts, layout)[0]
    for layer in (0, 1):
        loaded = [qk_sniffer.load(out, f"l{layer:02d}h{h:02d}q") for h in range(4)]
        norms = np.concatenate([np.linalg.norm(r.vectors.astype(np.float64), axis=1) for r in loaded])
        buckets = np.concatenate([r.buckets for r in loaded])
        expected = [norms[buckets == b].mean() for b in range(buckets.max() + 1)]
        np.testing.assert_allclose(stats.norm_by_layer_bucket[("q", layer)].mean(), expected, rtol=1e-12)
    assert_norms_equal_the_loaded_rows(stats, {c: qk_sniffer.load(out, c) for c in parts})


def test_a_drawer_of_some_figures_computes_only_what_they_need(out):
    """The norm sums alone and the logits alone equal those of the full pass; the other half stays empty."""
    layout = json.loads((out / METADATA).read_text())["layout"]
    parts = committed_parts(out)
    norms, logits = report_data.aggregates(parts, layout)
    norms_only, no_logits = report_data.aggregates(parts, layout, logits=False)
    no_norms, logits_only = report_data.aggregates(parts, layout, norms=False)
    assert not no_logits.sums and not no_norms.rows_per_bucket and not no_norms.norm_by_position
    assert sorted(logits_only.sums) == sorted(logits.sums)
    for key, sums in logits.sums.items():
        np.testing.assert_array_equal(logits_only.sums[key].total, sums.total)
        np.testing.assert_array_equal(logits_only.sums[key].count, sums.count)
    assert sorted(norms_only.norm_by_position) == sorted(norms.norm_by_position)
    for kind, sums in norms.rows_per_bucket.items():
        assert norms_only.rows_per_bucket[kind].count.tolist() == sums.count.tolist()
    for key, sums in norms.norm_by_layer_bucket.items():
        np.testing.assert_allclose(norms_only.norm_by_layer_bucket[key].total, sums.total, rtol=1e-12)


def test_figures_of_older_data_are_not_linked_and_the_report_redraws_them(out, tmp_path):
    copy = tmp_path / "capture"
    shutil.copytree(out, copy)
    capture(copy, "sampler=all", "capture.layers=[2]", "report.enabled=false")
    card = (copy / CARD).read_text()
    assert "figures/" not in card.replace(f"`{FIGURES_DIR}/`", "")
    assert "were drawn from older data" in card

    proc = run_report(f"output.dir={copy}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 5 figures" in proc.stdout
    assert figure_section(copy)[2] == "![Rows per bucket](figures/rows_per_bucket.png)"
    coverage = imread(copy / FIGURES_DIR / "coverage.png")
    assert coverage.shape[0] >= 200
    assert "(figures/coverage.png)" in (copy / CARD).read_text()
    assert not list(Path(tmp_path).glob(".hydra")) and not (tmp_path / "outputs").exists()


def test_a_rerun_that_wrote_nothing_draws_no_figure(out, tmp_path):
    copy = tmp_path / "capture"
    shutil.copytree(out, copy)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (copy / FIGURES_DIR).iterdir()}
    capture(copy, "sampler=all", "capture.layers=[0,1]", "report.enabled=true")  # every example is done
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (copy / FIGURES_DIR).iterdir()}
    assert after == before
    assert "(figures/coverage.png)" in (copy / CARD).read_text()


@pytest.mark.parametrize("target", ["missing", "absent", "empty", "not-a-capture"])
def test_report_without_a_capture_is_one_clear_message_and_exit_2(tmp_path, target):
    (tmp_path / "empty").mkdir()
    (tmp_path / "not-a-capture").mkdir()
    (tmp_path / "not-a-capture" / "notes.txt").write_text("hello")
    args = [] if target == "missing" else [f"output.dir={tmp_path / target}"]
    proc = run_report(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    expected = {
        "missing": "output.dir is required",
        "absent": "does not exist",
        "empty": "holds no qk-sniffer capture",
        "not-a-capture": "holds no qk-sniffer capture",
    }[target]
    assert line.startswith("qk_sniffer: error: ") and expected in line


def test_report_help_and_cfg(tmp_path):
    proc = run_report("--help", cwd=tmp_path)
    assert proc.returncode == 0 and "python -m qk_sniffer.report output.dir=PATH" in proc.stdout
    proc = run_report("--cfg", "job", "output.dir=/data/qk", cwd=tmp_path)
    assert proc.returncode == 0 and "dir: /data/qk" in proc.stdout
    proc = run_report("output.typo=1", cwd=tmp_path)
    assert proc.returncode != 0 and "typo" in proc.stderr


def test_parquet_reads_see_the_same_committed_row_counts(out):
    for config, files in committed_parts(out).items():
        assert sum(pq.ParquetFile(p.path).metadata.num_rows for p in files) == len(
            qk_sniffer.load(out, config)
        )


def test_load_bench_times_load_and_pyarrow_on_the_same_committed_files(capsys):
    from qk_sniffer.commands.load_bench import main

    result = main(["--rows", "2000", "--head-dim", "8", "--parts", "2", "--repeats", "1"])
    assert result["rows"] == 2000 and result["qk_sniffer_load_s"] > 0 and result["pyarrow_read_table_s"] > 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result


def test_coverage_and_rows_per_bucket_count_the_committed_rows(out):
    layout = json.loads((out / METADATA).read_text())["layout"]
    parts = committed_parts(out)
    maps = report_data.coverage(parts, layout)
    assert maps["q"].tolist() == [[True] * 4, [True] * 4, [False] * 4, [False] * 4]
    assert maps["k"].tolist() == [[True] * 2, [True] * 2, [False] * 2, [False] * 2]
    stats = report_data.aggregates(parts, layout)[0]
    for kind in ("q", "k"):
        buckets = np.concatenate([qk_sniffer.load(out, c).buckets for c in sorted(parts) if c.endswith(kind)])
        assert stats.rows_per_bucket[kind].count.tolist() == np.bincount(buckets).tolist()


def test_many_buckets_fold_into_64_ranges_that_keep_every_row():
    from qk_sniffer.analysis.plots import fold

    sums = report_data.Sums()
    buckets = np.arange(1000)
    sums.add(buckets, buckets.astype(float))
    labels, folded = fold(sums, 1000)
    assert len(labels) == 64 and labels[0] == "0-14" and labels[-1].endswith("-999")
    assert folded.count.sum() == 1000 and folded.total.sum() == buckets.sum()


def test_a_push_carries_the_figures_and_the_branchs_card_embeds_them(monkeypatch, tmp_path):
    fake = install_stand_in(monkeypatch, tmp_path)
    out = capture(
        tmp_path / "capture",
        "capture.layers=[0]",
        "report.enabled=true",
        "output.hub.push=true",
        f"output.hub.repo_id={HUB_REPO}",
    )
    branch = next(b for b in fake.branches[HUB_REPO] if b != "main")
    remote = fake.tree(HUB_REPO, branch)
    names = json.loads(remote[f"{FIGURES_DIR}/{INDEX}"])["figures"]
    assert set(names) == FIGURES
    card = remote[CARD].decode()
    for name in names:
        assert remote[f"{FIGURES_DIR}/{name}.png"] == (out / FIGURES_DIR / f"{name}.png").read_bytes()
        assert f"](figures/{name}.png)" in card
