"""The keys a multirun may vary while its jobs share one output.dir change no recipe: jobs that merge into
one dir write the same rows for the same (example, config), and every other key gives a job its own dir."""

from __future__ import annotations

import copy

import pytest
import yaml
from helpers import compose_cfg
from omegaconf import DictConfig, OmegaConf

from qk_sniffer.pipeline.plan import plan_capture
from qk_sniffer.pipeline.sweep import ROW_CHOOSING, chooses_rows_only
from qk_sniffer.publish.run_metadata import run_metadata
from qk_sniffer.store.manifest import model_identity, recipe_of

# A value for each key a sweep may vary inside one dir (ROW_CHOOSING), to show it changes no recipe.
ROW_CHOOSING_PROBES = {
    "capture.layers": ["capture.layers=[0]"],
    "capture.heads": ["capture.heads=[1]"],
    "capture.head_sampling": ["capture.head_sampling.count=2", "capture.head_sampling.seed=3"],
    "capture.full_attention_only": ["capture.full_attention_only=true"],
    "capture.queries": ["capture.queries=false"],
    "capture.keys": ["capture.keys=false"],
    "dataset.max_samples": ["dataset.max_samples=2"],
    "dataset.num_shards": ["dataset.num_shards=2"],
    "dataset.shard_index": ["dataset.num_shards=2", "dataset.shard_index=1"],
    "dataset.num_examples": ["dataset.num_examples=9"],
    "dataset.streaming": ["dataset.streaming=true"],
    "dataset.slug": ["dataset.slug=other"],
    "model.slug": ["model.slug=other"],
    "model.device": ["model.device=cpu"],
    "model.device_map": ["model.device_map=auto"],
    "model.attn_implementation": ["model.attn_implementation=eager"],
    "inference": ["inference.batch_size=3"],
    "output": ["output.flush_every_examples=5", "output.mode=replace", "output.compact=true"],
    "wandb": ["wandb.project=other"],
    "report": ["report.enabled=false"],
    "dry_run": ["dry_run=true"],
}


def recipe_and_identity(base: DictConfig, overrides: list[str]) -> tuple[dict, dict]:
    cfg = copy.deepcopy(base)
    for override in overrides:
        key, _, value = override.partition("=")
        OmegaConf.update(cfg, key, yaml.safe_load(value))
    plan = plan_capture(cfg)
    metadata = run_metadata(cfg, plan.layout, plan.selection, plan.sampler)
    return recipe_of(metadata), model_identity(metadata)


@pytest.mark.parametrize("dataset", ["embedded", "synthetic"])
def test_the_keys_a_sweep_varies_inside_one_dir_change_no_recipe(dataset):
    assert sorted(ROW_CHOOSING_PROBES) == sorted(ROW_CHOOSING)
    cfg = compose_cfg([f"dataset={dataset}"])
    base = recipe_and_identity(cfg, [])
    for key, probe in ROW_CHOOSING_PROBES.items():
        assert chooses_rows_only(key)
        assert recipe_and_identity(cfg, probe) == base, key
    # And keys that do change what a row holds get a dir of their own.
    for other in (
        "sampler.base_rate=0.5",
        "capture.pre_rope=true",
        "tokenizer.max_length=64",
        "model.dtype=bfloat16",
    ):
        assert recipe_and_identity(cfg, [other]) != base, other
        assert not chooses_rows_only(other.partition("=")[0])
    assert not chooses_rows_only("sampler") and not chooses_rows_only("experiment")
