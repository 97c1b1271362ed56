"""Decoders without rotation (absolute positions, ALiBi) and attention outside the registry, captured exactly.

Each family is a tiny random checkpoint captured through the real runner (``model.name=<dir>``,
``sampler=all``, pre- and post-RoPE), and every captured vector is held against the model's own:
- the vectors: the inputs of the model's eager attention function (tests/reference.py) for families that go
  through the registry; for attention outside it, the model's own projections read in a plain forward by
  this file's hooks (not the capture's seams);
- the attention probabilities the model returns (``output_attentions=True``, eager): over each row's
  visible keys, ``log p(i, j) = scale * q_i . k_j + slope[h] * j + c_i`` with the family's stated scale and
  the ALiBi slopes recorded in the metadata, so a wrong split, a missed query scaling or a wrong slope fails.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import TEXTS, compose_cfg, embedded_tokenizer, every_row_overrides, read_configs, write_jsonl
from reference import LayerQK, Reference, check_table, eager_reference
from tiny_models import EMBEDDED_VOCAB
from transformers import AutoConfig, AutoModelForCausalLM

from qk_sniffer.capture.heads import HeadSelection
from qk_sniffer.capture.models import ModelLayout, backbone_of, layout_from_config
from qk_sniffer.capture.module_tap import seam_modules
from qk_sniffer.capture.samplers import AllSampler
from qk_sniffer.capture.session import CaptureSession
from qk_sniffer.capture.tap import AttentionMissedError
from qk_sniffer.core.naming import config_name
from qk_sniffer.inputs.data import DataStats, Example, batches
from qk_sniffer.pipeline.runner import run
from qk_sniffer.store.layout import METADATA

TEXT_IDS = [embedded_tokenizer()(t)["input_ids"] for t in TEXTS]
WINDOW = 6
GPT = dict(n_embd=64, n_layer=2, n_head=4, n_positions=256)
DIMS = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256)


@dataclass(frozen=True)
class Family:
    model_type: str
    config: dict[str, Any]
    # The factor the model's attention multiplies q . k by: head_dim**-0.5 ("sqrt") or 1.
    scale: str = "sqrt"
    # Witness of the vectors for attention outside the registry: (model, input ids) -> per layer (q, k).
    by_hand: Any = None


def _split(states: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(1, S, H * D) -> (H, S, D)."""
    return states[0].view(states.shape[1], -1, head_dim).transpose(0, 1)


def _hooked(model, ids: list[int], taps: dict[int, list[tuple[torch.nn.Module, Any]]]) -> dict[int, Any]:
    """Per layer, what ``read(output)`` of each hooked module made of its output in one plain forward."""
    seen: dict[int, list[Any]] = {}
    handles = []
    for layer, pairs in taps.items():
        for module, read in pairs:

            def hook(_m, _i, out, layer=layer, read=read):
                seen.setdefault(layer, []).append(read(out))

            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]))
    finally:
        for handle in handles:
            handle.remove()
    return seen


def bloom_by_hand(model, ids):
    """BLOOM's fused projection is laid out per head as [q | k | v] (its checkpoints' layout)."""
    heads, dim = model.config.n_head, model.config.hidden_size // model.config.n_head

    def read(out):
        per_head = out[0].view(out.shape[1], heads, 3, dim)
        return per_head[:, :, 0].transpose(0, 1), per_head[:, :, 1].transpose(0, 1)

    taps = {i: [(b.self_attention.query_key_value, read)] for i, b in enumerate(model.transformer.h)}
    return {layer: outs[0] for layer, outs in _hooked(model, ids, taps).items()}


def mpt_by_hand(model, ids):
    """MPT's Wqkv output is [q | k | v], each heads x head_dim, clipped to clip_qkv."""
    dim, clip = model.config.d_model // model.config.n_heads, model.config.attn_config.clip_qkv

    def read(out):
        q, k, _ = out.clamp(-clip, clip).chunk(3, dim=-1)
        return _split(q, dim), _split(k, dim)

    taps = {i: [(b.attn.Wqkv, read)] for i, b in enumerate(model.transformer.blocks)}
    return {layer: outs[0] for layer, outs in _hooked(model, ids, taps).items()}


