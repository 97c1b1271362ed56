"""Every supported family, captured through the one registry seam, equals the model's own eager Q/K.

Each family is a tiny random model built with ``from_config`` (no network), saved with ``save_pretrained`` and
loaded back by the real runner (``model.name=<dir>``), so the loading path of each family (including the
vision-language wrappers, loaded from their own checkpoints and run on text) is the one users get. Texts are
longer than every sliding window and of unequal lengths in one batch (right padding).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import (
    REPO,
    TEXTS,
    compose_cfg,
    embedded_tokenizer,
    every_row_overrides,
    read_configs,
    write_jsonl,
)
from packaging.version import Version
from reference import TOLERANCE as TOL
from reference import Reference, check_table, eager_reference
from tiny_models import EMBEDDED_VOCAB, SHAPE
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from qk_sniffer.capture import support as families
from qk_sniffer.capture.backend_facts import installed_release
from qk_sniffer.capture.models import (
    ModelLayout,
    backbone_of,
    build_config,
    choose_attn_implementation,
    layout_from_config,
    model_class_for,
)
from qk_sniffer.capture.support import VERIFIED_FAMILIES
from qk_sniffer.capture.tap import attention_modules
from qk_sniffer.core.errors import UserError
from qk_sniffer.core.naming import config_name
from qk_sniffer.pipeline.runner import run
from qk_sniffer.store.layout import METADATA

WINDOW = 6
TEXT_IDS = [embedded_tokenizer()(t)["input_ids"] for t in TEXTS]

# The shared tiny shape (tiny_models.py) with the embedded tokenizer's vocabulary, and the special ids and
# untied head these checkpoints were first written with; each family adds what makes it different.
BASE = dict(
    SHAPE,
    vocab_size=EMBEDDED_VOCAB,
    tie_word_embeddings=False,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
SLIDE_FULL_SLIDE = ["sliding_attention", "full_attention", "sliding_attention"]
TEXT_FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {},
    "mistral": dict(sliding_window=WINDOW),
    "ministral": dict(sliding_window=WINDOW, layer_types=SLIDE_FULL_SLIDE),
    "ministral3": {},  # YaRN + position-dependent query scaling (llama_4_scaling_beta) after the rotation
    "qwen2": dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),
    "qwen3": {},
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
    # Small softcap and a query_pre_attn_scalar far from head_dim, so a backend ignoring either would show.
    # Larger initial weights make the attention logits large enough for the cap to bite.
    "gemma2": dict(
        sliding_window=WINDOW,
        attn_logit_softcapping=0.5,
        final_logit_softcapping=30.0,
        query_pre_attn_scalar=4,
        initializer_range=0.2,
    ),
    "gemma3_text": dict(
        sliding_window=WINDOW,
        layer_types=SLIDE_FULL_SLIDE,
        query_pre_attn_scalar=4,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
        },
    ),
    "glm": dict(partial_rotary_factor=0.5),
    "glm4": dict(partial_rotary_factor=0.5),
    "smollm3": dict(no_rope_layers=[1, 0, 1]),
    "phi3": dict(sliding_window=WINDOW),
    # OLMo 2 normalises the raw projection (no input norm): a tiny eps keeps its unit gain visible.
    "olmo2": dict(rms_norm_eps=1e-12),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=WINDOW),
    "cohere2": dict(sliding_window=WINDOW, layer_types=SLIDE_FULL_SLIDE),
    "gpt_oss": dict(
        num_local_experts=4, num_experts_per_tok=2, sliding_window=WINDOW, layer_types=SLIDE_FULL_SLIDE
    ),
}
# Vision-language checkpoints: the wrapper is saved and loaded whole; capture runs its text decoder on text.
VISION_FAMILIES: dict[str, dict[str, Any]] = {
    "mistral3": dict(
        text_config=dict(model_type="ministral3", **BASE),
        vision_config=dict(
            model_type="pixtral",
            hidden_size=32,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            head_dim=16,
            image_size=32,
            patch_size=16,
        ),
    ),
    "mllama": dict(
        text_config=dict(
            model_type="mllama_text_model", **{**BASE, "num_hidden_layers": 4}, cross_attention_layers=[2]
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=32,
            num_hidden_layers=1,
            num_global_layers=1,
            attention_heads=2,
            vision_output_dim=64,
            image_size=32,
            patch_size=16,
            intermediate_layers_indices=[0],
        ),
    ),
    "gemma3": dict(
        text_config=dict(
            model_type="gemma3_text", **BASE, sliding_window=WINDOW, layer_types=SLIDE_FULL_SLIDE
        ),
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=16,
        ),
        mm_tokens_per_image=4,
    ),
}
ALL_FAMILIES = [*TEXT_FAMILIES, *VISION_FAMILIES]


def family_config(model_type: str):
    if model_type in VISION_FAMILIES:
        return AutoConfig.for_model(model_type, **VISION_FAMILIES[model_type])
    return AutoConfig.for_model(model_type, **{**BASE, **TEXT_FAMILIES[model_type]})


def auto_class(model_type: str):
    return AutoModelForImageTextToText if model_type in VISION_FAMILIES else AutoModelForCausalLM


def save_family(root: Path, model_type: str, config=None) -> Path:
    path = root / f"tiny-{model_type}"
    torch.manual_seed(0)
    model = auto_class(model_type).from_config(config or family_config(model_type), dtype=torch.float32)
    model.save_pretrained(path)
    embedded_tokenizer().save_pretrained(path)
    return path


@dataclass
class Capture:
    tables: dict[str, Any]
    metadata: dict[str, Any]
    rows: int


@dataclass
class FamilyRun:
    """One family's checkpoint, its eager reference per text, and its captures in both modes."""

    model_type: str
    layout: ModelLayout
    refs: list[Reference]
    ckpt: Path
    captures: dict[bool, Capture] = field(default_factory=dict)


