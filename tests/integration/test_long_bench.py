"""The long-context bench: a capture per (length, arm), its record, the comparison of the arms' vectors, and
the child process it runs in. Tiny lengths: what is checked is the plumbing and the record, not speed."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from qk_sniffer.core.config import CONF_DIR, register_configs
from qk_sniffer.core.errors import UserError
from qk_sniffer.pipeline import long_bench

register_configs()

TINY = [
    "model=bench-long",
    "bench.mode=long_context",
    "bench.lengths=[96]",
    "bench.repeats=1",
    "bench.warmup=0",
    "bench.early_stop=false",
    "capture.head_sampling.count=null",
    "sampler=all",
    "inference.token_chunk=16",
]


def bench_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="bench", overrides=[*TINY, *overrides])


def test_both_arms_capture_the_same_vectors_and_report_what_they_ran(tmp_path: Path):
    records = {}
    for arm in long_bench.ARMS:
        records[arm] = long_bench.measure(bench_cfg([]), 96, arm, tmp_path / f"{arm}.npz")
    budget, one_pass = records["budget"], records["one_pass"]
    assert budget["status"] == one_pass["status"] == "ok"
    assert (budget["token_chunk"], one_pass["token_chunk"]) == (16, None)
    # 2 layers x (4 query + 2 key heads) x 96 positions, every one kept by sampler=all.
    assert budget["vectors"] == one_pass["vectors"] == 2 * 6 * 96
    assert budget["tokens"] == 96 and budget["layers_built"] == budget["num_layers"] == 2
    assert budget["extrapolated_forward_s"] is None and budget["peak_gpu_gb"] is None
    assert budget["estimated_peak_gb"] < one_pass["estimated_peak_gb"]
    same = long_bench.compare(tmp_path / "budget.npz", tmp_path / "one_pass.npz")
    assert same == {
        "same_rows_as_one_pass": True,
        "max_abs_diff_vs_one_pass": same["max_abs_diff_vs_one_pass"],
    }
    assert same["max_abs_diff_vs_one_pass"] <= 1e-5


def test_a_slice_of_layers_holds_the_rest_as_ballast_and_extrapolates_time(tmp_path: Path):
    cfg = bench_cfg(["bench.layers_built=1"])
    record = long_bench.measure(cfg, 64, "budget", tmp_path / "x.npz")
    assert record["layers_built"] == 1 and record["num_layers"] == 2
    assert record["extrapolated_forward_s"] == pytest.approx(2 * record["forward_s"], abs=0.02)


def test_a_length_over_the_budget_is_skipped_not_run(tmp_path: Path):
    record = long_bench.measure(bench_cfg(["inference.memory_budget_gb=0.5"]), 96, "one_pass", tmp_path / "x")
    assert record["status"].startswith("skipped: estimated") and "tokens_per_s" not in record


def test_the_child_process_reports_its_whole_peak(tmp_path: Path):
    """One real child: the entry point the bench spawns, its JSON line, and the peak RSS from wait4."""
    record = long_bench.run_child(bench_cfg([]), 64, "budget", tmp_path / "child.npz")
    assert record["status"] == "ok" and record["length"] == 64 and record["arm"] == "budget"
    assert 0.1 < record["peak_rss_gb"] < record["estimated_peak_gb"] + 1
    assert (tmp_path / "child.npz").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("bench.arms=[fast]", "bench.arms: 'fast' is unknown"),
        ("bench.lengths=[0]", "bench.lengths must hold integers >= 1"),
        ("bench.layers_built=0", "bench.layers_built must be >= 1 or null"),
    ],
)
def test_bad_long_bench_settings_get_one_message(override, message):
    with pytest.raises(UserError, match=message):
        long_bench.check_long_bench(bench_cfg([override]))
