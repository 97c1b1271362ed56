"""Crash safety: kill -9 midway, run the same command again, get exactly the rows of an uninterrupted run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import compose_cfg, read_configs, save_checkpoint, write_jsonl
from test_merge import rows

from qk_sniffer.runner import run
from qk_sniffer.store.manifest import Manifest

WORDS = [
    "attention",
    "keys",
    "queries",
    "rotary",
    "position",
    "long",
    "context",
    "sink",
    "head",
    "layer",
    "token",
    "vector",
]


def corpus(path: Path, n: int = 160) -> Path:
    return write_jsonl(
        path,
        [{"text": " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(8 + i % 13))} for i in range(n)],
    )


def cli_args(checkpoint: Path, data: Path, out_dir: Path) -> list[str]:
    return [
        f"model.name={checkpoint}",
        "model.dtype=float32",
        "dataset=local",
        f"dataset.data_files={data}",
        "capture.layers=[0,2]",
        "inference.batch_size=2",
        "output.flush_every_examples=4",
        f"output.dir={out_dir}",
    ]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "qk_sniffer", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_commits(out_dir: Path, proc: subprocess.Popen, count: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list(out_dir.glob(".qk_sniffer/commits/*/*.json"))) >= count:
            return
        assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.communicate()}"
        time.sleep(0.01)
    raise AssertionError("no commit appeared in time")


def test_kill_9_midway_then_rerun_equals_an_uninterrupted_run(tmp_path):
    checkpoint = save_checkpoint(tmp_path, "qwen3")
    data = corpus(tmp_path / "docs.jsonl")
    out, ref = tmp_path / "out", tmp_path / "ref"
    args = cli_args(checkpoint, data, out)

    proc = start(args, tmp_path)
    wait_for_commits(out, proc, 3)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done = Manifest(out)
    committed = {i for c in done.commits for g in c.groups for i, _, _ in g["examples"]}
    assert 0 < len(committed) < 160
    # The manifest claims only files that are on disk.
    assert all((out / p).exists() for p in done.referenced())
    # What a kill can leave: a half-written temp file, and a whole part file written but never committed.
    some_part = out / sorted(done.referenced())[0]
    (some_part.parent / (some_part.name + ".tmp")).write_bytes(b"PAR1 half a file")
    run_id = next(iter({c.run for c in done.commits}))
    shutil.copy(some_part, some_part.parent / f"part-000-{run_id}-99999.parquet")

    again = start(args, tmp_path)
    stdout, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr

    # The rerun processed exactly the examples the killed run had not committed.
    resumed = {
        i for c in Manifest(out).commits if c.run != run_id for g in c.groups for i, _, _ in g["examples"]
    }
    assert resumed == set(range(160)) - committed

    run(compose_cfg([a.replace(str(out), str(ref)) for a in args]))
    assert rows(out) == rows(ref)  # none lost, none twice, exact vectors
    assert not list(out.rglob("*.tmp"))
    assert {p.relative_to(out).as_posix() for p in out.glob("l*/*")} == Manifest(out).referenced()
    assert {n: t.num_rows for n, t in read_configs(out).items()} == {
        n: t.num_rows for n, t in read_configs(ref).items()
    }