FIGURES: dict[str, tuple[int, float]] = {}


def capture(tmp: Path, ckpt: Path, pre_rope: bool, extra: tuple[str, ...] = ()) -> Capture:
    data = write_jsonl(tmp / "docs.jsonl", [{"text": t} for t in TEXTS])
    out = tmp / f"out-{'pre' if pre_rope else 'post'}"
    result = run(compose_cfg([*every_row_overrides(ckpt, data, out, pre_rope), *extra]))
    return Capture(read_configs(out), json.loads((out / METADATA).read_text()), result.rows)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls run several times faster on one thread than on a shared, oversubscribed CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def family_runs() -> dict[str, FamilyRun]:
    return {}


def family_run(family_runs: dict[str, FamilyRun], tmp_path_factory, model_type: str) -> FamilyRun:
    if model_type not in family_runs:
        tmp = tmp_path_factory.mktemp(model_type)
        ckpt = save_family(tmp, model_type)
        model = auto_class(model_type).from_pretrained(ckpt, dtype=torch.float32).eval()
        fr = FamilyRun(
            model_type,
            layout_from_config(model.config),
            [eager_reference(model, ids) for ids in TEXT_IDS],
            ckpt,
        )
        for pre in (False, True):
            fr.captures[pre] = capture(tmp, ckpt, pre)
        family_runs[model_type] = fr
    return family_runs[model_type]


def vectors(table) -> np.ndarray:
    return np.asarray(table.column("vector").to_pylist(), dtype=np.float32)


