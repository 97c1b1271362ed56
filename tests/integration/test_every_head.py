"""Exact means complete: the families whose layers differ, hybrids, shared blocks and wrapper decoders.

Each family is a tiny random model saved as a checkpoint and captured by the real runner with ``sampler=all``
pre- and post-RoPE; the (layer, head, q|k) configs written must be exactly those the model's own eager
attention calls saw (heads counted from those calls, never from the config), and every vector of every row
must equal the model's own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import TEXTS, compose_cfg, embedded_tokenizer, every_row_overrides, read_configs, write_jsonl
from transformers import AutoConfig

from qk_sniffer.capture.models import _auto_class, backbone_of
from qk_sniffer.capture.selfcheck import LayerQK, eager_qk
from qk_sniffer.capture.support import matrix_entry
from qk_sniffer.core.errors import UserError
from qk_sniffer.core.naming import config_name, parse_config_name
from qk_sniffer.families.tiny import tiny_config
from qk_sniffer.pipeline import shapes_cache
from qk_sniffer.pipeline.dry_run import dry_run_plan
from qk_sniffer.pipeline.runner import run
from qk_sniffer.store.layout import METADATA

TOL = 1e-4
TEXT_IDS = [embedded_tokenizer()(t)["input_ids"] for t in TEXTS]

# Zamba2 with one shared attention block applied at two depths (layers 1 and 3), each application through its
# own LoRA adapter: two captures, each under the decoder layer where it runs.
ZAMBA2_TWICE = {
    "num_hidden_layers": 4,
    "layers_block_type": ["mamba", "hybrid", "mamba", "hybrid"],
    "use_shared_attention_adapter": True,
    "adapter_rank": 4,
}
FAMILIES = {
    "nemotron": {},
    "nemotron_h": {},  # attention, Mamba, MoE and MLP blocks; the stack's embeddings are `embeddings`
    "granitemoehybrid": {},  # Mamba layers beside one softmax layer, no rotation
    "bamba": {},  # Mamba layers beside one rotated softmax layer
    "zamba2": ZAMBA2_TWICE,
    "qwen2_vl": {},  # multimodal rotary (mrope) on text, vision tower beside
    "qwen2_5_vl": {},
    "paligemma": {},  # captured on eager: transformers' sdpa path for its text model alone differs
    "gemma3n_text": {},  # the last layers attend to earlier layers' keys (KV sharing)
    "inkling_text": {},  # sliding layers run other heads and head dims than its full layers
    "mimo_v2_flash": {},  # sliding layers run twice the key heads
}


@dataclass
class FamilyRun:
    """One family's checkpoint, the model's own Q/K per text, and its captures pre- and post-RoPE."""

    model: torch.nn.Module
    ckpt: Path
    refs: list[dict[int, LayerQK]]
    captures: dict[bool, tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Callable[[str], FamilyRun]:
    """Each family built, referenced and captured once per module, whichever test asks first."""
    cache: dict[str, FamilyRun] = {}

    def get(model_type: str) -> FamilyRun:
        if model_type not in cache:
            tmp = tmp_path_factory.mktemp(model_type)
            model, ckpt = build(tmp, model_type)
            with torch.inference_mode():
                refs = [eager_qk(model, ids) for ids in TEXT_IDS]
            cache[model_type] = FamilyRun(model, ckpt, refs)
            for pre_rope in (False, True):
                cache[model_type].captures[pre_rope] = capture(tmp, ckpt, pre_rope)
        return cache[model_type]

    return get


def build(tmp: Path, model_type: str) -> tuple[torch.nn.Module, Path]:
    entry = matrix_entry(model_type)
    assert entry is not None and entry["status"] == "exact", model_type  # else a run refuses it
    config = AutoConfig.for_model(model_type, **{**tiny_config(model_type), **FAMILIES[model_type]})
    torch.manual_seed(0)
    model = _auto_class(config, False).from_config(config, dtype=torch.float32).eval()
    ckpt = tmp / "ckpt"
    model.save_pretrained(ckpt)
    embedded_tokenizer().save_pretrained(ckpt)
    return model, ckpt


def capture(tmp: Path, ckpt: Path, pre_rope: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    data = write_jsonl(tmp / "docs.jsonl", [{"text": t} for t in TEXTS])
    out = tmp / f"out-{pre_rope}"
    run(compose_cfg(every_row_overrides(ckpt, data, out, pre_rope)))
    return read_configs(out), json.loads((out / METADATA).read_text())


def vectors_of(table) -> np.ndarray:
    return np.asarray(table.column("vector").to_pylist(), dtype=np.float32)


def seen_by_the_model(refs: dict[int, LayerQK]) -> set[tuple[int, int, str]]:
    """Every (layer, head, kind) the model's own eager attention calls saw, counted from their tensors."""
    return {(layer, head, "q") for layer, r in refs.items() for head in range(r.q_post.shape[0])} | {
        (layer, head, "k") for layer, r in refs.items() for head in range(r.k_post.shape[0])
    }


