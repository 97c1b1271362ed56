"""Every original production run is a preset under conf/experiment/ that composes, validates and pins what the
original run file pinned, and whose dry run selects the original's heads.

The expected values come from tests/data/original_runs.json, transcribed from the original tool's run files
(each run names its source file and commit), never from our own YAML. Nothing here loads weights or touches
the network: heads are planned from each model preset's ``architecture`` (``model.random_init=true``).
"""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
import yaml
from helpers import REPO, compose_cfg, run_cli
from omegaconf import OmegaConf

from qk_sniffer.capture.models import build_config, layout_from_config
from qk_sniffer.capture.positions import position_limit
from qk_sniffer.pipeline.dry_run import dry_run_plan
from qk_sniffer.pipeline.validate import config_problems, model_problems

EXPERIMENTS = REPO / "conf" / "experiment" / "attention-plasticity"
ORIGINAL = json.loads((REPO / "tests" / "data" / "original_runs.json").read_text())["runs"]
LOGGING = {"wandb", "tracking"}  # the test helper turns logging off; the CLI keeps its default


def test_one_preset_per_original_run():
    found = sorted(str(p.relative_to(EXPERIMENTS).with_suffix("")) for p in EXPERIMENTS.rglob("*.yaml"))
    assert found == sorted(ORIGINAL)
    for path in EXPERIMENTS.rglob("*.yaml"):
        assert path.read_text().startswith("# @package _global_\n"), path


def ours_in_original_terms(cfg) -> dict:
    """The composed preset, in the original run file's keys and vocabulary."""
    sampler = OmegaConf.to_container(cfg.sampler)
    assert sampler.keys() == {"name", "base_rate", "bucket_size"}, "the original runs sampled uniformly"
    return {
        "model": {
            "name": cfg.model.name,
            "revision": cfg.model.revision,
            "dtype": cfg.model.dtype,
            "config_overrides": OmegaConf.to_container(cfg.model.config_overrides),
        },
        # A null tokenizer.name means the model's own, as the original's run files spelled out.
        "tokenizer": {"name": cfg.tokenizer.name or cfg.model.name, "max_length": cfg.tokenizer.max_length},
        "dataset": {
            k: cfg.dataset[k] for k in ("path", "name", "split", "text_column", "id_column", "max_samples")
        },
        "capture": {
            "capture_queries": cfg.capture.queries,
            "capture_keys": cfg.capture["keys"],  # `.keys` is the mapping method
            "layers": cfg.capture.layers,
            "heads": cfg.capture.heads,
            "head_sampling": {
                "count": cfg.capture.head_sampling.count,
                "seed": cfg.capture.head_sampling.seed,
            },
            "full_attention_only": cfg.capture.full_attention_only,
            "capture_pre_rope": cfg.capture.pre_rope,
            # The original's uniform sampler took capture.min_bucket_size as its bucket width.
            "min_bucket_size": sampler["bucket_size"],
            "sampler": {"type": sampler["name"], "base_rate": sampler["base_rate"]},
        },
        "branch": cfg.output.hub.branch,
    }


def original_in_comparable_terms(run: dict) -> dict:
    keep = {k: run[k] for k in ("model", "tokenizer", "dataset", "capture")}
    return {**keep, "branch": run["output"]["hf_branch"]}


@pytest.mark.parametrize("preset", sorted(ORIGINAL))
def test_preset_pins_the_original_run(preset):
    cfg = compose_cfg([f"+experiment=attention-plasticity/{preset}"])
    assert ours_in_original_terms(cfg) == original_in_comparable_terms(ORIGINAL[preset])
    assert cfg.output.hub.push is False
    assert config_problems(cfg) == []


def original_heads(model_config, capture: dict) -> list[list[int]]:
    """The original tool's head sampling (sniff.py resolve_head_filters), written out from its source for this
    test alone: the first config (the model's, then its text config) with a layer and head count gives the
    layout; every layer is a candidate unless full_attention_only drops those whose layer_types entry is
    sliding_attention; random.Random(seed).sample picks count of the layer-major (layer, head) list. Mllama's
    cross-attention layers were candidates, but captured nothing: they are dropped from the result."""
    configs = [model_config, getattr(model_config, "text_config", None)]
    cfg = next(c for c in configs if c is not None and getattr(c, "num_hidden_layers", None) is not None)
    n_layers, n_heads = int(cfg.num_hidden_layers), int(cfg.num_attention_heads)
    layer_types = getattr(cfg, "layer_types", None) or []
    sliding = {i for i, t in enumerate(layer_types[:n_layers]) if str(t) == "sliding_attention"}
    candidates = [
        (layer, head)
        for layer in range(n_layers)
        for head in range(n_heads)
        if not (capture["full_attention_only"] and layer in sliding)
    ]
    count, seed = capture["head_sampling"]["count"], capture["head_sampling"]["seed"]
    picked = candidates if count == len(candidates) else random.Random(seed).sample(candidates, count)
    cross = set(getattr(cfg, "cross_attention_layers", None) or [])
    return sorted([layer, head] for layer, head in picked if layer not in cross)


@pytest.mark.parametrize("preset", sorted(ORIGINAL))
def test_preset_dry_run_selects_the_original_heads(preset):
    # Planned for an H200: the budget is its memory (this host's free memory may be smaller).
    cfg = compose_cfg(
        [
            f"+experiment=attention-plasticity/{preset}",
            "model.random_init=true",
            "inference.memory_budget_gb=141",
        ]
    )
    plan = dry_run_plan(cfg)
    assert plan["memory"]["peak_gb"] <= 141
    shape = build_config(replace(OmegaConf.to_object(cfg.model), config_overrides={}))
    expected = original_heads(shape, ORIGINAL[preset]["capture"])
    assert plan["query_heads"] == expected
    group = plan["num_q_heads"] // plan["num_kv_heads"]
    assert plan["key_heads"] == sorted(map(list, {(layer, head // group) for layer, head in expected}))
    # The preset's max_length fits the positions the model was built for (or extended to by its rope).
    model_config = build_config(OmegaConf.to_object(cfg.model))
    assert model_problems(cfg, layout_from_config(model_config), position_limit(model_config)) == []
    if preset == "llama3.2-11b":  # the original's 300 draws included 8 cross-attention layers
        assert len(expected) < 300
    else:
        assert len(expected) == 300


@pytest.mark.parametrize("preset", ["qwen3-8b", "smollm3-checkpoints/lc-32k-to-64k-step-20000"])
def test_cli_cfg_job_prints_the_original_run(tmp_path, preset):
    proc = run_cli([f"+experiment=attention-plasticity/{preset}", "--cfg", "job"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    shown = OmegaConf.create(yaml.safe_load(proc.stdout))
    assert ours_in_original_terms(shown) == original_in_comparable_terms(ORIGINAL[preset])
    # report.enabled=true: the CLI's default, which compose_cfg turns off for speed
    composed = OmegaConf.to_container(
        compose_cfg([f"+experiment=attention-plasticity/{preset}", "report.enabled=true"])
    )
    assert {k: v for k, v in OmegaConf.to_container(shown).items() if k not in LOGGING} == {
        k: v for k, v in composed.items() if k not in LOGGING
    }
    assert list(tmp_path.iterdir()) == []  # printing the config runs nothing and writes nothing