def compare(fr: FamilyRun, pre_rope: bool) -> tuple[int, float]:
    """Every captured row against the eager reference; returns (vectors checked, worst abs error)."""
    cap, layout = fr.captures[pre_rope], fr.layout
    refs = dict(enumerate(fr.refs))
    lengths = {i: len(ids) for i, ids in enumerate(TEXT_IDS)}
    checked, worst = 0, 0.0
    for layer in layout.self_attention_layers:
        for kind, n_heads in (("q", layout.num_q_heads), ("k", layout.num_kv_heads)):
            for head in range(n_heads):
                table = cap.tables[config_name(layer, head, kind)]
                err = check_table(table, refs, lengths, layer, head, kind, pre_rope, label=fr.model_type)
                worst = max(worst, err)
                checked += table.num_rows
    return checked, worst


@pytest.mark.parametrize("model_type", ALL_FAMILIES)
def test_family_matches_its_own_eager_forward(family_runs, tmp_path_factory, model_type):
    fr = family_run(family_runs, tmp_path_factory, model_type)
    layout = fr.layout
    tokens = sum(len(ids) for ids in TEXT_IDS)
    assert len(set(map(len, TEXT_IDS))) == len(TEXT_IDS), "the batch must mix lengths"
    windows = [w for w in layout.sliding_windows if w]
    assert all(len(ids) > w for ids in TEXT_IDS for w in windows), "every text must outrun every window"
    expected_rows = tokens * (layout.num_q_heads + layout.num_kv_heads) * len(layout.self_attention_layers)
    total, worst = 0, 0.0
    for pre in (False, True):
        checked, err = compare(fr, pre)
        assert checked == fr.captures[pre].rows == expected_rows
        total, worst = total + checked, max(worst, err)
    FIGURES[model_type] = (total, worst)
    # The windows read from the config are the ones the model's attention received, layer by layer.
    for layer in layout.self_attention_layers:
        seen = set(fr.captures[False].tables[config_name(layer, 0, "q")].column("sliding_window").to_pylist())
        assert seen == {layout.sliding_windows[layer]}, f"l{layer}: attention saw windows {seen}"
    assert fr.captures[False].metadata["layout"]["sliding_windows"] == list(layout.sliding_windows)


@pytest.mark.parametrize("model_type", ALL_FAMILIES)
def test_pre_equals_post_exactly_where_a_layer_has_no_rotation(family_runs, tmp_path_factory, model_type):
    fr = family_run(family_runs, tmp_path_factory, model_type)
    for layer in fr.layout.self_attention_layers:
        for kind in ("q", "k"):
            name = config_name(layer, 0, kind)
            post, pre = vectors(fr.captures[False].tables[name]), vectors(fr.captures[True].tables[name])
            if layer in fr.layout.nope_layers:
                np.testing.assert_array_equal(pre, post)
            else:  # rotated layers: positions > 0 move
                assert np.abs(pre - post).max() > 1e-3, f"{model_type} l{layer}{kind}: rotation not visible"


# --- Quirks, each shown on the captured data ---------------------------------------------------------------


def test_partial_rotary_leaves_the_unrotated_half_untouched(family_runs, tmp_path_factory):
    fr = family_run(family_runs, tmp_path_factory, "glm")
    assert fr.layout.partial_rotary_factor == 0.5
    rotated = int(fr.layout.head_dim * fr.layout.partial_rotary_factor)
    for kind in ("q", "k"):
        post, pre = (vectors(fr.captures[m].tables[config_name(1, 0, kind)]) for m in (False, True))
        np.testing.assert_array_equal(post[:, rotated:], pre[:, rotated:])
        assert np.abs(post[:, :rotated] - pre[:, :rotated]).max() > 1e-3


@pytest.mark.parametrize(
    ("model_type", "per_head"), [("qwen3", True), ("gemma3_text", True), ("olmo2", False)]
)
def test_pre_rope_vectors_are_taken_after_the_qk_norm(family_runs, tmp_path_factory, model_type, per_head):
    """Freshly initialised norms have unit gain: per head (Qwen3, Gemma 3) or over all heads (OLMo 2)."""
    fr = family_run(family_runs, tmp_path_factory, model_type)
    heads = [vectors(fr.captures[True].tables[config_name(0, h, "q")]) for h in range(fr.layout.num_q_heads)]
    if per_head:
        rms = [np.sqrt((h**2).mean(axis=1)) for h in heads]
    else:
        rms = [np.sqrt((np.concatenate(heads, axis=1) ** 2).mean(axis=1))]
    np.testing.assert_allclose(np.concatenate(rms), 1.0, atol=1e-3)


