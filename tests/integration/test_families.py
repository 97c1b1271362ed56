"""The support matrix: shipped consistent, re-measured live on a handful of families, and driving refusals.

The full sweep (every model type, about a minute on two cores) is ``make sweep`` and the ``slow`` test below;
the fast subset here re-measures families that exercise each quirk and each refusal class.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import embedded_tokenizer, every_row_overrides, read_configs, run_cli, write_jsonl
from reference import check_table, eager_reference
from transformers import AutoConfig, AutoModelForCausalLM

from qk_sniffer.capture import support as families
from qk_sniffer.capture.models import build_config, layout_from_config, load_model
from qk_sniffer.capture.selfcheck import capture_blocks, check_unlisted_family, every_head
from qk_sniffer.commands.families import merged
from qk_sniffer.core.config import ModelConfig
from qk_sniffer.core.errors import UserError
from qk_sniffer.core.naming import config_name
from qk_sniffer.families import sweep
from qk_sniffer.families.docs import README_BEGIN, README_END, readme_table
from qk_sniffer.families.tiny import tiny_config

REPO = Path(__file__).resolve().parents[2]
MATRIX = families.support_matrix()
ENTRIES = MATRIX["families"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_shipped_matrix_covers_every_candidate_with_a_known_status():
    assert set(ENTRIES) == set(sweep.candidates())
    for model_type, entry in ENTRIES.items():
        assert entry["status"] in sweep.STATUSES, model_type
        assert isinstance(entry["tiny_config"], dict)
        if entry["status"] == "exact":
            assert entry["reason"] == "" and entry["backend"] in ("sdpa", "eager"), model_type
            assert entry["vectors"] > 0 and entry["worst_error"] <= MATRIX["tolerance"], model_type
            assert set(entry["quirks"]) <= set(sweep.QUIRKS), model_type
        else:
            assert entry["reason"], model_type
    assert sum(e["status"] == "exact" for e in ENTRIES.values()) >= 80


def test_every_family_of_the_readme_table_stays_exact():
    # mllama_text_model has no causal-LM class of its own: it is measured inside its wrapper, mllama.
    for model_type in set(families.VERIFIED_FAMILIES) - {"mllama_text_model"}:
        assert ENTRIES[model_type]["status"] == "exact", model_type


def test_the_readme_and_docs_show_the_shipped_matrix():
    readme = (REPO / "README.md").read_text()
    between = readme[readme.index(README_BEGIN) + len(README_BEGIN) : readme.index(README_END)]
    assert between.strip() == readme_table(MATRIX).strip()
    docs = (REPO / "docs" / "families.md").read_text()
    assert all(f"| `{model_type}` | {e['status']} |" in docs for model_type, e in ENTRIES.items())


# One family per quirk, and one per refusal class: measured again now, from the shipped tiny_config.
LIVE = {
    "llama": "exact",
    "deepseek_v3": "exact",  # MLA: pre-RoPE is the whole vector
    "qwen3_next": "exact",  # hybrid linear attention: softmax layers only
    "falcon_h1": "exact",  # attention and Mamba side by side in every layer
    "gpt_oss": "exact",  # sinks, eager backend
    "gemma2": "exact",  # softcapping
    "smollm3": "exact",  # NoPE layers
    "exaone4": "exact",  # NoPE on full-attention layers
    "glm": "exact",  # partial rotary
    "mllama": "exact",  # wrapper + cross-attention layers
    "gemma4_text": "exact",  # per-layer head_dim; q and k rotated in separate calls, heads last
    "gptj": "exact",  # one-tensor rotary on a slice, stack spelled `h`
    "deepseek_v32": "exact",  # sparse-attention indexer rotates its own q/k in the same layer
    "jamba": "exact",  # attention without any rotation between Mamba layers
    "gpt2": "exact",  # learned absolute positions, no rotation: pre == post
    "bloom": "exact",  # ALiBi, attention outside the registry: tapped at its own seam
    "bert": "bidirectional",  # an encoder: its tokens see later tokens
    "mamba": "no_softmax_attention",
    "bart": "encoder_decoder",
    "llama4_text": "exact",  # complex-number rotary in (B, S, H, D) order, chunked attention, NoPE layers
    "deepseek_v2": "exact",  # MLA with the complex-number rotary
    "flint": "layout_mismatch",  # its rotation is invisible to the tap, so pre-RoPE would be wrong: refused
    "diffllama": "exact",  # attends twice per layer with one Q/K: captured once
    "inkling_text": "exact",  # sliding layers run other heads and head dims: every one captured
    "zamba2": "exact",  # one shared attention block, named by the decoder layer applying it
    "paligemma": "exact",  # on eager only: transformers' sdpa path differs for its text model alone
    "deepseek_v4": "keys_not_tokens",  # compressed entries among its keys
}


@pytest.mark.parametrize("model_type", sorted(LIVE))
def test_a_live_measurement_agrees_with_the_matrix(model_type):
    entry = sweep.measure(model_type, ENTRIES[model_type]["tiny_config"])
    assert entry["status"] == LIVE[model_type] == ENTRIES[model_type]["status"], entry["reason"]
    if entry["status"] == "exact":
        assert (
            entry["worst_error"] <= MATRIX["tolerance"] and entry["vectors"] == ENTRIES[model_type]["vectors"]
        )
        assert entry["quirks"] == ENTRIES[model_type]["quirks"]


def test_tiny_config_is_derived_from_the_family_defaults_not_stored_by_hand():
    for model_type in LIVE:
        assert tiny_config(model_type) == ENTRIES[model_type]["tiny_config"], model_type


def test_mla_pre_rope_is_the_whole_vector_with_only_the_rope_slice_unrotated():
    config = AutoConfig.for_model("deepseek_v3", **ENTRIES["deepseek_v3"]["tiny_config"])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    layout = layout_from_config(config, check=False)
    texts = [list(range(5, 25))]
    with torch.inference_mode():
        post, pre = (capture_blocks(model, texts, mode, layout) for mode in (False, True))
    nope = config.qk_nope_head_dim
    for before, after in zip(pre, post, strict=True):
        assert before.vectors.shape[-1] == after.vectors.shape[-1] == nope + config.qk_rope_head_dim
        np.testing.assert_array_equal(before.vectors[..., :nope], after.vectors[..., :nope])
        assert np.abs(before.vectors[..., nope:] - after.vectors[..., nope:]).max() > 1e-3


def test_per_layer_head_dim_is_in_the_layout_and_in_the_captured_vectors():
    config = AutoConfig.for_model("gemma4_text", **ENTRIES["gemma4_text"]["tiny_config"])
    layout = layout_from_config(config)
    assert layout.head_dims == (16, 16, 16, 16, 16, 512) and layout.head_dim == 16
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.inference_mode():
        blocks = capture_blocks(model, [list(range(5, 25))], False, layout)
    assert {b.layer: b.vectors.shape[-1] for b in blocks} == dict(enumerate(layout.head_dims))


def test_hybrid_layout_lists_only_softmax_layers():
    config = AutoConfig.for_model("qwen3_next", **ENTRIES["qwen3_next"]["tiny_config"])
    layout = layout_from_config(config)
    assert layout.linear_attention_layers == (0, 1, 2)
    assert layout.self_attention_layers == (3,)
    assert every_head(layout).layers == [3]


# --- Decisions come from the matrix ---------------------------------------------------------------------


def test_a_family_the_matrix_refuses_is_refused_before_loading_with_its_reason():
    with pytest.raises(UserError) as err:
        layout_from_config(AutoConfig.for_model("bert", **ENTRIES["bert"]["tiny_config"]))
    assert str(err.value).startswith(
        "model family 'bert' (BertLMHeadModel) cannot be captured exactly: bidirectional: "
        f"{ENTRIES['bert']['reason']} (measured by the family sweep on transformers {MATRIX['transformers']}"
    )


def _architecture(model_type: str, dtype: str = "float32") -> ModelConfig:
    architecture = {"model_type": model_type, **tiny_config(model_type)}
    return ModelConfig(architecture=architecture, device="cpu", dtype=dtype)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_an_unlisted_family_is_loaded_after_a_passing_self_check(monkeypatch, dtype):
    monkeypatch.delitem(MATRIX["families"], "olmo3")
    cfg = _architecture("olmo3", dtype)
    model = load_model(cfg, build_config(cfg))
    check_unlisted_family(model)  # passes: nothing raised
    assert type(model).__name__ == "Olmo3ForCausalLM"
    assert next(model.parameters()).dtype == getattr(torch, dtype)


def test_an_unlisted_family_that_fails_its_self_check_is_refused(monkeypatch):
    monkeypatch.delitem(MATRIX["families"], "flint")
    cfg = _architecture("flint")
    with pytest.raises(UserError) as err:
        check_unlisted_family(load_model(cfg, build_config(cfg)))
    assert str(err.value).startswith(
        "model family 'flint' is not in the support matrix and its first-batch self-check against its "
        "own eager attention failed: l0: the config says a rotation, the model did the opposite"
    )


# --- Someone else rebuilds an exact family from its tiny_config and captures it with the CLI -----------

TEXTS = [
    "The river starts as a thin line of meltwater under a grey ridge, and by the first village it is wide.",
    "Short one, still longer than a window.",
    "A mechanical clock is a negotiation between a falling weight and a stubborn escapement.",
]


@pytest.mark.parametrize("model_type", ["olmo3", "qwen3_next", "falcon_h1", "jamba"])
def test_an_exact_family_rebuilt_from_its_tiny_config_matches_eager_through_the_cli(tmp_path, model_type):
    entry = ENTRIES[model_type]
    assert entry["status"] == "exact"
    config = AutoConfig.for_model(model_type, **entry["tiny_config"])
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    embedded_tokenizer().save_pretrained(ckpt)
    ids = [embedded_tokenizer()(t)["input_ids"] for t in TEXTS]
    refs = {i: eager_reference(model, x) for i, x in enumerate(ids)}
    lengths = {i: len(x) for i, x in enumerate(ids)}
    data = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in TEXTS])
    layout = layout_from_config(config)
    for pre in (False, True):
        out = tmp_path / f"out-{pre}"
        proc = run_cli(every_row_overrides(ckpt, data, out, pre), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        tables = read_configs(out)
        assert {int(name[1:3]) for name in tables} == set(layout.self_attention_layers)
        for layer in layout.self_attention_layers:
            for kind, n in (("q", layout.num_q_heads), ("k", layout.num_kv_heads)):
                for head in range(n):
                    table = tables[config_name(layer, head, kind)]
                    assert table.num_rows == sum(lengths.values())
                    check_table(table, refs, lengths, layer, head, kind, pre, label=model_type)


# --- The CLI itself -------------------------------------------------------------------------------------


def _families_cli(args: list[str], tmp_path: Path):
    return run_cli(args, tmp_path, module="qk_sniffer.families")


def test_the_families_command_prints_the_matrix_as_its_last_line(tmp_path):
    proc = _families_cli([], tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record == {"transformers": MATRIX["transformers"], "families": ENTRIES}


def test_the_families_command_measures_live(tmp_path):
    proc = _families_cli(["sweep=true", "only=[qwen3,gpt2]"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {k: v["status"] for k, v in record["families"].items()} == {"qwen3": "exact", "gpt2": "exact"}
    assert record["families"]["gpt2"]["position_encoding"] == "absolute"


def test_a_measured_subset_replaces_only_its_own_entries_and_names_its_release():
    shipped = {
        "transformers": "5.24.0",
        "tolerance": 1e-4,
        "families": {"a": {"status": "x"}, "b": {"status": "y"}},
    }
    measured = {"transformers": "5.25.0", "families": {"b": {"status": "exact"}}}
    assert merged(shipped, measured)["families"] == {
        "a": {"status": "x"},
        "b": {"status": "exact", "transformers": "5.25.0"},
    }
    assert merged(shipped, {**measured, "transformers": "5.24.0"})["families"]["b"] == {"status": "exact"}


def test_the_families_command_names_a_bad_value(tmp_path):
    proc = _families_cli(["sweep=true", "only=[no_such_family]"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "qk_sniffer: error: only: unknown model types ['no_such_family']; see transformers' causal-LM mapping"
    )


@pytest.mark.slow
def test_the_full_sweep_reproduces_the_shipped_matrix():
    measured = sweep.sweep()
    statuses = {k: v["status"] for k, v in measured["families"].items()}
    assert statuses == {k: v["status"] for k, v in ENTRIES.items()}
