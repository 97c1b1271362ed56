"""The overhead bench (``python -m qk_sniffer.bench``, ``make bench``): what capture costs compared with a
plain forward.

The command composes the same Hydra groups as the main app (``conf/bench.yaml``), builds the model (usually
``model.random_init=true``: a preset's shape with random weights, offline), and alternates two arms over the
same synthetic batches:

- plain: the backbone forward with the model's own attention backend, no tap;
- capture: :meth:`CaptureSession.forward` plus :meth:`PendingCopy.result`, i.e. the whole capture path
  including the copy to host memory (not the Parquet writing, which runs on its own thread in a real run).

Pairs alternate their order (plain first, then capture first) so a drift in machine load hits both arms;
``bench.warmup`` pairs are dropped, medians of ``bench.repeats`` pairs are reported. The last line printed
is one JSON object, for scripts.

Only torch, transformers, hydra/omegaconf (and what they bring) are imported: the bench runs on a bare GPU
machine without datasets, wandb or a network.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from transformers import PreTrainedModel

from ..capture.heads import HeadSelection
from ..capture.models import attention_backend, backbone_of, layout_from_config, text_config
from ..capture.samplers import Sampler
from ..capture.session import CaptureSession, to_device
from ..core.config import BenchAppConfig
from ..core.errors import UserError
from ..inputs.data import Batch, DataStats, batches, synthetic_examples
from .plan import load_checked, plan_capture

GIB = 2**30


@dataclass
class BenchSetup:
    model: PreTrainedModel
    backbone: torch.nn.Module
    device: torch.device
    selection: HeadSelection
    sampler: Sampler
    batches: list[Batch]

    @property
    def tokens(self) -> int:
        return sum(b.num_tokens for b in self.batches)


BENCH_MODES = ("overhead", "long_context", "first_minute")


def check_bench(cfg: BenchAppConfig) -> None:
    problems = []
    if cfg.bench.mode not in BENCH_MODES:
        problems.append(f"bench.mode={cfg.bench.mode!r} is unknown; choose one of {', '.join(BENCH_MODES)}")
    if cfg.dataset.path != "synthetic":
        problems.append(f"dataset.path={cfg.dataset.path!r}: the bench runs on dataset=synthetic only")
    if cfg.bench.repeats < 1:
        problems.append(f"bench.repeats must be >= 1, got {cfg.bench.repeats}")
    if cfg.bench.warmup < 0:
        problems.append(f"bench.warmup must be >= 0, got {cfg.bench.warmup}")
    if problems:
        raise UserError("invalid bench configuration:\n  - " + "\n  - ".join(problems))


def prepare(cfg: BenchAppConfig) -> BenchSetup:
    """Check the config, build batches and the model (everything checkable is checked before weights)."""
    check_bench(cfg)
    plan = plan_capture(cfg)
    model_config, selection, sampler = plan.model_config, plan.selection, plan.sampler
    vocab_size = int(text_config(model_config).vocab_size)
    data = list(
        batches(synthetic_examples(cfg.dataset, vocab_size), cfg.inference.batch_size, 0, DataStats())
    )
    if not data:
        raise UserError("dataset.num_examples/num_shards leave no example for this shard: nothing to time")
    model = load_checked(cfg.model, model_config, plan.layout)
    backbone = backbone_of(model)
    device = next(backbone.parameters()).device
    return BenchSetup(model, backbone, device, selection, sampler, data)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Wall-clock seconds of ``fn`` with the device drained before and after."""
    _synchronize(device)
    start = time.perf_counter()
    out = fn()
    _synchronize(device)
    return time.perf_counter() - start, out


@torch.inference_mode()
def plain_pass(setup: BenchSetup) -> None:
    for batch in setup.batches:
        setup.backbone(input_ids=to_device(batch.input_ids, setup.device), use_cache=False)


def capture_pass(session: CaptureSession, data: list[Batch]) -> int:
    """Every batch through the capture path, pipelined as the runner does it: batch i's copy is collected
    after batch i+1's forward was queued. Returns the number of vectors captured."""
    return sum(
        b.vectors.shape[0] * b.vectors.shape[1] for _, blocks, _ in session.stream(data) for b in blocks
    )


