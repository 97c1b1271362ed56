"""Bounded memory: a capture many times larger than output.max_buffer_mb peaks at about twice the cap above
a small run's peak."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import read_configs

CAP_MB = 32
# 4 layers x (8 query + 8 key heads) x 128 floats = 32 KiB per token; 64 tokens = 2 MiB per example.
WIDE = [
    "model.architecture.hidden_size=256",
    "model.architecture.num_attention_heads=8",
    "model.architecture.num_key_value_heads=8",
    "model.architecture.head_dim=128",
    "sampler=all",
    "dataset=synthetic",
    "dataset.seq_len=64",
    f"output.max_buffer_mb={CAP_MB}",
    "output.flush_every_examples=100000",
]


def peak_rss_mb(args: list[str], cwd) -> float:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "qk_sniffer", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, proc.stderr.read() if proc.stderr else ""
    return usage.ru_maxrss / 1024  # KiB on Linux


def test_peak_rss_stays_within_twice_the_buffer_above_a_small_run(tmp_path):
    small = peak_rss_mb([*WIDE, "dataset.num_examples=1", f"output.dir={tmp_path / 'small'}"], tmp_path)
    big = peak_rss_mb([*WIDE, "dataset.num_examples=96", f"output.dir={tmp_path / 'big'}"], tmp_path)
    captured_mb = sum(t.nbytes for t in read_configs(tmp_path / "big").values()) / 2**20
    print(
        f"peak RSS: small run {small:.0f} MiB, {captured_mb:.0f} MiB capture {big:.0f} MiB "
        f"(+{big - small:.0f} MiB, cap {CAP_MB} MiB)"
    )
    assert captured_mb > 5 * CAP_MB
    assert big - small <= 2 * CAP_MB + 4  # a few MiB of allocator slack
