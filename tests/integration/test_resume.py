"""Crash safety: kill -9 midway, run the same command again, get exactly the rows of an uninterrupted run."""

from __future__ import annotations

import shutil
import signal

from helpers import compose_cfg, read_configs, rows, start_cli, start_to_interrupt

from qk_sniffer.pipeline.runner import run
from qk_sniffer.store.manifest import Manifest


def test_kill_9_midway_then_rerun_equals_an_uninterrupted_run(tmp_path):
    out, ref = tmp_path / "out", tmp_path / "ref"
    proc, args = start_to_interrupt(tmp_path, 3)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done = Manifest(out)
    committed = {i for c in done.commits for g in c.groups for i, *_ in g["examples"]}
    assert 0 < len(committed) < 160
    # The manifest claims only files that are on disk.
    assert all((out / p).exists() for p in done.referenced())
    # What a kill can leave: a half-written temp file, and a whole part file written but never committed.
    some_part = out / sorted(done.referenced())[0]
    (some_part.parent / (some_part.name + ".tmp")).write_bytes(b"PAR1 half a file")
    run_id = next(iter({c.run for c in done.commits}))
    shutil.copy(some_part, some_part.parent / f"part-000-{run_id}-99999.parquet")

    again = start_cli(args, tmp_path)
    stdout, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr

    # The rerun processed exactly the examples the killed run had not committed.
    resumed = {
        i for c in Manifest(out).commits if c.run != run_id for g in c.groups for i, *_ in g["examples"]
    }
    assert resumed == set(range(160)) - committed

    run(compose_cfg([a.replace(str(out), str(ref)) for a in args]))
    assert rows(out) == rows(ref)  # none lost, none twice, exact vectors
    assert not list(out.rglob("*.tmp"))
    assert {p.relative_to(out).as_posix() for p in out.glob("l*/*")} == Manifest(out).referenced()
    assert {n: t.num_rows for n, t in read_configs(out).items()} == {
        n: t.num_rows for n, t in read_configs(ref).items()
    }
