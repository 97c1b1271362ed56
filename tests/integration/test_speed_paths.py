"""The fast paths change nothing that is captured: early stop, the pipelined (and, on CUDA, pinned and
asynchronous) copy, the zero-row shortcut; the attention keeps its implicit causal mask; the benchmark
prints its JSON line and imports without the optional packages. No timing is asserted here."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, compose_cfg, run_cli
from hydra import compose, initialize_config_dir
from reference import eager_reference
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from qk_sniffer.capture.heads import HeadSelection, select_heads
from qk_sniffer.capture.models import backbone_of, layout_from_config
from qk_sniffer.capture.rows import Block
from qk_sniffer.capture.samplers import AllSampler, Sampler, UniformSampler, sample_positions
from qk_sniffer.capture.session import CaptureSession
from qk_sniffer.core.config import CONF_DIR, CaptureConfig, HeadSamplingConfig
from qk_sniffer.core.errors import UserError
from qk_sniffer.inputs.data import Batch, DataStats, Example, batches
from qk_sniffer.pipeline.overhead_bench import run_bench

TOL = 1e-4
LENGTHS = (23, 9, 17)  # unequal, so right padding is exercised

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def examples(vocab: int, lengths=LENGTHS, first_id: int = 100) -> list[Example]:
    rng = np.random.default_rng(7)
    return [Example(i, first_id + i, rng.integers(0, vocab, n).tolist()) for i, n in enumerate(lengths)]


def make_batches(exs: list[Example], batch_size: int) -> list[Batch]:
    return list(batches(exs, batch_size, 0, DataStats()))


def selection_for(model, **capture) -> HeadSelection:
    return select_heads(CaptureConfig(**capture), layout_from_config(model.config))


def capture_all(
    model, selection: HeadSelection, sampler: Sampler, data: list[Batch], **session
) -> list[Block]:
    """Every batch through the runner's own pipelined loop (``CaptureSession.stream``), blocks in order."""
    assert data, "no batch to capture"
    with CaptureSession(model, selection, sampler, **session) as s:
        return [block for _, blocks, _ in s.stream(data) for block in blocks]


def as_rows(blocks: list[Block]) -> dict[tuple[int, str, int, int, int], np.ndarray]:
    """(layer, kind, head, example_id, position) -> vector."""
    rows = {}
    for b in blocks:
        assert b.vectors.dtype == np.float32 and b.vectors.shape[:2] == (len(b.heads), len(b.plan))
        for i, head in enumerate(b.heads):
            for j, (ex, pos) in enumerate(zip(b.plan.example_ids, b.plan.positions, strict=True)):
                rows[(b.layer, b.kind, head, int(ex), int(pos))] = b.vectors[i, j]
    return rows


def assert_matches_eager(model, exs: list[Example], rows, pre_rope: bool = False) -> None:
    refs = {e.example_id: eager_reference(model, e.input_ids) for e in exs}
    assert rows
    for (layer, kind, head, ex, pos), vector in rows.items():
        r = refs[ex].layers[layer]
        src = {"q": r.q_pre if pre_rope else r.q_post, "k": r.k_pre if pre_rope else r.k_post}[kind]
        err = float(np.abs(vector - src[head, pos].cpu().numpy()).max())
        assert err <= TOL, f"{kind} l{layer} h{head} ex{ex} pos{pos}: max abs error {err}"


