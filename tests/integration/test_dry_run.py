"""``dry_run=true`` prints the plan from the config alone: no weights read, no capture output written."""

from __future__ import annotations

import json

import numpy as np
from helpers import REPO, compose_cfg, run_cli, save_checkpoint

from qk_sniffer.capture.samplers import sample_positions
from qk_sniffer.pipeline.dry_run import dry_run_plan
from qk_sniffer.pipeline.plan import plan_capture

GOLDEN = json.loads((REPO / "tests" / "data" / "golden_heads_qwen3_8b.json").read_text())


def last_json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_cli_dry_run_of_a_preset_plans_the_original_heads_and_cost(tmp_path):
    out = tmp_path / "capture"
    proc = run_cli(
        [
            "+experiment=attention-plasticity/qwen3-8b",
            "model.random_init=true",
            "dry_run=true",
            f"output.dir={out}",
            # The budget of the GPU it is planned for (the default, this host's free memory, may be smaller).
            "inference.memory_budget_gb=80",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    plan = last_json_line(proc.stdout)
    # Qwen3-8B has no sliding layers, so full_attention_only leaves every layer: the golden draw.
    assert plan["query_heads"] == GOLDEN["query_heads"]
    assert plan["key_heads"] == GOLDEN["key_heads"]
    # Uniform 1 in 8192 over 131,072 tokens keeps 16 positions per (layer, q|k), shared by its heads.
    assert plan["expected_rows_per_example"] == 16 * (300 + 194)
    # bucket int32 + example_id int64 + position int32 + 128 float32 + sliding_window int32.
    assert plan["expected_bytes_per_example"] == 16 * (300 + 194) * (4 + 8 + 4 + 128 * 4 + 4)
    assert "layer  35: q [0, 1, 3, 8, 11, 19, 23, 26, 28, 29]" in proc.stdout
    # The memory model: bf16 weights counted on the meta device; 131k tokens fit 80 GB in one pass.
    memory = plan["memory"]
    assert memory["budget_gb"] == 80 and memory["budget_source"] == "inference.memory_budget_gb"
    assert memory["weights_gb"] == round(8_190_735_360 * 2 / 1e9, 2)
    assert memory["token_chunk"] is None and memory["peak_gb"] == memory["one_pass_peak_gb"]
    assert memory["chunked_peak_gb"] < memory["one_pass_peak_gb"] < 80
    assert not out.exists()  # no capture output
    assert not list(tmp_path.rglob("*.parquet"))


def test_dry_run_reads_only_the_config_of_a_local_checkpoint(tmp_path):
    ckpt = save_checkpoint(tmp_path, "mistral")
    for weights in ckpt.glob("*.safetensors"):
        weights.unlink()  # a dry run must not need them
    out = tmp_path / "out"
    cfg = compose_cfg(
        [
            f"model.name={ckpt}",
            "dataset=synthetic",
            "dataset.seq_len=100",
            "dataset.num_examples=6",
            "sampler=log_bucket",
            "sampler.base_rate=4",
            "capture.full_attention_only=false",
            "capture.head_sampling.count=5",
            f"output.dir={out}",
            "dry_run=true",
        ]
    )
    plan = dry_run_plan(cfg)
    selection = plan_capture(cfg).selection
    assert plan["query_heads"] == sorted([layer, h] for layer, hs in selection.q_heads.items() for h in hs)
    assert len(plan["query_heads"]) == 5 and plan["key_heads"]
    # The expectation is the mean of what the sampler keeps: check it against many drawn masks.
    sampler = plan_capture(cfg).sampler
    drawn = np.mean([len(sample_positions(sampler, ex, 0, "q", 100)[0]) for ex in range(4000)])
    assert abs(drawn - plan["expected_positions_per_example"]) < 0.05 * plan["expected_positions_per_example"]
    vectors = len(plan["query_heads"]) + len(plan["key_heads"])
    assert plan["expected_rows_per_example"] == plan["expected_positions_per_example"] * vectors
    assert plan["examples"] == 6
    assert plan["expected_rows_total"] == 6 * plan["expected_rows_per_example"]
    assert plan["expected_bytes_total"] == plan["expected_rows_total"] * (4 + 8 + 4 + 16 * 4 + 4)
    assert not out.exists()


def test_dry_run_of_a_hub_model_offline_is_one_clear_message(tmp_path):
    proc = run_cli(
        ["+experiment=attention-plasticity/qwen3-8b", "dry_run=true"],
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "dry_run: model.name='Qwen/Qwen3-8B' is not a local directory" in proc.stderr
    assert "model.random_init=true" in proc.stderr
