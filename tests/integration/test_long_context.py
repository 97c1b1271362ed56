"""Chunked capture changes no captured value: token-wise work in slices (``inference.token_chunk``) and masks
built per chunk of query rows give the same rows and vectors as one pass, on every kind of layer (full and
sliding attention, eager-only families with softcapping or sinks, chunked attention, MoE blocks, hybrids),
pre and post RoPE. Short texts and tiny chunks, so every path runs in milliseconds."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from helpers import compose_cfg
from hydra.errors import ConfigCompositionException
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from qk_sniffer.capture import chunking, long_attention
from qk_sniffer.capture.chunking import ChunkSizes
from qk_sniffer.capture.heads import select_heads
from qk_sniffer.capture.models import backbone_of, layout_from_config
from qk_sniffer.capture.samplers import AllSampler
from qk_sniffer.capture.session import CaptureSession
from qk_sniffer.capture.support import matrix_entry
from qk_sniffer.core.config import CaptureConfig
from qk_sniffer.inputs.data import DataStats, Example, batches

TOL = 1e-5
LENGTHS = (37, 22, 30)  # unequal (right padding), longer than every tiny window (6) and chunk
# model type -> what it exercises
FAMILIES = {
    "llama": "full attention, sdpa's causal kernel (no mask)",
    "qwen3": "q/k norms on the head dim",
    "gemma3_text": "sliding windows under sdpa: masks built per query chunk",
    "gemma2": "eager only (softcapping): scores per query chunk",
    "gpt_oss": "eager only (sinks), sliding windows, an MoE block returning (hidden, router scores)",
    "qwen3_moe": "an MoE block",
    "llama4_text": "chunked attention, NoPE layers, MoE",
    "qwen3_next": "a hybrid: linear-attention layers beside softmax ones, MoE with a shared expert",
    "jamba": "a hybrid: Mamba layers beside attention, MoE",
}


def tiny(model_type: str) -> torch.nn.Module:
    entry = matrix_entry(model_type)
    assert entry is not None and entry["status"] == "exact", model_type
    config = AutoConfig.for_model(model_type, **entry["tiny_config"])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        config, dtype=torch.float32, attn_implementation=entry["backend"]
    )
    return model.eval()


def examples(vocab: int) -> list[Example]:
    rng = np.random.default_rng(11)
    return [Example(i, 50 + i, rng.integers(0, vocab, n).tolist()) for i, n in enumerate(LENGTHS)]


def capture(model, exs, sizes: ChunkSizes | None, pre_rope: bool) -> dict[tuple, np.ndarray]:
    selection = select_heads(CaptureConfig(), layout_from_config(model.config))
    policy = None if sizes is None else (lambda batch, length: sizes)
    data = list(batches(exs, 2, 0, DataStats()))
    rows = {}
    with CaptureSession(
        model, selection, AllSampler(), pre_rope=pre_rope, early_stop=False, chunking=policy
    ) as session:
        for _, blocks, _ in session.stream(data):
            for b in blocks:
                for i, head in enumerate(b.heads):
                    for j, (ex, pos) in enumerate(zip(b.plan.example_ids, b.plan.positions, strict=True)):
                        rows[(b.layer, b.kind, head, int(ex), int(pos))] = b.vectors[i, j]
    return rows


@pytest.fixture
def spy(monkeypatch):
    """Counts the slices run and the mask chunks built, so a test knows the chunked paths really ran."""
    calls: Counter[str] = Counter()
    slices, rows = chunking.run_in_slices, long_attention.RowMask.rows

    def counted_slices(*args, **kwargs):
        calls["slices"] += 1
        return slices(*args, **kwargs)

    def counted_rows(self, *args, **kwargs):
        calls["mask_rows"] += 1
        return rows(self, *args, **kwargs)

    monkeypatch.setattr(chunking, "run_in_slices", counted_slices)
    monkeypatch.setattr(long_attention.RowMask, "rows", counted_rows)
    return calls


@pytest.mark.parametrize("pre_rope", [False, True])
@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_chunked_capture_equals_one_pass(model_type, pre_rope, spy):
    model = tiny(model_type)
    exs = examples(model.config.get_text_config().vocab_size)
    whole = capture(model, exs, None, pre_rope)
    assert spy == {}
    chunked = capture(model, exs, ChunkSizes(tokens=8, queries=5), pre_rope)
    assert spy["slices"] > 0, "no token-wise module ran in slices"
    windows = [w for w in layout_from_config(model.config).sliding_windows if w]
    if model_type in ("gemma3_text", "gemma2", "gpt_oss", "llama4_text") or windows:
        assert spy["mask_rows"] > 0, "masks were not built per query chunk"
    assert chunked.keys() == whole.keys() and whole
    worst = max(float(np.abs(chunked[k] - whole[k]).max()) for k in whole)
    assert worst <= TOL, f"{model_type}: max abs difference {worst}"


def test_chunked_capture_matches_the_models_own_eager_qk(make_tiny):
    """Not only equal to one pass: equal to the model's own eager Q/K, the reference every path answers to."""
    from reference import eager_reference

    model = make_tiny("mistral")  # a sliding window of 8, under sdpa
    exs = examples(model.config.vocab_size)
    rows = capture(model, exs, ChunkSizes(tokens=4, queries=3), pre_rope=True)
    refs = {e.example_id: eager_reference(model, e.input_ids) for e in exs}
    for (layer, kind, head, ex, pos), vector in rows.items():
        r = refs[ex].layers[layer]
        want = (r.q_pre if kind == "q" else r.k_pre)[head, pos].numpy()
        assert float(np.abs(vector - want).max()) <= 1e-4