def check_rows(table, refs: list[dict[int, LayerQK]], key: tuple[int, int, str], pre_rope: bool) -> None:
    """Every row of one config equals the model's own vector at its example and position."""
    layer, head, kind = key
    assert table.num_rows == sum(map(len, TEXT_IDS)), key
    vectors = vectors_of(table)
    examples, positions = table.column("example_id").to_pylist(), table.column("position").to_pylist()
    for row, (ex, pos) in enumerate(zip(examples, positions, strict=True)):
        ref = refs[ex][layer]
        source = {"q": (ref.q_post, ref.q_pre), "k": (ref.k_post, ref.k_pre)}[kind][int(pre_rope)]
        err = float(np.abs(vectors[row] - source[head, pos].numpy()).max())
        assert err <= TOL, f"{'pre' if pre_rope else 'post'} l{layer}h{head}{kind} ex{ex} pos{pos}: {err}"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_every_head_the_model_computes_is_written_and_equals_its_own(runs, model_type):
    fr = runs(model_type)
    expected = seen_by_the_model(fr.refs[0])
    for pre_rope in (False, True):
        tables, metadata = fr.captures[pre_rope]
        written = {parse_config_name(name) for name in tables}
        assert written == expected, f"{model_type}: written {len(written)}, the model saw {len(expected)}"
        for layer, head, kind in sorted(expected):
            check_rows(tables[config_name(layer, head, kind)], fr.refs, (layer, head, kind), pre_rope)
    # The layers without softmax attention are listed as skipped; every other layer was captured.
    layout = metadata["layout"]
    skipped = set(layout["linear_attention_layers"]) | set(layout["cross_attention_layers"])
    assert skipped == set(range(layout["num_layers"])) - {layer for layer, _, _ in expected}


def test_a_shared_block_is_captured_under_each_layer_that_applies_it(runs):
    fr = runs("zamba2")
    layers = backbone_of(fr.model).layers
    first, second = layers[1].shared_transformer.self_attn, layers[3].shared_transformer.self_attn
    # Both applications of the shared block (tied in the published checkpoints) carry index -1: only the
    # decoder layer running them tells them apart.
    assert first.layer_idx == second.layer_idx == -1
    tables, metadata = fr.captures[False]
    assert {parse_config_name(name)[0] for name in tables} == {1, 3}
    assert metadata["layout"]["linear_attention_layers"] == [0, 2]
    once, twice = (vectors_of(tables[config_name(layer, 0, "q")]) for layer in (1, 3))
    assert np.abs(once - twice).max() > 1e-3  # two applications, two sets of vectors


def test_per_layer_heads_are_in_the_metadata_and_the_dry_run(runs):
    fr = runs("inkling_text")
    tables, metadata = fr.captures[False]
    layout = metadata["layout"]
    # Sliding layers run 8 query / 4 key heads of dim 32, the full layer 4 / 2 of dim 16 (its config's
    # num_attention_heads says 4 for every layer).
    assert layout["q_heads_per_layer"] == [8, 8, 8, 8, 8, 4]
    assert layout["kv_heads_per_layer"] == [4, 4, 4, 4, 4, 2]
    assert layout["head_dims"] == [32, 32, 32, 32, 32, 16]
    assert {name for name in tables if name.startswith("l05")} == {
        *(config_name(5, h, "q") for h in range(4)),
        *(config_name(5, h, "k") for h in range(2)),
    }
    assert vectors_of(tables[config_name(0, 7, "q")]).shape[1] == 32
    plan = dry_run_plan(compose_cfg([f"model.name={fr.ckpt}", "dry_run=true"]))
    assert plan["q_heads_per_layer"] == layout["q_heads_per_layer"]
    assert plan["head_dims"] == layout["head_dims"]
    assert len(plan["query_heads"]) == 5 * 8 + 4


def test_a_run_planned_from_the_config_alone_refuses_a_model_that_runs_other_heads(
    runs, tmp_path, monkeypatch
):
    """Where the forward without weights cannot run, the plan falls back to the config's head counts; a loaded
    model whose attention calls see other heads is then refused before anything is written."""
    fr = runs("inkling_text")
    monkeypatch.setattr(shapes_cache, "weightless_shapes", lambda config, trust_remote_code=False: None)
    data = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in TEXTS])
    out = tmp_path / "out"
    with pytest.raises(UserError, match="attention calls see other heads than its config states"):
        run(compose_cfg(every_row_overrides(fr.ckpt, data, out, False)))
    assert not out.exists()


def test_a_layer_reusing_earlier_keys_is_exact_pre_rope_when_captured_alone(runs, tmp_path):
    """Gemma 3n's last layers attend to keys an earlier layer rotated: their pre-RoPE keys are that layer's,
    also when only the reusing layer is captured."""
    fr = runs("gemma3n_text")
    shared = [i for i, layer in enumerate(backbone_of(fr.model).layers) if layer.self_attn.is_kv_shared_layer]
    assert shared, "the tiny config must share keys and values"
    data = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in TEXTS])
    out = tmp_path / "out"
    run(compose_cfg([*every_row_overrides(fr.ckpt, data, out, True), f"capture.layers=[{shared[-1]}]"]))
    tables = read_configs(out)
    assert {parse_config_name(name)[0] for name in tables} == {shared[-1]}
    for name, table in tables.items():
        key = parse_config_name(name)
        assert key is not None
        check_rows(table, fr.refs, key, True)
