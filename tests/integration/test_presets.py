"""Every original production run is a preset under conf/experiment/ that composes, validates and pins what the
original pinned; nothing here loads weights or touches the network."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml
from helpers import REPO, compose_cfg, run_cli
from omegaconf import OmegaConf

from qk_sniffer.heads import select_heads
from qk_sniffer.models import build_config, layout_from_config
from qk_sniffer.validate import config_problems

EXPERIMENTS = REPO / "conf" / "experiment"
YARN_X4 = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
LOGGING = {"wandb", "tracking"}  # the test helper turns logging off; the CLI keeps its default
DATASET = {
    "path": "viktoroo/longbench-pro-128k-plus",
    "split": "test",
    "text_column": "text",
    "id_column": "id",
}


def _run(
    name: str, max_length: int, rope: dict | None = None, revision: str = "main", tokenizer: str | None = None
):
    return {
        "name": name,
        "revision": revision,
        "max_length": max_length,
        "rope": rope,
        "tokenizer": tokenizer,
    }


SMOLLM3 = "HuggingFaceTB/SmolLM3-3B-checkpoints"
# preset -> what the original run pinned (model, revision, max_length, rope override, tokenizer).
EXPECTED = {
    "qwen3-0.6b": _run("Qwen/Qwen3-0.6B", 131072, YARN_X4),
    "qwen3-1.7b": _run("Qwen/Qwen3-1.7B", 131072, YARN_X4),
    "qwen3-4b": _run("Qwen/Qwen3-4B", 131072, YARN_X4),
    "qwen3-8b": _run("Qwen/Qwen3-8B", 131072, YARN_X4),
    "qwen3-14b": _run("Qwen/Qwen3-14B", 131072, YARN_X4),
    "llama3.1-8b": _run("meta-llama/Llama-3.1-8B", 131072),
    "llama3.2-1b": _run("meta-llama/Llama-3.2-1B", 131072),
    "llama3.2-3b": _run("meta-llama/Llama-3.2-3B", 131072),
    "llama3.2-11b": _run("meta-llama/Llama-3.2-11B-Vision", 131072),
    "ministral3-3b": _run("mistralai/Ministral-3-3B-Base-2512", 131072),
    "ministral3-8b": _run("mistralai/Ministral-3-8B-Base-2512", 131072),
    "ministral3-14b": _run("mistralai/Ministral-3-14B-Base-2512", 131072),
    "mistral-v0.2-7b": _run("mistralai/Mistral-7B-Instruct-v0.2", 32768),
    **{
        f"smollm3-checkpoints/{rev}": _run(SMOLLM3, length, revision=rev)
        for rev, length in [
            ("stage1-step-40000", 4096),
            ("stage1-step-1200000", 4096),
            ("stage1-step-2400000", 4096),
            ("stage1-step-3440000", 4096),
            ("stage2-step-4200000", 4096),
            ("lc-4k-to-32k-step-4000", 32768),
            ("lc-4k-to-32k-step-20000", 32768),
            ("lc-32k-to-64k-step-4000", 65536),
            ("lc-32k-to-64k-step-20000", 65536),
        ]
    },
    "smollm3-checkpoints/stage3-step-4720000": _run(
        SMOLLM3, 4096, revision="stage3-step-4720000", tokenizer="HuggingFaceTB/SmolLM3-3B"
    ),
}


def branch_of(preset: str) -> str:
    run = EXPECTED[preset]
    slug = f"smollm3-3b-{run['revision']}" if run["name"] == SMOLLM3 else preset
    return f"{slug}-longbench-pro-128k-plus"


def test_one_preset_per_original_run():
    found = sorted(
        str(p.relative_to(EXPERIMENTS / "attention-plasticity").with_suffix(""))
        for p in EXPERIMENTS.rglob("*.yaml")
    )
    assert found == sorted(EXPECTED)
    for path in EXPERIMENTS.rglob("*.yaml"):
        assert path.read_text().startswith("# @package _global_\n"), path


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_preset_composes_and_pins_the_original_run(preset):
    cfg = compose_cfg([f"+experiment=attention-plasticity/{preset}"])
    run = EXPECTED[preset]
    assert cfg.model.name == run["name"]
    assert cfg.model.revision == run["revision"]
    assert cfg.model.dtype == "bfloat16"
    assert cfg.model.architecture, "the model preset gives the shape (checked below without weights)"
    overrides = OmegaConf.to_container(cfg.model.config_overrides)
    assert overrides == ({"rope_scaling": run["rope"]} if run["rope"] else {})
    assert cfg.tokenizer.max_length == run["max_length"]
    assert cfg.tokenizer.name == run["tokenizer"]
    assert {k: cfg.dataset[k] for k in DATASET} == DATASET
    assert OmegaConf.to_container(cfg.sampler) == {"name": "uniform", "base_rate": 1.0, "bucket_size": 8192}
    assert cfg.capture.head_sampling.count == 300 and cfg.capture.head_sampling.seed == 0
    assert cfg.capture.full_attention_only is True
    assert cfg.capture.pre_rope is False and cfg.capture.queries and cfg.capture.keys
    assert cfg.capture.layers is None and cfg.capture.heads is None
    assert cfg.output.hub.branch == branch_of(preset)
    assert cfg.output.hub.push is False
    assert config_problems(cfg) == []

    # The head sampling fits the model: 300 query heads on full-attention layers, from the preset's shape.
    shape = replace(OmegaConf.to_object(cfg.model), random_init=True)
    layout = layout_from_config(build_config(shape))
    selection = select_heads(cfg.capture, layout)
    assert selection.count("q") == 300
    assert all(not layout.is_sliding(layer) for layer in selection.layers)
    if run["rope"]:  # merged into the checkpoint's rope parameters, keeping its rope_theta
        assert {k: layout.rope[k] for k in YARN_X4} == YARN_X4
        assert layout.rope["rope_theta"] == 1000000.0


@pytest.mark.parametrize("preset", ["qwen3-8b", "smollm3-checkpoints/lc-32k-to-64k-step-20000"])
def test_cli_cfg_job_prints_the_preset(tmp_path, preset):
    proc = run_cli([f"+experiment=attention-plasticity/{preset}", "--cfg", "job"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    shown = yaml.safe_load(proc.stdout)
    # report.enabled=true: the CLI's default, which compose_cfg turns off for speed
    composed = OmegaConf.to_container(
        compose_cfg([f"+experiment=attention-plasticity/{preset}", "report.enabled=true"])
    )
    assert {k: v for k, v in shown.items() if k not in LOGGING} == {
        k: v for k, v in composed.items() if k not in LOGGING
    }
    assert shown["output"]["hub"]["branch"] == branch_of(preset)
    assert list(tmp_path.iterdir()) == []  # printing the config runs nothing and writes nothing