def test_session_restores_every_module_and_function():
    model = tiny("gpt_oss")
    backbone = backbone_of(model)
    module = type(backbone.layers[0].self_attn).__module__
    import sys

    modeling = sys.modules[module]
    rotary, forwards = modeling.apply_rotary_pos_emb, [m.__dict__.get("forward") for m in backbone.modules()]
    masks, attention = (
        dict(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping),
        dict(ALL_ATTENTION_FUNCTIONS._global_mapping),
    )
    capture(model, examples(512), ChunkSizes(tokens=8, queries=5), pre_rope=True)
    assert modeling.apply_rotary_pos_emb is rotary
    assert [m.__dict__.get("forward") for m in backbone.modules()] == forwards
    assert dict(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping) == masks
    assert dict(ALL_ATTENTION_FUNCTIONS._global_mapping) == attention


def test_a_mask_that_reaches_past_its_window_is_refused():
    """The keys a chunk drops must be masked for its first row: a mask that lets it see them is refused."""
    from transformers.masking_utils import sdpa_mask

    mask = long_attention.RowMask(
        sdpa_mask,
        {
            "batch_size": 1,
            "q_length": 20,
            "kv_length": 20,
            "mask_function": lambda b, h, q, k: k <= q,
            "local_size": 4,
        },
    )
    with pytest.raises(long_attention.RowMaskError, match="outside its window of 4"):
        long_attention._check_dropped_keys(mask, 10, mask.first_key(10), torch.nn.Module())


def test_only_causally_bounded_masks_are_deferred():
    """The qualified names of transformers' mask closures are what the deferral trusts: this names them."""
    from transformers import masking_utils as mu

    assert long_attention.causal_bounded(mu.causal_mask_function)
    assert long_attention.causal_bounded(mu.sliding_window_causal_mask_function(4))
    assert long_attention.causal_bounded(mu.chunked_causal_mask_function(4, torch.zeros(1, dtype=torch.long)))
    assert not long_attention.causal_bounded(
        mu.or_masks(mu.causal_mask_function, mu.bidirectional_mask_function)
    )
    assert not long_attention.causal_bounded(mu.bidirectional_mask_function)


def test_a_module_that_is_not_token_wise_is_refused_by_name():
    def pooled(x):
        return x.mean(dim=1, keepdim=True)

    with pytest.raises(chunking.ChunkingError, match="Pool .*not token-wise"):
        chunking.run_in_slices(pooled, torch.zeros(1, 10, 4), 4, "Pool (layers.0.mlp)")


def test_flat_router_rows_come_back_in_the_modules_own_order():
    """An MoE block's (B*S, E) router output, assembled from slices, equals the one-pass output."""
    weight = torch.randn(4, 3)

    def block(x):
        return x * 2, x.reshape(-1, 4) @ weight

    x = torch.randn(2, 11, 4)
    whole, sliced = block(x), chunking.run_in_slices(block, x, 4, "block")
    torch.testing.assert_close(sliced[0], whole[0])
    torch.testing.assert_close(sliced[1], whole[1])