def test_fused_qkv_is_split_like_the_model_splits_it(family_runs, tmp_path_factory):
    """Phi-3's layer-0 pre-RoPE query, recomputed by hand from its fused qkv_proj weight."""
    fr = family_run(family_runs, tmp_path_factory, "phi3")
    model = AutoModelForCausalLM.from_pretrained(fr.ckpt, dtype=torch.float32).eval()
    layer = model.model.layers[0]
    assert hasattr(layer.self_attn, "qkv_proj") and not hasattr(layer.self_attn, "q_proj")
    with torch.no_grad():
        hidden = layer.input_layernorm(model.model.embed_tokens(torch.tensor(TEXT_IDS[0])))
        q = hidden @ layer.self_attn.qkv_proj.weight[: fr.layout.num_q_heads * fr.layout.head_dim].T
    table = fr.captures[True].tables[config_name(0, 2, "q")]
    rows = [i for i, ex in enumerate(table.column("example_id").to_pylist()) if ex == 0]
    expected = q.view(len(TEXT_IDS[0]), fr.layout.num_q_heads, fr.layout.head_dim)[:, 2].numpy()
    np.testing.assert_allclose(vectors(table)[rows], expected, atol=TOL)


def _deepest_q_without(fr: FamilyRun, mutate) -> float:
    """Largest change of the deepest layer's captured post-RoPE query if ``mutate`` switched a quirk off."""
    model = auto_class(fr.model_type).from_pretrained(fr.ckpt, dtype=torch.float32).eval()
    mutate(model)
    ref = eager_reference(model, TEXT_IDS[0])
    layer = fr.layout.self_attention_layers[-1]
    table = fr.captures[False].tables[config_name(layer, 0, "q")]
    rows = [i for i, ex in enumerate(table.column("example_id").to_pylist()) if ex == 0]
    return float(np.abs(vectors(table)[rows] - ref.layers[layer].q_post[0].numpy()).max())


def _set_on_attention(attr: str, value: Any):
    def mutate(model):
        for module in attention_modules(backbone_of(model)):
            setattr(module, attr, value)

    return mutate


@pytest.mark.parametrize(("model_type", "quirk", "mutate"), [
    ("gemma2", "attention logit softcapping", _set_on_attention("attn_logit_softcapping", None)),
    ("gemma2", "query_pre_attn_scalar", _set_on_attention("scaling", 16**-0.5)),
    ("gemma3_text", "query_pre_attn_scalar", _set_on_attention("scaling", 16**-0.5)),
    ("gpt_oss", "attention sinks", lambda m: [torch.nn.init.constant_(a.sinks, -1e4)
                                              for a in attention_modules(backbone_of(m))]),
    ("mistral", "sliding window", lambda m: setattr(m.config, "sliding_window", None)),
])  # fmt: skip
def test_each_quirk_changes_the_vectors_it_was_matched_on(
    family_runs, tmp_path_factory, model_type, quirk, mutate
):
    """The exactness tests are sensitive: without the quirk the model's deeper Q differs far beyond TOL."""
    fr = family_run(family_runs, tmp_path_factory, model_type)
    assert _deepest_q_without(fr, mutate) > 100 * TOL, f"{model_type}: {quirk} makes no visible difference"


def test_cross_attention_layers_are_skipped_and_recorded(family_runs, tmp_path_factory):
    fr = family_run(family_runs, tmp_path_factory, "mllama")
    assert fr.layout.cross_attention_layers == (2,)
    assert fr.layout.self_attention_layers == (0, 1, 3)
    captured_layers = {int(name[1:3]) for name in fr.captures[False].tables}
    assert captured_layers == {0, 1, 3}
    assert fr.captures[False].metadata["layout"]["cross_attention_layers"] == [2]


