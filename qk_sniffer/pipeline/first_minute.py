"""``python -m qk_sniffer.bench bench.mode=first_minute``: what a newcomer waits for, timed.

- ``make run``: ``python -m qk_sniffer`` (the embedded default) into a fresh dir, on warm caches (one untimed
  run first), as a newcomer without a W&B key runs it (W&B offline); then with ``report.enabled=false``,
  and with W&B disabled too, which splits the time into the capture, the figures and W&B's start;
- one 4096-token document through a tiny random Llama with ``sampler=all capture.pre_rope=true``, the
  default run's figures and W&B included, against :mod:`.peer_capture`, a bare script writing the same rows
  (and the capture without figures, and without W&B): what the tool costs over the floor;
- ``--help`` and ``dry_run=true``, remembered (asked before, as on a second try) and first of its config;
- the figures of a capture of ``bench.figure_rows`` rows (written the way a run commits them: 2 layers,
  4 query and 2 key heads, head_dim 64, every position of 4096-token examples): the aggregates and the
  drawing, in this process, imports already paid; and of a quarter of those rows, which splits the time
  into a cost per million rows (the slope) and the drawing's fixed cost.

Every command runs in a fresh interpreter, as a user starts it; medians of ``bench.repeats``. The load
average is recorded with the figures (they mean little on a busy machine). The last line is one JSON object.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..analysis.figures import render_figures
from ..analysis.loading import committed_parts
from ..analysis.numbers import aggregates, coverage
from ..capture.samplers import AllSampler
from ..core.arrow import schema, vector_array
from ..core.config import BenchAppConfig
from ..inputs.data import token_hash
from ..store import RunInfo, Store
from ..store.layout import METADATA
from ..store.manifest import model_identity, recipe_id
from ..store.writer import PartWriter

LAYERS, Q_HEADS, KV_HEADS, HEAD_DIM, SEQ_LEN = 2, 4, 2, 64, 4096
# The peer comparison: the embedded default's shape as a Llama (peer_capture.SHAPE), one document.
LIKE_PEER = [
    "model.architecture.model_type=llama",
    "dataset=synthetic",
    f"dataset.seq_len={SEQ_LEN}",
    "dataset.num_examples=1",
    "sampler=all",
    "capture.pre_rope=true",
]


def seconds(action: Callable[[], Any], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return times


def command(args: list[str], cwd: Path, wandb: str = "offline", cache: str | None = None) -> None:
    """``python -m qk_sniffer ARGS`` in a fresh interpreter. W&B offline by default: what a run without a key
    does (never online, even where the user has a key: a benchmark must not create runs in their project).
    Remembered dry runs go to ``cwd/cache`` (never the user's own), or ``cache`` ("off": none)."""
    env = {
        **os.environ,
        "WANDB_MODE": wandb,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "QK_SNIFFER_CACHE": cache or str(cwd / "cache"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "qk_sniffer", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"python -m qk_sniffer {' '.join(args)} failed:\n{proc.stderr[-2000:]}")


def write_capture(root: Path, rows: int, seed: int = 0) -> int:
    """A committed capture of about ``rows`` rows: every position of 4096-token examples, for each of
    2 layers x (4 query + 2 key) heads, one commit per example. Returns the rows written."""
    rng = np.random.default_rng(seed)
    sampler = AllSampler()
    recorded = {"name": sampler.name, **sampler.params()}
    layout = {"model_type": "bench", "num_layers": LAYERS, "num_q_heads": Q_HEADS, "num_kv_heads": KV_HEADS}
    metadata = {"model": {"name": "bench"}, "sampler": recorded, "layout": {**layout, "head_dim": HEAD_DIM}}
    recipe = {"sampler": recorded}
    configs = [
        f"l{layer:02d}h{head:02d}{kind}"
        for layer in range(LAYERS)
        for kind, heads in (("q", Q_HEADS), ("k", KV_HEADS))
        for head in range(heads)
    ]
    examples = max(1, round(rows / (len(configs) * SEQ_LEN)))
    run = "00000f165e00"
    store = Store(root)
    info = RunInfo(run, recipe_id(recipe), (0, 1), configs)
    positions = np.arange(SEQ_LEN, dtype=np.int32)
    with store.registered(info, recipe, model_identity(metadata), "append"):
        writer = PartWriter(root, "000", run, store.committer(info.recipe, run, "000"))
        for example in range(examples):
            tables = [(config, _table(rng, example, positions)) for config in configs]
            # No text stands behind these rows: the commit's content digest is of stand-in token ids.
            digest = token_hash([example] * SEQ_LEN)
            writer.submit(partial(list, tables), [(example, example, SEQ_LEN, digest, tuple(configs))])
        writer.close()
    (root / METADATA).write_text(json.dumps(metadata))
    return examples * SEQ_LEN * len(configs)


def _table(rng: np.random.Generator, example: int, positions: np.ndarray) -> pa.Table:
    count = len(positions)
    return pa.table(
        {
            "bucket": pa.array(positions),
            "example_id": pa.array(np.full(count, example, dtype=np.int64)),
            "position": pa.array(positions),
            "vector": vector_array(rng.standard_normal((count, HEAD_DIM), dtype=np.float32)),
            "sliding_window": pa.nulls(count, pa.int32()),
        },
        schema=schema(HEAD_DIM, token_strings=False),
    )


def figure_times(root: Path, repeats: int) -> dict[str, float]:
    parts = committed_parts(root)
    layout = json.loads((root / METADATA).read_text())["layout"]
    render_figures(root)  # warm: imports, fonts, the page cache
    aggregate = seconds(lambda: (aggregates(parts, layout), coverage(parts, layout)), repeats)
    total = seconds(lambda: render_figures(root), repeats)
    return {"figures_aggregates_s": statistics.median(aggregate), "figures_total_s": statistics.median(total)}


def peer_times(
    work: Path, make_run: Callable[..., Path], repeats: int, nnsight_python: str | None = None
) -> dict[str, Any]:
    """The capture of one document with sampler=all and pre-RoPE vectors, against the peer scripts writing
    the same rows (checked: the same configs, each with every position): the bare hook script, and the
    nnsight one when ``nnsight_python`` (default: this Python) can import nnsight."""
    fresh = iter(range(10**6))
    last: dict[str, Path] = {}

    def run_peer(script: str, python: str) -> None:
        last[script] = work / f"peer{next(fresh)}"
        command = [python, str(Path(__file__).with_name(script)), str(last[script]), str(SEQ_LEN)]
        subprocess.run(command, check=True, capture_output=True)

    record: dict[str, Any] = {
        "peer_script_s": statistics.median(
            seconds(lambda: run_peer("peer_capture.py", sys.executable), repeats)
        )
    }
    python = nnsight_python or sys.executable
    has_nnsight = subprocess.run([python, "-c", "import nnsight"], capture_output=True).returncode == 0
    record["nnsight_script_s"] = (
        statistics.median(seconds(lambda: run_peer("peer_nnsight.py", python), repeats))
        if has_nnsight
        else None
    )
    ours: list[Path] = []
    record["like_peer_s"] = statistics.median(seconds(lambda: ours.append(make_run(*LIKE_PEER)), repeats))
    record["like_peer_no_figures_s"] = statistics.median(
        seconds(lambda: make_run(*LIKE_PEER, "report.enabled=false"), repeats)
    )
    record["like_peer_no_figures_no_wandb_s"] = statistics.median(
        seconds(lambda: make_run(*LIKE_PEER, "report.enabled=false", wandb="disabled"), repeats)
    )
    captured = committed_rows(ours[-1])
    for script, root in last.items():
        rows = peer_rows(root)
        if rows != captured:
            raise RuntimeError(f"{script} and the capture wrote different rows: {rows} != {captured}")
    record["like_peer_rows"] = sum(captured.values())
    record["like_peer_over_peer"] = record["like_peer_s"] / record["peer_script_s"]
    if record["nnsight_script_s"] is not None:
        record["like_peer_over_nnsight"] = record["like_peer_s"] / record["nnsight_script_s"]
    return record


def peer_rows(root: Path) -> dict[str, int]:
    """Rows per config the peer script wrote (its files are all there is: no store)."""
    return {d.name: pq.ParquetFile(d / "0.parquet").metadata.num_rows for d in root.glob("l*")}


def committed_rows(root: Path) -> dict[str, int]:
    """Rows per config a capture committed (the store's view: never a leftover file)."""
    return {config: sum(p.rows for p in parts) for config, parts in committed_parts(root).items()}


def run_first_minute(cfg: BenchAppConfig) -> dict[str, Any]:
    repeats = cfg.bench.repeats
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="qk_first_minute_") as tmp:
        work = Path(tmp)
        fresh = iter(range(10**6))
        command([f"output.dir={work / 'warm'}"], work)  # caches warm, as on a second try
        command(["dry_run=true"], work)  # and the dry run remembered, as on a second try

        def make_run(*extra: str, wandb: str = "offline") -> Path:
            out = work / f"run{next(fresh)}"
            command([f"output.dir={out}", *extra], work, wandb)
            return out

        record: dict[str, Any] = {
            **peer_times(work, make_run, repeats, cfg.bench.nnsight_python),
            "make_run_s": statistics.median(seconds(make_run, repeats)),
            "make_run_no_figures_s": statistics.median(
                seconds(lambda: make_run("report.enabled=false"), repeats)
            ),
            "make_run_no_figures_no_wandb_s": statistics.median(
                seconds(lambda: make_run("report.enabled=false", wandb="disabled"), repeats)
            ),
            "help_s": statistics.median(seconds(lambda: command(["--help"], work), repeats)),
            "dry_run_s": statistics.median(seconds(lambda: command(["dry_run=true"], work), repeats)),
            # The first dry run of a config (or a Hub model's, never remembered): the layout measured.
            "dry_run_first_s": statistics.median(
                seconds(lambda: command(["dry_run=true"], work, cache="off"), repeats)
            ),
        }
        figure_root = work / "figures-capture"
        record["figure_rows"] = write_capture(figure_root, cfg.bench.figure_rows)
        record.update(figure_times(figure_root, repeats))
        # A quarter of the rows too: the slope between the two is what each further million rows costs,
        # the rest is the drawing, the same for any number of rows.
        quarter = work / "figures-quarter"
        record["figure_rows_quarter"] = write_capture(quarter, cfg.bench.figure_rows // 4, seed=1)
        record["figures_total_quarter_s"] = figure_times(quarter, repeats)["figures_total_s"]
    rows, total = record["figure_rows"], record["figures_total_s"]
    record["figures_s_per_million_rows"] = total / (rows / 1e6)
    slope = (total - record["figures_total_quarter_s"]) / (rows - record["figure_rows_quarter"])
    record["figures_marginal_s_per_million_rows"] = slope * 1e6
    record["figures_fixed_s"] = total - slope * rows
    record["repeats"] = repeats
    record["load_avg_1m"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]
    record["cpus"] = os.cpu_count()
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in record.items()}


def format_table(record: dict[str, Any]) -> str:
    over_nnsight = record.get("like_peer_over_nnsight")
    lines = [
        f"qk_sniffer first minute: medians of {record['repeats']} on {record['cpus']} CPUs, load average "
        f"{record['load_avg_1m'][0]} -> {record['load_avg_1m'][1]}",
        f"  one {SEQ_LEN}-token document, sampler=all, pre-RoPE ({record['like_peer_rows']:,} rows):",
        f"    a bare hook script (peer_capture.py)  {record['peer_script_s']:>6.2f} s",
        *(
            [f"    an nnsight script (peer_nnsight.py)   {record['nnsight_script_s']:>6.2f} s"]
            if record.get("nnsight_script_s") is not None
            else []
        ),
        f"    python -m qk_sniffer                   {record['like_peer_s']:>6.2f} s "
        f"(x{record['like_peer_over_peer']:.2f} the bare script"
        + (f", x{over_nnsight:.2f} the nnsight one)" if over_nnsight is not None else ")"),
        f"      report.enabled=false                 {record['like_peer_no_figures_s']:>6.2f} s",
        f"      and W&B disabled                     {record['like_peer_no_figures_no_wandb_s']:>6.2f} s",
        f"  make run (warm caches, W&B offline) {record['make_run_s']:>6.2f} s",
        f"  make run, report.enabled=false    {record['make_run_no_figures_s']:>8.2f} s",
        f"    and W&B disabled                {record['make_run_no_figures_no_wandb_s']:>8.2f} s",
        f"  --help                            {record['help_s']:>8.2f} s",
        f"  dry_run=true (remembered)         {record['dry_run_s']:>8.2f} s",
        f"  dry_run=true, first of its config {record['dry_run_first_s']:>8.2f} s",
        f"  figures of {record['figure_rows']:,} rows: {record['figures_total_s']:.2f} s "
        f"({record['figures_aggregates_s']:.2f} s aggregates), {record['figures_s_per_million_rows']:.2f} s "
        "per million rows",
        f"    each further million rows {record['figures_marginal_s_per_million_rows']:.2f} s, drawing "
        f"{record['figures_fixed_s']:.2f} s (from {record['figure_rows_quarter']:,} rows: "
        f"{record['figures_total_quarter_s']:.2f} s)",
    ]
    return "\n".join(lines)