def measure(cfg: BenchAppConfig, setup: BenchSetup) -> tuple[list[float], list[float], int]:
    """Interleaved (plain, capture) pairs; returns the timed runs of each arm and the vectors per pass."""
    session = CaptureSession(
        setup.model,
        setup.selection,
        setup.sampler,
        pre_rope=cfg.capture.pre_rope,
        early_stop=cfg.bench.early_stop,
    )
    plain_runs: list[float] = []
    capture_runs: list[float] = []
    vectors = 0

    def run_capture() -> tuple[float, int]:
        # The tap is opened per run (as a real run opens it once); only the forwards are timed.
        with session:
            return timed(lambda: capture_pass(session, setup.batches), setup.device)

    for i in range(cfg.bench.warmup + cfg.bench.repeats):
        keep = i >= cfg.bench.warmup
        arms = ("plain", "capture") if i % 2 == 0 else ("capture", "plain")
        for arm in arms:
            if arm == "plain":
                seconds, _ = timed(lambda: plain_pass(setup), setup.device)
                if keep:
                    plain_runs.append(seconds)
            else:
                seconds, vectors = run_capture()
                if keep:
                    capture_runs.append(seconds)
    return plain_runs, capture_runs, vectors


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"cpu: {name} ({torch.get_num_threads()} threads)"


def run_bench(cfg: BenchAppConfig) -> dict[str, Any]:
    """Build, measure, and return the JSON record."""
    setup = prepare(cfg)
    load_start = os.getloadavg()[0]
    if setup.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(setup.device)
    plain_runs, capture_runs, vectors = measure(cfg, setup)
    load_end = os.getloadavg()[0]
    plain_s, capture_s = statistics.median(plain_runs), statistics.median(capture_runs)
    tokens = setup.tokens
    layout = layout_from_config(setup.model.config)
    deepest = setup.selection.deepest_layer
    return {
        "plain_s": round(plain_s, 6),
        "capture_s": round(capture_s, 6),
        "overhead": round(capture_s / plain_s, 4),
        # Median of capture/plain within each pair: the two runs of a pair are adjacent in time, so this
        # resists a machine whose load changes during the bench better than the ratio of medians.
        "overhead_paired": round(
            statistics.median(c / p for p, c in zip(plain_runs, capture_runs, strict=True)), 4
        ),
        "tokens_per_s": round(tokens / capture_s, 1),
        "plain_tokens_per_s": round(tokens / plain_s, 1),
        "seq_len": cfg.dataset.seq_len,
        "num_examples": len([e for b in setup.batches for e in b.examples]),
        "batch_size": cfg.inference.batch_size,
        "tokens": tokens,
        "device": describe_device(setup.device),
        "peak_gpu_gib": (
            round(torch.cuda.max_memory_allocated(setup.device) / GIB, 2)
            if setup.device.type == "cuda"
            else None
        ),
        "model": cfg.model.slug or cfg.model.name,
        "num_layers": layout.num_layers,
        "dtype": cfg.model.dtype,
        "attn_implementation": attention_backend(setup.model),
        "captured_layers": len(setup.selection.layers),
        "deepest_layer": deepest,
        "q_heads": setup.selection.count("q"),
        "k_heads": setup.selection.count("k"),
        "vectors_per_pass": vectors,
        "early_stop": cfg.bench.early_stop,
        "repeats": cfg.bench.repeats,
        "warmup": cfg.bench.warmup,
        "plain_runs_s": [round(s, 6) for s in plain_runs],
        "capture_runs_s": [round(s, 6) for s in capture_runs],
        "load_avg_1m": [round(load_start, 2), round(load_end, 2)],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def format_table(record: dict[str, Any]) -> str:
    stop = f"early stop after layer {record['deepest_layer']}" if record["early_stop"] else "no early stop"
    lines = [
        f"qk_sniffer bench: {record['model']} ({record['num_layers']} layers, {record['dtype']}, "
        f"{record['attn_implementation']}) on {record['device']}",
        f"  {record['num_examples']} x {record['seq_len']} tokens, batch {record['batch_size']}; capturing "
        f"{record['q_heads']} q + {record['k_heads']} k heads on {record['captured_layers']} layers, {stop}; "
        f"{record['vectors_per_pass']} vectors per pass",
        f"  {record['repeats']} interleaved pairs after {record['warmup']} warm-up; load average "
        f"{record['load_avg_1m'][0]} -> {record['load_avg_1m'][1]}",
        "",
        f"  {'arm':<9}{'median s':>10}{'min s':>10}{'max s':>10}{'tokens/s':>12}",
    ]
    for arm in ("plain", "capture"):
        runs = record[f"{arm}_runs_s"]
        tps = record["plain_tokens_per_s" if arm == "plain" else "tokens_per_s"]
        lines.append(f"  {arm:<9}{record[f'{arm}_s']:>10.4f}{min(runs):>10.4f}{max(runs):>10.4f}{tps:>12.1f}")
    lines.append(
        f"  overhead x{record['overhead']:.4f} (capture / plain, medians); "
        f"x{record['overhead_paired']:.4f} (median of per-pair ratios)"
    )
    if record["peak_gpu_gib"] is not None:
        lines.append(f"  peak GPU memory {record['peak_gpu_gib']} GiB")
    return "\n".join(lines)