def separate_by_hand(stack: str, attn: str, q: str, k: str, q_scale: bool = False):
    """Families with separate q and k projections (XGLM also multiplies its query by head_dim**-0.5)."""

    def reader(model, ids):
        blocks = model.get_submodule(stack)
        first = blocks[0].get_submodule(attn)
        dim = first.get_submodule(q).out_features // len(_heads_of(model))
        scale = dim**-0.5 if q_scale else 1.0
        taps = {
            i: [
                (b.get_submodule(f"{attn}.{q}"), lambda out: _split(out * scale, dim)),
                (b.get_submodule(f"{attn}.{k}"), lambda out: _split(out, dim)),
            ]
            for i, b in enumerate(blocks)
        }
        return {layer: tuple(outs) for layer, outs in _hooked(model, ids, taps).items()}

    return reader


def openai_by_hand(model, ids):
    """OpenAI GPT's c_attn output is [q | k | v] along the hidden size."""
    dim = model.config.n_embd // model.config.n_head

    def read(out):
        q, k, _ = out.split(model.config.n_embd, dim=-1)
        return _split(q, dim), _split(k, dim)

    taps = {i: [(b.attn.c_attn, read)] for i, b in enumerate(model.transformer.h)}
    return {layer: outs[0] for layer, outs in _hooked(model, ids, taps).items()}


def _heads_of(model) -> range:
    return range(layout_from_config(model.config).num_q_heads)


FAMILIES = {
    "gpt2": Family("gpt2", GPT),
    # Multi-query: one key head for all query heads.
    "gpt_bigcode": Family("gpt_bigcode", {**GPT, "multi_query": True}),
    # Scales its query by head_dim**-0.5 before attention, which then scales q . k by 1.
    "opt": Family("opt", {**DIMS, "ffn_dim": 64, "word_embed_proj_dim": 64}, scale="one"),
    "biogpt": Family("biogpt", {**DIMS, "intermediate_size": 64}),
    "falcon": Family("falcon", {**DIMS, "multi_query": True}),  # rotary, multi-query
    "falcon_alibi": Family("falcon", {**DIMS, "alibi": True, "multi_query": False}),
    "bloom": Family("bloom", {"hidden_size": 64, "n_layer": 2, "n_head": 4}, by_hand=bloom_by_hand),
    # A clip small enough for the clamp of the fused projection to bite.
    "mpt": Family(
        "mpt",
        {"d_model": 64, "n_layers": 2, "n_heads": 4, "max_seq_len": 256, "attn_config": {"clip_qkv": 0.05}},
        by_hand=mpt_by_hand,
    ),
    # Unscaled dot products; one global and one local (windowed) layer.
    "gpt_neo": Family(
        "gpt_neo",
        {
            **DIMS,
            "num_layers": 2,
            "num_heads": 4,
            "attention_types": [[["global", "local"], 1]],
            "window_size": WINDOW,
        },
        scale="one",
        by_hand=separate_by_hand("transformer.h", "attn.attention", "q_proj", "k_proj"),
    ),  # fmt: skip
    "xglm": Family(
        "xglm",
        {"d_model": 64, "num_layers": 2, "attention_heads": 4, "ffn_dim": 64, "max_position_embeddings": 256},
        scale="one",
        by_hand=separate_by_hand("model.layers", "self_attn", "q_proj", "k_proj", q_scale=True),
    ),
    "openai-gpt": Family("openai-gpt", GPT, by_hand=openai_by_hand),
}