@pytest.mark.parametrize(
    ("model_type", "text_type"),
    [("mistral3", "ministral3"), ("mllama", "mllama_text_model"), ("gemma3", "gemma3_text")],
)
def test_wrappers_are_read_one_level_down(family_runs, tmp_path_factory, model_type, text_type):
    fr = family_run(family_runs, tmp_path_factory, model_type)
    meta = fr.captures[False].metadata
    assert meta["layout"]["model_type"] == text_type
    assert (meta["layout"]["num_q_heads"], meta["layout"]["num_kv_heads"], meta["layout"]["head_dim"]) == (
        4,
        2,
        16,
    )
    assert meta["attn_implementation"] == "sdpa"


# --- Backend choice ----------------------------------------------------------------------------------------

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("model_type", ALL_FAMILIES)
def test_default_backend_is_sdpa_unless_the_family_has_none(model_type):
    expected = "eager" if model_type in ("gemma2", "gpt_oss") else "sdpa"
    assert choose_attn_implementation(None, family_config(model_type), CPU) == expected


def test_default_backend_is_flash_attention_on_cuda_when_installed(monkeypatch):
    import qk_sniffer.capture.models as models

    monkeypatch.setattr(
        models.importlib.util, "find_spec", lambda name: object() if name == "flash_attn" else None
    )
    assert choose_attn_implementation(None, family_config("llama"), CUDA) == "flash_attention_2"
    assert choose_attn_implementation(None, family_config("gpt_oss"), CUDA) == "flash_attention_2"
    assert choose_attn_implementation(None, family_config("mllama"), CUDA) == "sdpa"  # no flash path
    assert choose_attn_implementation(None, family_config("llama"), CPU) == "sdpa"


def test_a_backend_the_family_cannot_run_is_a_clear_error_before_loading(tmp_path):
    ckpt = save_family(tmp_path, "gemma2")
    data = write_jsonl(tmp_path / "docs.jsonl", [{"text": TEXTS[0]}])
    out = tmp_path / "out"
    with pytest.raises(UserError) as err:
        run(
            compose_cfg(
                [
                    f"model.name={ckpt}",
                    "model.attn_implementation=sdpa",
                    "dataset=local",
                    f"dataset.data_files={data}",
                    f"output.dir={out}",
                ]
            )
        )
    release = installed_release()
    if Version(release) < Version("5.21.0"):  # the class still declares sdpa: the backend facts refuse it
        expected = (
            f"model.attn_implementation='sdpa': model family 'gemma2' on transformers {release} declares "
            "sdpa support, but sdpa drops its attention logit softcapping, so every vector after the first "
            "layer is wrong; use model.attn_implementation='eager' (null picks it), or transformers 5.21.0 "
            "or later"
        )
    else:
        expected = (
            "model.attn_implementation='sdpa': Gemma2ForCausalLM (gemma2) cannot run it; it can run: eager, "
            "flash_attention_2, flash_attention_3, flex_attention (or null to pick the best of them)"
        )
    assert str(err.value) == expected
    assert not out.exists()


def test_flash_attention_without_the_package_is_a_clear_error(monkeypatch):
    import qk_sniffer.capture.models as models

    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="needs the flash_attn package, which is not installed"):
        choose_attn_implementation("flash_attention_2", family_config("llama"), CUDA)


# --- Families the tool has never seen ------------------------------------------------------------


