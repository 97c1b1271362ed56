"""The long-context bench (``python -m qk_sniffer.bench bench.mode=long_context``): tokens/s and peak memory
of one capture per length, with the memory budget's chunking and without it.

Each (length, arm) runs in a fresh process, so its peak is the whole process's: the peak RSS from
``wait4`` on a CPU, ``torch.cuda.max_memory_allocated`` (weights included) on a GPU. Arms: ``budget`` (the
run's own settings: ``inference.token_chunk``, or what ``inference.memory_budget_gb`` picks) and
``one_pass`` (no chunking, as before this mode existed). When both ran, the budget arm's record says how far
its vectors are from the one pass's (same positions required). A length whose estimate exceeds the budget
is reported as skipped, not run. With ``bench.layers_built`` only that many layers are built and the other
layers' weights are held as one allocation: memory is the whole model's (a capture holds one layer's
activations at a time), time is per layer, and ``extrapolated_forward_s`` scales it to every layer.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from ..capture.gather import return_freed_buffers_to_the_os
from ..capture.heads import select_heads
from ..capture.memory import GB, ModelShape, gb
from ..capture.models import build_config, layout_from_config, resolve_device, text_config
from ..capture.samplers import Sampler
from ..capture.session import CaptureSession
from ..core.config import Config
from ..core.errors import UserError
from ..inputs.data import DataStats, batches, synthetic_examples
from .budget import Budget, run_budget
from .plan import load_checked, plan_capture

ARMS = ("budget", "one_pass")


def check_long_bench(cfg: Config) -> None:
    bench = cfg.bench  # type: ignore[attr-defined]
    problems = [f"bench.lengths must hold integers >= 1, got {v!r}" for v in bench.lengths if int(v) < 1]
    if not bench.lengths:
        problems.append("bench.lengths is empty: nothing to measure")
    if bench.layers_built is not None and bench.layers_built < 1:
        problems.append(f"bench.layers_built must be >= 1 or null, got {bench.layers_built}")
    problems += [
        f"bench.arms: {a!r} is unknown; choose from {', '.join(ARMS)}" for a in bench.arms if a not in ARMS
    ]
    if not bench.arms:
        problems.append("bench.arms is empty: nothing to measure")
    if bench.device_gb is not None and not bench.device_gb > 0:
        problems.append(f"bench.device_gb must be > 0 or null, got {bench.device_gb}")
    if problems:
        raise UserError("invalid bench configuration:\n  - " + "\n  - ".join(problems))


def run_long_bench(cfg: Config) -> Iterator[dict[str, Any]]:
    """Every length in ``bench.lengths``, each arm in its own process; yields one record per (length, arm),
    a length's records as soon as its arms are done."""
    check_long_bench(cfg)
    arms = list(dict.fromkeys(cfg.bench.arms))  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory(prefix="qk_long_bench_") as tmp:
        for length in cfg.bench.lengths:  # type: ignore[attr-defined]
            files = {arm: Path(tmp) / f"{length}-{arm}.npz" for arm in arms}
            runs = {arm: run_child(cfg, int(length), arm, files[arm]) for arm in arms}
            if len(runs) == 2 and all(r["status"] == "ok" for r in runs.values()):
                runs["budget"].update(compare(files["budget"], files["one_pass"]))
            for path in files.values():
                path.unlink(missing_ok=True)
            yield from runs.values()


def run_child(cfg: Config, length: int, arm: str, save: Path) -> dict[str, Any]:
    """One capture in a fresh process; its record, with the process's peak RSS."""
    request = {
        "config": OmegaConf.to_yaml(cfg, resolve=True),
        "length": length,
        "arm": arm,
        "save": str(save),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "qk_sniffer.pipeline.long_bench"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write(json.dumps(request))
    proc.stdin.close()
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    record: dict[str, Any] = {"mode": "long_context", "length": length, "arm": arm}
    if lines:
        record.update(json.loads(lines[-1]))
    else:
        died = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        record["status"] = f"failed ({died}): {err.strip().splitlines()[-1] if err.strip() else 'no output'}"
    record["peak_rss_gb"] = round(usage.ru_maxrss * 1024 / GB, 3)  # ru_maxrss is in KiB on Linux
    return record


def compare(budget_file: Path, one_pass_file: Path) -> dict[str, Any]:
    """How far the budget arm's vectors are from the one pass's; the rows must be the same."""
    a, b = np.load(budget_file), np.load(one_pass_file)
    if sorted(a.files) != sorted(b.files):
        return {"same_rows_as_one_pass": False, "max_abs_diff_vs_one_pass": None}
    same = all(np.array_equal(a[k], b[k]) for k in a.files if k.endswith("positions"))
    diffs = [float(np.abs(a[k] - b[k]).max()) for k in a.files if k.endswith("vectors") and a[k].size]
    return {"same_rows_as_one_pass": same, "max_abs_diff_vs_one_pass": max(diffs, default=0.0)}


# ------------------------------------------------------------------------------------- the child side


def child_main() -> None:
    request = json.loads(sys.stdin.read())
    cfg: Any = OmegaConf.create(request["config"])
    try:
        record = measure(cfg, request["length"], request["arm"], Path(request["save"]))
    except UserError as exc:
        record = {"status": f"refused: {exc}"}
    except (torch.OutOfMemoryError, RuntimeError) as exc:  # a CPU allocation failure is a RuntimeError
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not isinstance(exc, torch.OutOfMemoryError) and "can't allocate memory" not in first:
            raise
        record = {"status": f"out of memory: {first}"}
    print(json.dumps(record), flush=True)


def measure(cfg: Any, length: int, arm: str, save: Path) -> dict[str, Any]:
    cfg.dataset.seq_len = length
    cfg.dataset.num_examples = cfg.inference.batch_size
    device = resolve_device(cfg.model.device)
    if device.type == "cuda" and cfg.bench.device_gb is not None:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cfg.bench.device_gb * GB / total), device)
        if cfg.inference.memory_budget_gb is None:
            cfg.inference.memory_budget_gb = cfg.bench.device_gb
    plan = plan_capture(cfg)
    budget = run_budget(cfg, plan, device)
    batch = int(cfg.inference.batch_size)
    memory = budget.plan_for(batch, length)
    estimate = memory.chosen if arm == "budget" else memory.one_pass
    record: dict[str, Any] = {
        "token_chunk": memory.sizes.tokens if arm == "budget" else None,
        "query_chunk": memory.sizes.queries if arm == "budget" else None,
        "estimated_peak_gb": round(estimate.peak / GB, 3),
        "budget_gb": round(budget.budget / GB, 3),
        "budget_source": budget.source,
        "device_gb": cfg.bench.device_gb,
    }
    if estimate.peak > budget.budget:
        return {**record, "status": f"skipped: estimated {gb(estimate.peak)} > budget {gb(budget.budget)}"}
    return {**record, **_capture(cfg, plan.model_config, budget, arm, plan.sampler, device, save)}