@dataclass
class Run:
    family: Family
    ckpt: Path
    layout: ModelLayout
    model: Any  # loaded back from the checkpoint, eager
    refs: list[Reference] = field(default_factory=list)
    tables: dict[bool, dict[str, Any]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    rows: dict[bool, int] = field(default_factory=dict)


def by_hand_reference(family: Family, model, ids: list[int]) -> Reference:
    ref = Reference()
    for layer, (q, k) in family.by_hand(model, ids).items():
        ref.layers[layer] = LayerQK(q.float(), k.float(), q.float(), k.float())  # no rotation: pre == post
    return ref


@pytest.fixture(scope="module")
def runs() -> dict[str, Run]:
    return {}


def family_run(runs: dict[str, Run], tmp_path_factory, name: str) -> Run:
    if name in runs:
        return runs[name]
    family = FAMILIES[name]
    tmp = tmp_path_factory.mktemp(name)
    config = AutoConfig.for_model(family.model_type, vocab_size=EMBEDDED_VOCAB, **family.config)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(tmp / "ckpt")
    embedded_tokenizer().save_pretrained(tmp / "ckpt")
    model = AutoModelForCausalLM.from_pretrained(
        tmp / "ckpt", dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    fr = Run(family, tmp / "ckpt", layout_from_config(model.config), model)
    fr.refs = [
        by_hand_reference(family, model, ids) if family.by_hand else eager_reference(model, ids)
        for ids in TEXT_IDS
    ]
    data = write_jsonl(tmp / "docs.jsonl", [{"text": t} for t in TEXTS])
    for pre in (False, True):
        out = tmp / f"out-{pre}"
        fr.rows[pre] = run(compose_cfg(every_row_overrides(fr.ckpt, data, out, pre))).rows
        fr.tables[pre] = read_configs(out)
        fr.metadata = json.loads((out / METADATA).read_text())
    runs[name] = fr
    return fr


def captured(fr: Run, example: int, layer: int, kind: str, pre: bool = False) -> np.ndarray:
    """(heads, positions, head_dim) of one example, read back from the captured tables."""
    heads = fr.layout.num_q_heads if kind == "q" else fr.layout.num_kv_heads
    out = []
    for head in range(heads):
        table = fr.tables[pre][config_name(layer, head, kind)]
        rows = [i for i, ex in enumerate(table.column("example_id").to_pylist()) if ex == example]
        order = np.argsort([table.column("position").to_pylist()[i] for i in rows])
        vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float64)[rows]
        out.append(vectors[order])
    return np.stack(out)


def logit_residual(fr: Run, example: int, layer: int, scale: float, slopes: list[float]) -> float:
    """Worst |log p - scale * q.k - slope * j| over one layer's visible keys, after removing row means."""
    ids = TEXT_IDS[example]
    with torch.no_grad():
        probs = fr.model(input_ids=torch.tensor([ids]), output_attentions=True).attentions[layer][0].double()
    q, k = captured(fr, example, layer, "q"), captured(fr, example, layer, "k")
    k = np.repeat(k, q.shape[0] // k.shape[0], axis=0)
    n = len(ids)
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    window = fr.layout.sliding_windows[layer]
    visible = (j <= i) & ((i - j < window) if window else True)
    assert float(probs.numpy()[:, ~visible].max(initial=0.0)) < 1e-6, "a masked key got probability"
    bias = np.asarray(slopes)[:, None, None] * j if slopes else 0.0
    log_probs = np.log(np.where(visible, probs.numpy(), 1.0))  # masked keys are never compared
    diff = log_probs - scale * np.einsum("hid,hjd->hij", q, k) - bias
    worst = 0.0
    for row in range(1, n):
        cols = visible[row]
        centred = diff[:, row, cols] - diff[:, row, cols].mean(axis=-1, keepdims=True)
        worst = max(worst, float(np.abs(centred).max()))
    return worst


def stated_scale(fr: Run) -> float:
    return fr.layout.head_dim**-0.5 if fr.family.scale == "sqrt" else 1.0


@pytest.mark.parametrize("name", FAMILIES)
def test_every_vector_is_the_models_own_pre_and_post(runs, tmp_path_factory, name):
    fr = family_run(runs, tmp_path_factory, name)
    layout = fr.layout
    lengths = {i: len(ids) for i, ids in enumerate(TEXT_IDS)}
    refs = dict(enumerate(fr.refs))
    tokens = sum(lengths.values())
    expected_rows = tokens * (layout.num_q_heads + layout.num_kv_heads) * len(layout.self_attention_layers)
    for pre in (False, True):
        assert fr.rows[pre] == expected_rows
        for layer in layout.self_attention_layers:
            for kind, heads in (("q", layout.num_q_heads), ("k", layout.num_kv_heads)):
                for head in range(heads):
                    table = fr.tables[pre][config_name(layer, head, kind)]
                    check_table(table, refs, lengths, layer, head, kind, pre, label=name)


@pytest.mark.parametrize("name", FAMILIES)
def test_captured_vectors_explain_the_models_attention_probabilities(runs, tmp_path_factory, name):
    fr = family_run(runs, tmp_path_factory, name)
    slopes = fr.metadata["layout"]["alibi_slopes"]
    for example in range(len(TEXT_IDS)):
        for layer in fr.layout.self_attention_layers:
            residual = logit_residual(fr, example, layer, stated_scale(fr), slopes)
            assert residual < 1e-4, f"{name} l{layer} ex{example}: log-probabilities off by {residual:.3g}"


@pytest.mark.parametrize(
    ("name", "wrong"),
    [
        ("bloom", "no ALiBi"),
        ("falcon_alibi", "no ALiBi"),
        ("mpt", "no ALiBi"),
        ("opt", "scale"),
        ("xglm", "scale"),
        ("gpt2", "scale"),
    ],
)
def test_the_probability_check_fails_without_the_slopes_or_with_another_scale(
    runs, tmp_path_factory, name, wrong
):
    fr = family_run(runs, tmp_path_factory, name)
    slopes = fr.metadata["layout"]["alibi_slopes"]
    scale = stated_scale(fr)
    if wrong == "scale":
        scale = 1.0 if scale != 1.0 else fr.layout.head_dim**-0.5
    residual = logit_residual(fr, 0, 1, scale, [] if wrong == "no ALiBi" else slopes)
    assert residual > 1e-2, f"{name}: the check cannot tell {wrong} apart ({residual:.3g})"


@pytest.mark.parametrize(
    ("name", "encoding"),
    [("gpt2", "absolute"), ("opt", "absolute"), ("bloom", "alibi"), ("mpt", "alibi"), ("falcon", "rope"),
     ("falcon_alibi", "alibi"), ("gpt_neo", "absolute"), ("xglm", "absolute"), ("openai-gpt", "absolute")],
)  # fmt: skip
def test_metadata_and_card_name_the_position_encoding(runs, tmp_path_factory, name, encoding):
    fr = family_run(runs, tmp_path_factory, name)
    layout = fr.metadata["layout"]
    assert layout["position_encoding"] == encoding
    assert len(layout["alibi_slopes"]) == (layout["num_q_heads"] if encoding == "alibi" else 0)
    rotated = encoding == "rope"
    assert layout["nope_layers"] == ([] if rotated else list(range(layout["num_layers"])))
    prescaled = fr.family.model_type in ("opt", "xglm")
    assert layout["query_prescale"] == (pytest.approx(layout["head_dim"] ** -0.5) if prescaled else None)
    card = (fr.ckpt.parent / "out-False" / "README.md").read_text()
    assert f"- Position encoding: {encoding}" in card
    if encoding == "alibi":
        assert "ALiBi slope per query head" in card and "head 3:" in card


def test_falcon_alibi_slopes_are_its_own_bfloat16_slopes_over_sqrt_head_dim(runs, tmp_path_factory):
    fr = family_run(runs, tmp_path_factory, "falcon_alibi")
    slopes = fr.metadata["layout"]["alibi_slopes"]
    # 4 heads: 2**-2, 2**-4, 2**-6, 2**-8 (exact in bfloat16), divided by sqrt(16).
    assert slopes == pytest.approx([2.0 ** -(2 * h + 2) / math.sqrt(16) for h in range(4)])


@pytest.mark.parametrize("name", ["gpt2", "bloom", "mpt", "falcon_alibi", "gpt_neo"])
def test_pre_rope_writes_the_post_rope_vectors_where_nothing_rotates(runs, tmp_path_factory, name):
    fr = family_run(runs, tmp_path_factory, name)
    for config in fr.tables[False]:
        assert (
            fr.tables[True][config].column("vector").to_pylist()
            == fr.tables[False][config].column("vector").to_pylist()
        )


def test_rotary_falcon_pre_rope_differs_from_post(runs, tmp_path_factory):
    fr = family_run(runs, tmp_path_factory, "falcon")
    post, pre = captured(fr, 0, 1, "k", pre=False), captured(fr, 0, 1, "k", pre=True)
    assert fr.layout.num_kv_heads == 1 and np.abs(post - pre).max() > 1e-3


def test_gpt_neo_local_layer_records_its_window(runs, tmp_path_factory):
    fr = family_run(runs, tmp_path_factory, "gpt_neo")
    assert fr.metadata["layout"]["sliding_windows"] == [None, WINDOW]
    windows = set(fr.tables[False][config_name(1, 0, "q")].column("sliding_window").to_pylist())
    assert windows == {WINDOW}


def test_mpt_clip_bites_on_the_captured_vectors(runs, tmp_path_factory):
    fr = family_run(runs, tmp_path_factory, "mpt")
    assert np.abs(captured(fr, 0, 0, "q")).max() == pytest.approx(0.05)


# --- The module tap's contract: layer filter, early stop, a missed seam, restore ----------------------------


def _session(model, layers: list[int], early_stop: bool = True) -> CaptureSession:
    layout = layout_from_config(model.config)
    selection = HeadSelection({layer: (0,) for layer in layers}, {layer: (0,) for layer in layers})
    return CaptureSession(model, selection, AllSampler(), early_stop=early_stop, layout=layout)  # type: ignore[arg-type]


def _batch():
    (batch,) = batches([Example(0, 0, TEXT_IDS[0])], 1, 0, DataStats())
    return batch


def test_module_tap_stops_after_the_deepest_layer_and_restores_everything(runs, tmp_path_factory):
    model = family_run(runs, tmp_path_factory, "bloom").model
    attention = [module for module, _ in seam_modules(backbone_of(model)).values()]
    calls = []
    deeper = attention[1]._reshape
    attention[1]._reshape = lambda *a: calls.append(1) or deeper(*a)  # counts layer 1's attention calls
    try:
        with _session(model, [0]) as session:
            blocks = session.forward(_batch()).result()
        assert {b.layer for b in blocks} == {0} and calls == []
    finally:
        del attention[1]._reshape
    assert all("_reshape" not in vars(m) for m in attention)
    mpt = family_run(runs, tmp_path_factory, "mpt").model
    with _session(mpt, [1], early_stop=False) as session:
        assert {b.layer for b in session.forward(_batch()).result()} == {1}
    assert all(not b.attn.Wqkv._forward_hooks for b in mpt.transformer.blocks)


def test_a_layer_whose_seam_is_bypassed_is_an_error_not_a_subset(runs, tmp_path_factory):
    model = family_run(runs, tmp_path_factory, "bloom").model
    attention = [module for module, _ in seam_modules(backbone_of(model)).values()]
    with _session(model, [0, 1], early_stop=False) as session:
        del attention[1]._reshape  # as a backend that never calls the tapped method would
        with pytest.raises(AttentionMissedError, match=r"layers \[1\]: their attention never reached its"):
            session.forward(_batch())
    assert all("_reshape" not in vars(m) for m in attention)


def test_a_registry_layer_that_bypasses_the_registry_is_an_error_not_a_subset(runs, tmp_path_factory):
    """As on a release (Falcon before 5.25) or backend whose attention never calls the registry."""
    model = family_run(runs, tmp_path_factory, "gpt2").model
    attention = model.transformer.h[1].attn
    shared = attention.config
    with _session(model, [0, 1], early_stop=False) as session:
        attention.config = copy.deepcopy(shared)
        attention.config._attn_implementation_internal = "eager"  # layer 1 computes attention on its own
        try:
            with pytest.raises(
                AttentionMissedError, match=r"layers \[1\]: .* transformers' attention registry"
            ):
                session.forward(_batch())
        finally:
            attention.config = shared