def test_an_unlisted_family_that_uses_the_registry_is_captured_exactly(tmp_path):
    model_type = "starcoder2"
    assert model_type not in VERIFIED_FAMILIES
    config = AutoConfig.for_model(model_type, **{**BASE, "sliding_window": WINDOW})
    ckpt = save_family(tmp_path, model_type, config)
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    fr = FamilyRun(
        model_type, layout_from_config(model.config), [eager_reference(model, i) for i in TEXT_IDS], ckpt
    )
    for pre in (False, True):
        fr.captures[pre] = capture(tmp_path, ckpt, pre)
        checked, worst = compare(fr, pre)
        assert checked == fr.captures[pre].rows > 0
    FIGURES[model_type] = (2 * checked, worst)


def test_an_unlisted_family_that_bypasses_the_registry_is_refused_before_loading(tmp_path, monkeypatch):
    # As on a transformers whose matrix does not list bloom (it is listed, and captured at its own seams).
    monkeypatch.delitem(families.support_matrix()["families"], "bloom")
    ckpt = save_family(
        tmp_path, "bloom", AutoConfig.for_model("bloom", vocab_size=512, hidden_size=64, n_layer=2, n_head=4)
    )
    data = write_jsonl(tmp_path / "docs.jsonl", [{"text": TEXTS[0]}])
    out = tmp_path / "out"
    with pytest.raises(UserError) as err:
        run(
            compose_cfg(
                [f"model.name={ckpt}", "dataset=local", f"dataset.data_files={data}", f"output.dir={out}"]
            )
        )
    assert str(err.value).startswith(
        "model family 'bloom' (BloomForCausalLM) cannot be captured: its attention does not go through the "
        "AttentionInterface registry"
    )
    assert not out.exists()


# --- Layout and presets ----------------------------------------------------------------------


def test_layout_records_rope_and_the_layers_without_it():
    gemma = layout_from_config(family_config("gemma3_text"))
    assert (gemma.rope_type, gemma.rope_theta, gemma.rope_scaling) == ("linear", 1000000.0, {"factor": 8.0})
    assert gemma.rope_by_layer_type["sliding_attention"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert gemma.sliding_windows == (WINDOW, None, WINDOW)
    assert layout_from_config(family_config("smollm3")).nope_layers == (1,)
    assert layout_from_config(family_config("cohere2")).nope_layers == (1,)
    assert layout_from_config(AutoConfig.for_model("smollm3")).nope_layers == tuple(range(3, 36, 4))
    oss = layout_from_config(family_config("gpt_oss"))
    assert (oss.rope_type, oss.rope_theta, oss.rope_scaling["factor"]) == ("yarn", 150000.0, 32.0)
    assert layout_from_config(family_config("llama")).nope_layers == ()


PRESETS = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_builds_its_published_shape_offline(preset):
    """random_init builds the shape on the meta device: its parameter count matches the size in its name."""
    cfg = compose_cfg([f"model={preset}", "model.random_init=true"])
    assert cfg.model.slug and cfg.model.dtype and cfg.model.architecture["model_type"]
    config = build_config(cfg.model)
    layout = layout_from_config(config)
    assert layout.num_q_heads % layout.num_kv_heads == 0
    size = re.search(r"-(\d+(?:\.\d+)?)b", cfg.model.slug)
    if size is None or not cfg.model.name:
        return  # the embedded and benchmark shapes name no size
    cls = model_class_for(config)
    assert cls is not None
    with torch.device("meta"):
        model = cls(config)
    model.tie_weights()  # transformers 5.0 ties embeddings when loading weights, not when building the model
    billions = sum(p.numel() for p in model.parameters()) / 1e9
    assert abs(billions - float(size.group(1))) <= 0.3 * float(size.group(1)), f"{preset}: {billions:.2f}B"


def test_zz_report_figures():
    """Not an assertion of its own: prints families x modes checked and the worst error (pytest -s)."""
    total = sum(n for n, _ in FIGURES.values())
    worst = max((w for _, w in FIGURES.values()), default=0.0)
    print(f"\narchitectures: {len(FIGURES)} families x 2 modes, {total} vectors, worst abs error {worst:.3g}")