def _capture(
    cfg: Any, full_config: Any, budget: Budget, arm: str, sampler: Sampler, device: torch.device, save: Path
) -> dict[str, Any]:
    return_freed_buffers_to_the_os()  # as a run does before it captures: the peak is the live buffers'
    config = build_config(cfg.model)
    layers = int(text_config(full_config).num_hidden_layers)
    built = min(int(cfg.bench.layers_built or layers), layers)
    text_config(config).num_hidden_layers = built
    layout = layout_from_config(config)
    model = load_checked(cfg.model, config, None)
    ballast = _ballast(budget.shape, model, device)
    selection = select_heads(cfg.capture, layout)
    data = list(
        batches(
            synthetic_examples(cfg.dataset, int(text_config(config).vocab_size)),
            cfg.inference.batch_size,
            0,
            DataStats(),
        )
    )
    session = CaptureSession(
        model,
        selection,
        sampler,
        pre_rope=cfg.capture.pre_rope,
        early_stop=cfg.bench.early_stop,
        chunking=budget if arm == "budget" else None,
    )
    runs, blocks = [], []
    with session:
        for i in range(cfg.bench.warmup + cfg.bench.repeats):
            _sync(device)
            start = time.perf_counter()
            blocks = [b for _, bs, _ in session.stream(data) for b in bs]
            _sync(device)
            if i >= cfg.bench.warmup:
                runs.append(time.perf_counter() - start)
    _save(blocks, save)
    forward_s = statistics.median(runs)
    tokens = sum(b.num_tokens for b in data)
    del ballast
    return {
        "status": "ok",
        "tokens": tokens,
        "forward_s": round(forward_s, 4),
        "runs_s": [round(r, 4) for r in runs],
        "tokens_per_s": round(tokens / forward_s, 1),
        "layers_built": built,
        "num_layers": layers,
        "extrapolated_forward_s": round(forward_s * layers / built, 2) if built < layers else None,
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated(device) / GB, 3)
        if device.type == "cuda"
        else None,
        "vectors": sum(int(b.vectors.shape[0] * b.vectors.shape[1]) for b in blocks),
        "model": cfg.model.slug or cfg.model.name,
        "dtype": cfg.model.dtype,
        "attn_implementation": budget.shape.backend,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }


def _ballast(shape: ModelShape, model: torch.nn.Module, device: torch.device) -> torch.Tensor | None:
    """The weights of the layers not built, as one allocation (touched, so a CPU's RSS counts it)."""
    built = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    missing = shape.weight_bytes - built
    if missing <= 0:
        return None
    return torch.zeros(missing, dtype=torch.uint8, device=device)


def _save(blocks: list[Any], path: Path) -> None:
    arrays = {}
    for b in blocks:
        key = f"l{b.layer}{b.kind}"
        arrays[f"{key}_positions"] = b.plan.positions
        arrays[f"{key}_vectors"] = b.vectors
    np.savez(path, **arrays)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_records(records: list[dict[str, Any]]) -> str:
    head = f"  {'tokens':>9} {'arm':<9} {'chunk':>6} {'est GB':>7} {'peak GB':>8} {'tok/s':>9}  status"
    lines = ["qk_sniffer long-context bench (each run in a fresh process)", head]
    for r in records:
        peak = r.get("peak_gpu_gb") or r.get("peak_rss_gb")
        tps = r.get("tokens_per_s")
        lines.append(
            f"  {r['length']:>9} {r['arm']:<9} {str(r.get('token_chunk') or '-'):>6} "
            f"{r.get('estimated_peak_gb', '-'):>7} {peak if r.get('status') == 'ok' else '-':>8} "
            f"{tps if tps else '-':>9}  {r.get('status')}"
            + (
                f"; max |diff| vs one pass {r['max_abs_diff_vs_one_pass']:.2e}"
                if r.get("max_abs_diff_vs_one_pass") is not None
                else ""
            )
        )
    return "\n".join(lines)


if __name__ == "__main__":
    child_main()