def compose_bad(override: str):
    return compose_cfg([override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("inference.token_chunk=0", "inference.token_chunk must be >= 1 or null, got 0"),
        ("inference.token_chunk=-4", "inference.token_chunk must be >= 1 or null, got -4"),
        ("inference.memory_budget_gb=0", "inference.memory_budget_gb must be > 0 or null"),
        ("inference.memory_budget_gb=-2.5", "inference.memory_budget_gb must be > 0 or null"),
    ],
)
def test_bad_values_get_one_message(override, message):
    from qk_sniffer.pipeline.validate import config_problems

    problems = config_problems(compose_bad(override))
    assert len(problems) == 1 and problems[0].startswith(message)


def test_a_string_is_refused_at_compose_time_naming_the_key():
    with pytest.raises(ConfigCompositionException) as caught:
        compose_bad("inference.token_chunk=big")
    assert "inference.token_chunk" in str(caught.value.__cause__ or caught.value)


@pytest.mark.parametrize("pre_rope", [False, True])
def test_a_chunked_run_writes_the_same_dataset(tmp_path, pre_rope, spy):
    """Through the real runner: inference.token_chunk=4 writes what inference.token_chunk=null writes."""
    from helpers import TEXTS, every_row_overrides, read_configs, save_checkpoint, write_jsonl

    from qk_sniffer.pipeline.runner import run

    ckpt = save_checkpoint(tmp_path, "mistral")  # a sliding window of 8, shorter than the texts
    data = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in TEXTS])
    tables = {}
    for chunk in ("null", "4"):
        out = tmp_path / f"out-{chunk}"
        run(compose_cfg([*every_row_overrides(ckpt, data, out, pre_rope), f"inference.token_chunk={chunk}"]))
        tables[chunk] = read_configs(out)
        # null: the tiny run fits this host in one pass; 4: slices and per-chunk masks.
        assert (spy["slices"] > 0, spy["mask_rows"] > 0) == (
            (False, False) if chunk == "null" else (True, True)
        )
    assert tables["4"].keys() == tables["null"].keys() and tables["null"]
    for name, whole in tables["null"].items():
        chunked = tables["4"][name]
        for column in ("example_id", "position", "bucket", "sliding_window"):
            assert chunked.column(column).to_pylist() == whole.column(column).to_pylist(), (name, column)
        a = np.array(chunked.column("vector").to_pylist())
        b = np.array(whole.column("vector").to_pylist())
        assert float(np.abs(a - b).max()) <= TOL, name


def test_dry_run_refuses_a_plan_that_cannot_fit_naming_the_longest_that_would(capsys):
    from qk_sniffer.core.errors import UserError
    from qk_sniffer.pipeline.dry_run import dry_run

    qwen3_8b_at = [
        "model=qwen3-8b",
        "model.random_init=true",
        "dataset=synthetic",
        "++model.config_overrides.max_position_embeddings=1048576",
        "dry_run=true",
    ]
    plan = dry_run(compose_cfg([*qwen3_8b_at, "dataset.seq_len=1048576", "inference.memory_budget_gb=80"]))
    memory = plan["memory"]
    assert memory["token_chunk"] and memory["peak_gb"] <= 80 < memory["one_pass_peak_gb"]
    assert "GB in one pass" in capsys.readouterr().out
    with pytest.raises(
        UserError, match=r"the longest that would fit is (\d+) tokens: lower dataset.seq_len"
    ) as caught:
        dry_run(compose_cfg([*qwen3_8b_at, "dataset.seq_len=1048576", "inference.memory_budget_gb=24"]))
    longest = int(str(caught.value).split("would fit is ")[1].split()[0])
    assert 32768 < longest < 1048576
    fits = dry_run(compose_cfg([*qwen3_8b_at, f"dataset.seq_len={longest}", "inference.memory_budget_gb=24"]))
    assert fits["memory"]["peak_gb"] <= 24
    with pytest.raises(UserError, match="the longest that would fit"):
        dry_run(
            compose_cfg([*qwen3_8b_at, f"dataset.seq_len={longest + 1}", "inference.memory_budget_gb=24"])
        )


@pytest.mark.gpu
def test_chunked_capture_equals_one_pass_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    for model_type in ("qwen3", "gemma3_text"):
        model = tiny(model_type).to("cuda")
        exs = examples(model.config.get_text_config().vocab_size)
        whole = capture(model, exs, None, pre_rope=True)
        chunked = capture(model, exs, ChunkSizes(tokens=8, queries=5), pre_rope=True)
        assert chunked.keys() == whole.keys()
        assert max(float(np.abs(chunked[k] - whole[k]).max()) for k in whole) <= 1e-4