class CallCounter:
    """Counts how often modules are entered (pre-hooks fire even when the forward later raises)."""

    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        self.calls: Counter[str] = Counter()
        self._handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name: str):
        def hook(module, args):
            self.calls[name] += 1

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def watched_modules(model) -> dict[str, torch.nn.Module]:
    backbone = backbone_of(model)
    out: dict[str, torch.nn.Module] = {"norm": backbone.norm}
    for i, layer in enumerate(backbone.layers):
        out[f"layer{i}"] = layer
        out[f"layer{i}.o_proj"] = layer.self_attn.o_proj
        out[f"layer{i}.mlp"] = layer.mlp
    return out


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_early_stop_changes_no_value_and_never_runs_later_layers(make_tiny, model_type):
    model = make_tiny(model_type, num_hidden_layers=4)
    exs = examples(model.config.vocab_size)
    data = make_batches(exs, 2)
    selection = selection_for(model, layers=[1])
    counter = CallCounter(watched_modules(model))
    try:
        stopped = capture_all(model, selection, AllSampler(), data, early_stop=True)
        calls_stopped = dict(counter.calls)
        counter.calls.clear()
        full = capture_all(model, selection, AllSampler(), data, early_stop=False)
        calls_full = dict(counter.calls)
    finally:
        counter.remove()

    n_batches = len(data)
    # Early stop: layer 0 runs whole, layer 1 is entered but stops once its Q/K are handed over (its o_proj
    # and MLP never run), layers 2-3 and the final norm are never entered.
    assert calls_stopped == {
        "layer0": n_batches,
        "layer0.o_proj": n_batches,
        "layer0.mlp": n_batches,
        "layer1": n_batches,
    }
    assert calls_full == {name: n_batches for name in watched_modules(model)}
    # Identical blocks, bit for bit, and equal to the model's own eager Q/K.
    assert [(b.layer, b.kind, b.heads) for b in stopped] == [(b.layer, b.kind, b.heads) for b in full]
    assert {b.layer for b in stopped} == {1}
    for a, b in zip(stopped, full, strict=True):
        np.testing.assert_array_equal(a.vectors, b.vectors)
        np.testing.assert_array_equal(a.plan.positions, b.plan.positions)
        np.testing.assert_array_equal(a.plan.example_ids, b.plan.example_ids)
    rows = as_rows(stopped)
    n_q, n_kv = model.config.num_attention_heads, model.config.num_key_value_heads
    assert len(rows) == sum(LENGTHS) * (n_q + n_kv)
    assert_matches_eager(model, exs, rows)


def test_early_stop_at_the_last_layer_still_captures_it(make_tiny):
    model = make_tiny("llama")
    exs = examples(model.config.vocab_size, lengths=(12,))
    selection = selection_for(model, layers=[0, 2], heads=[1])
    counter = CallCounter(watched_modules(model))
    try:
        blocks = capture_all(model, selection, AllSampler(), make_batches(exs, 1))
    finally:
        counter.remove()
    assert counter.calls["layer2"] == 1 and counter.calls["layer2.mlp"] == 0 and counter.calls["norm"] == 0
    assert [(b.layer, b.kind, b.heads) for b in blocks] == [
        (0, "q", (1,)),
        (0, "k", (0,)),
        (2, "q", (1,)),
        (2, "k", (0,)),
    ]
    assert_matches_eager(model, exs, as_rows(blocks))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pre_rope", [False, True])
def test_pipelined_copy_matches_eager_reference(make_tiny, device, pre_rope):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model = make_tiny("qwen3", num_hidden_layers=3).to(device)
    exs = examples(model.config.vocab_size, lengths=(23, 9, 17, 30, 5))
    data = make_batches(exs, 2)  # three batches: two copies are in flight while the next forward runs
    selection = select_heads(
        CaptureConfig(head_sampling=HeadSamplingConfig(count=5, seed=3)), layout_from_config(model.config)
    )
    blocks = capture_all(model, selection, AllSampler(), data, pre_rope=pre_rope)
    rows = as_rows(blocks)
    expected = sum(len(e.input_ids) for e in exs) * (selection.count("q") + selection.count("k"))
    assert len(rows) == expected
    assert_matches_eager(model, exs, rows, pre_rope)


