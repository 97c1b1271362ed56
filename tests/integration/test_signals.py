"""SIGTERM/SIGINT stop cleanly and resumably; write failures are clear and never over-claimed."""

from __future__ import annotations

import errno
import signal
import time

import pytest
from helpers import compose_cfg, read_configs, rows, start_cli, start_to_interrupt

from qk_sniffer.core.errors import UserError
from qk_sniffer.pipeline.runner import run
from qk_sniffer.store import writer
from qk_sniffer.store.manifest import Manifest


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_commits_what_is_complete_exits_non_zero_and_resumes(tmp_path, sig):
    out, ref = tmp_path / "out", tmp_path / "ref"
    proc, args = start_to_interrupt(tmp_path, 2)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig
    assert f"interrupted by {sig.name}" in stderr and "run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    # Everything on disk is committed: no temp files, no part file the manifest does not name.
    manifest = Manifest(out)
    assert not list(out.rglob("*.tmp"))
    assert {p.relative_to(out).as_posix() for p in out.glob("l*/*")} == manifest.referenced()
    assert 0 < len(manifest.done(manifest.commits[0].recipe)) < 160

    run(compose_cfg(args))
    run(compose_cfg([a.replace(str(out), str(ref)) for a in args]))
    assert rows(out) == rows(ref)


def test_ctrl_c_during_start_up_is_one_message_and_writes_nothing(tmp_path):
    """Wherever Ctrl-C lands before the capture (imports, composing, loading the model or the data), the
    command ends with one line and exit 130, and leaves no dir behind."""
    # A child inherits an ignored SIGINT (a test run started in the background): give it Python's own.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = start_cli(
            ["dataset=synthetic", "dataset.num_examples=2", f"output.dir={tmp_path}/out"], tmp_path
        )
    finally:
        signal.signal(signal.SIGINT, inherited)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    # 130, or ended by SIGINT itself (a shell shows 130 for both) when it lands while modules load.
    assert proc.returncode in (128 + signal.SIGINT, -signal.SIGINT), stderr
    assert "Traceback" not in stderr, stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("qk_sniffer: error:")]
    assert "interrupted" in line and "run the same command again" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_disk_full_is_a_clear_error_and_the_manifest_claims_only_files_on_disk(tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_write = writer.write_part
    calls = {"n": 0}

    def fill_up(root, config, name, table):
        calls["n"] += 1
        if calls["n"] > 30:  # the third flush (12 configs per flush) finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device", str(root / config / name))
        return real_write(root, config, name, table)

    monkeypatch.setattr(writer, "write_part", fill_up)
    overrides = [f"output.dir={out}", "capture.layers=[0,1]", "output.flush_every_examples=2"]
    with pytest.raises(UserError) as err:
        run(compose_cfg(overrides))
    message = str(err.value)
    assert message.startswith(f"output.dir={str(out)!r}: cannot write l0")
    assert "No space left on device (errno 28)" in message and "run the same command again" in message
    manifest = Manifest(out)
    assert len(manifest.commits) == 2
    assert all((out / p).exists() for p in manifest.referenced())
    # Space is back: the same command resumes, and the dir ends as if nothing had happened.
    monkeypatch.setattr(writer, "write_part", real_write)
    run(compose_cfg(overrides))
    ref = tmp_path / "ref"
    run(compose_cfg([o.replace(str(out), str(ref)) for o in overrides]))
    assert rows(out) == rows(ref)
    assert {p.relative_to(out).as_posix() for p in out.glob("l*/*")} == Manifest(out).referenced()
    assert set(read_configs(out)) == set(read_configs(ref))


def test_an_unwritable_output_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match=r"output.dir=.*exists and is not a directory"):
        run(compose_cfg([f"output.dir={blocker}"]))
    with pytest.raises(UserError, match=r"output.dir=.*cannot be created: .* is not a directory"):
        run(compose_cfg([f"output.dir={blocker}/sub"]))
    assert blocker.read_text() == "not a directory"


class _InterruptedDrawer:
    """Ctrl-C lands while the figures are drawn (the run's last step, after the rows are committed)."""

    def draw(self, root) -> None:
        raise KeyboardInterrupt

    def close(self) -> None:
        pass


def test_ctrl_c_while_the_figures_draw_leaves_a_card_of_what_is_committed(tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr("qk_sniffer.pipeline.runner.start_drawer", _InterruptedDrawer)
    with pytest.raises(KeyboardInterrupt):
        run(compose_cfg([f"output.dir={out}", "report.enabled=true", "capture.layers=[0]"]))
    card = (out / "README.md").read_text()
    configs = read_configs(out)
    assert configs and all(f"config_name: {name}" in card for name in configs)
    assert "## Figures" not in card  # none were drawn
    assert rows(out)  # the committed rows stay, and load