def test_sparse_sampling_keeps_every_block_and_the_sampled_rows(make_tiny):
    """With a low keep rate most (layer, kind) keep no row: those launch no gather but still report a
    (heads, 0, head_dim) block, and the kept rows are exactly the sampler's."""
    model = make_tiny("llama")
    exs = examples(model.config.vocab_size, lengths=(40, 31))
    sampler = UniformSampler(base_rate=1.0, bucket_size=64)
    selection = selection_for(model)
    blocks = capture_all(model, selection, sampler, make_batches(exs, 2))
    assert [(b.layer, b.kind) for b in blocks] == [(layer, kind) for layer in range(3) for kind in ("q", "k")]
    empty = [b for b in blocks if len(b.plan) == 0]
    assert 0 < len(empty) < len(blocks), "the sampler should keep rows in some (layer, kind) but not all"
    for b in empty:
        assert b.vectors.shape == (len(b.heads), 0, model.config.head_dim)
    for b in blocks:
        want_ids, want_pos = [], []
        for e in exs:
            pos, _ = sample_positions(sampler, e.example_id, b.layer, b.kind, len(e.input_ids))
            want_ids += [e.example_id] * len(pos)
            want_pos += pos.tolist()
        assert b.plan.example_ids.tolist() == want_ids and b.plan.positions.tolist() == want_pos
        ids_by_example = {e.example_id: e.input_ids for e in exs}
        assert b.plan.token_ids.tolist() == [
            ids_by_example[int(i)][int(p)] for i, p in zip(want_ids, want_pos, strict=True)
        ]
    assert_matches_eager(model, exs, as_rows(blocks))


def test_full_attention_layers_get_no_materialized_mask(make_tiny):
    """sdpa sees attention_mask=None (its implicit causal mask) in every tapped layer, padding included:
    no (S, S) mask is built."""
    model = make_tiny("llama")
    exs = examples(model.config.vocab_size)
    original = ALL_ATTENTION_FUNCTIONS["sdpa"]
    masks: list[object] = []

    def recording_sdpa(module, query, key, value, attention_mask, *args, **kwargs):
        masks.append(attention_mask)
        return original(module, query, key, value, attention_mask, *args, **kwargs)

    AttentionInterface.register("sdpa", recording_sdpa)
    try:
        capture_all(model, selection_for(model), AllSampler(), make_batches(exs, 3), early_stop=False)
    finally:
        AttentionInterface.register("sdpa", original)
    assert len(masks) == model.config.num_hidden_layers
    assert all(m is None for m in masks)


def bench_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="bench", overrides=overrides)


TINY_BENCH = [
    "model=embedded",
    "dataset.seq_len=48",
    "dataset.num_examples=2",
    "inference.batch_size=2",
    "capture.head_sampling.count=3",
    "sampler=all",
    "bench.repeats=2",
    "bench.warmup=0",
]


def test_bench_record_in_process():
    record = run_bench(bench_cfg(TINY_BENCH))
    assert record["seq_len"] == 48 and record["tokens"] == 96 and record["num_examples"] == 2
    assert len(record["plain_runs_s"]) == len(record["capture_runs_s"]) == 2
    assert record["q_heads"] == 3
    # sampler=all keeps every position: 2 examples x 48 tokens x every captured head.
    assert record["vectors_per_pass"] == 96 * (record["q_heads"] + record["k_heads"])
    assert record["peak_gpu_gib"] is None and record["device"].startswith("cpu")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dataset=embedded", "dataset.path='embedded': the bench runs on dataset=synthetic only"),
        ("bench.repeats=0", "bench.repeats must be >= 1, got 0"),
    ],
)
def test_bench_rejects_bad_settings(override, message):
    with pytest.raises(UserError, match=message):
        run_bench(bench_cfg([*TINY_BENCH, override]))


def test_bench_cli_prints_table_then_json_line(tmp_path):
    proc = run_cli(TINY_BENCH, cwd=tmp_path, module="qk_sniffer.bench")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    record = json.loads(lines[-1])
    required = {"plain_s", "capture_s", "overhead", "tokens_per_s", "seq_len", "device", "peak_gpu_gib"}
    assert required <= set(record)
    assert record["overhead"] == pytest.approx(record["capture_s"] / record["plain_s"], rel=1e-2)
    assert record["tokens_per_s"] == pytest.approx(96 / record["capture_s"], rel=1e-2)
    assert any(line.strip().startswith("overhead x") for line in lines[:-1])
    assert list(tmp_path.iterdir()) == [], "the bench must write nothing"


def test_bench_cli_user_error_exits_2(tmp_path):
    proc = run_cli([*TINY_BENCH, "bench.warmup=-1"], cwd=tmp_path, module="qk_sniffer.bench")
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == "qk_sniffer: error: invalid bench configuration:\n  - bench.warmup must be >= 0, got -1"
    )


def test_bench_first_minute_figures_part_draws_a_committed_capture(tmp_path):
    """The figures half of ``bench.mode=first_minute`` (its command half only times the CLI)."""
    from qk_sniffer.analysis.figures import current_figures
    from qk_sniffer.pipeline import first_minute

    rows = first_minute.write_capture(tmp_path, 12 * 4096)  # one 4096-token example in each of 12 configs
    assert rows == 12 * 4096
    times = first_minute.figure_times(tmp_path, repeats=1)
    assert times["figures_aggregates_s"] > 0 and times["figures_total_s"] > 0
    assert len(current_figures(tmp_path)) == 5


def test_the_peer_script_writes_the_rows_the_capture_it_is_timed_against_writes(tmp_path):
    """``bench.mode=first_minute`` times a capture against peer_capture.py: the same configs and rows."""
    from qk_sniffer.pipeline import first_minute, peer_capture
    from qk_sniffer.pipeline.runner import run

    assert peer_capture.capture(tmp_path / "peer", 64) == 24 * 64  # 4 layers x (4 query + 2 key heads)
    like_peer = [a.replace(f"seq_len={first_minute.SEQ_LEN}", "seq_len=64") for a in first_minute.LIKE_PEER]
    run(compose_cfg([*like_peer, f"output.dir={tmp_path / 'ours'}", "report.enabled=false"]))
    peer = first_minute.peer_rows(tmp_path / "peer")
    assert peer == first_minute.committed_rows(tmp_path / "ours") and set(peer.values()) == {64}


def test_the_nnsight_peer_writes_the_bare_peers_vectors(tmp_path):
    """The second peer of ``bench.mode=first_minute`` (only where nnsight is installed: no dependency)."""
    pytest.importorskip("nnsight")
    import pyarrow.parquet as pq

    from qk_sniffer.pipeline import peer_capture

    script = Path(peer_capture.__file__).with_name("peer_nnsight.py")
    subprocess.run([sys.executable, str(script), str(tmp_path / "nnsight"), "64"], check=True, timeout=300)
    peer_capture.capture(tmp_path / "peer", 64)
    for folder in sorted((tmp_path / "peer").glob("l*")):
        assert pq.read_table(folder / "0.parquet").equals(
            pq.read_table(tmp_path / "nnsight" / folder.name / "0.parquet")
        )


def test_bench_unknown_mode_is_one_message(tmp_path):
    proc = run_cli([*TINY_BENCH, "bench.mode=fast"], cwd=tmp_path, module="qk_sniffer.bench")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "qk_sniffer: error: invalid bench configuration:\n"
        "  - bench.mode='fast' is unknown; choose one of overhead, long_context, first_minute"
    )


OPTIONAL = ("datasets", "wandb", "dotenv", "submitit")
# transformers itself imports huggingface_hub, so it cannot be blocked; our own modules must not import it
# (nor the others) at module level.
LAZY_ONLY = (*OPTIONAL, "huggingface_hub", "accelerate")


def eager_imports(tree: ast.AST) -> list[str]:
    """Modules imported when the file is imported: not inside functions, not under ``if TYPE_CHECKING``."""
    found: list[str] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            found += [
                n for child in node.orelse for n in eager_imports(ast.Module(body=[child], type_ignores=[]))
            ]
            continue
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append(node.module or "")
        else:
            found += eager_imports(node)
    return found


def test_bench_imports_without_optional_packages():
    script = (
        "import sys, json\n"
        f"for name in {OPTIONAL!r}: sys.modules[name] = None\n"
        "import qk_sniffer.commands.bench\n"
        "print(json.dumps({m: getattr(sys.modules[m], '__file__', None) for m in sys.modules\n"
        "                  if m.split('.')[0] == 'qk_sniffer'}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    # The overhead bench, the long-context bench (its child processes import the same modules), the capture.
    for module in (
        "qk_sniffer.commands.bench",
        "qk_sniffer.pipeline.long_bench",
        "qk_sniffer.capture.session",
    ):
        assert module in loaded
    offenders = []
    for name, path in sorted(loaded.items()):
        if path is None:
            continue
        with open(path) as f:
            imported = eager_imports(ast.parse(f.read()))
        offenders += [f"{name}: {n}" for n in imported if n.split(".")[0] in LAZY_ONLY]
    assert offenders == []
