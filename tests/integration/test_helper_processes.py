"""The run's helper processes (qk_sniffer.core.child): the figures drawn in one, what it logs logged by the
run, the run drawing itself when the helper is gone, Ctrl-C left to the run, and no helper outliving the
process that started it."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import compose_cfg

from qk_sniffer.analysis.figure_process import FIGURE_PROCESS, FigureDrawer
from qk_sniffer.analysis.figures import current_figures
from qk_sniffer.core import child
from qk_sniffer.core.child import Helper
from qk_sniffer.pipeline.runner import run


@pytest.fixture(scope="module")
def capture_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("helpers") / "out"
    run(compose_cfg([f"output.dir={out}", "dataset.max_samples=2", "capture.layers=[0,1]"]))
    return out


def _gone(pid: int, within_s: float = 30.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie (exited, not yet reaped by its parent) counts as gone.
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split(") ")[1].startswith("Z"):
                return True
        time.sleep(0.05)
    return False


def test_the_figures_are_drawn_in_the_helper_and_its_log_is_the_runs(capture_dir, caplog):
    helper = Helper(FIGURE_PROCESS)
    drawer = FigureDrawer(helper)
    with caplog.at_level(logging.INFO, logger="qk_sniffer"):
        drawer.draw(capture_dir)
    drawn = current_figures(capture_dir)
    assert len(drawn) == 5 and all(p.stat().st_size > 0 for p in drawn)
    assert [r.name for r in caplog.records] == ["qk_sniffer.analysis.figures"]
    assert caplog.messages == ["figures: " + ", ".join(p.name for p in drawn)]
    # Asked again with nothing changed, it keeps them, and says so.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="qk_sniffer"):
        drawer.draw(capture_dir)
    assert caplog.messages == ["figures: current already (the data did not change)"]
    drawer.close()
    assert _gone(helper._process.pid)


def test_a_failure_to_draw_in_the_helper_is_logged_by_the_run(tmp_path, caplog):
    drawer = FigureDrawer(Helper(FIGURE_PROCESS))
    with caplog.at_level(logging.WARNING, logger="qk_sniffer"):
        drawer.draw(tmp_path / "missing")
    drawer.close()
    [message] = caplog.messages
    assert message.startswith("drawing the figures failed (output.dir=")
    assert "redraw them with: python -m qk_sniffer.report output.dir=" in message


def test_the_run_draws_itself_when_the_helper_is_gone(capture_dir, caplog):
    for png in (capture_dir / "figures").glob("*.png"):
        png.unlink()
    helper = Helper(FIGURE_PROCESS)
    helper._process.kill()
    helper._process.wait()
    with caplog.at_level(logging.INFO, logger="qk_sniffer"):
        FigureDrawer(helper).draw(capture_dir)
    assert len(current_figures(capture_dir)) == 5
    assert caplog.messages[-1].startswith("figures: rows_per_bucket.png")


def test_ctrl_c_is_the_runs_to_handle_not_the_helpers(capture_dir):
    helper = Helper(FIGURE_PROCESS)
    time.sleep(0.5)  # past its start, into its loop
    os.kill(helper._process.pid, signal.SIGINT)
    drawer = FigureDrawer(helper)
    assert helper.send({"draw": str(capture_dir)})
    assert helper.receive() is not None, "the helper died of the SIGINT"
    drawer.close()


def test_helpers_started_early_and_not_taken_are_ended():
    child.start_early(FIGURE_PROCESS)
    helper = child._started_early[FIGURE_PROCESS]
    child.drop_early()
    assert child._started_early == {}
    assert helper.returncode == 0


def test_no_helper_outlives_a_main_process_that_is_killed(tmp_path):
    """The main process dies without a word (kill -9, a crash): its helpers see their stdin end and exit."""
    script = (
        "import os, sys, json\n"
        "from qk_sniffer.core.child import Helper\n"
        "from qk_sniffer.tracking.wandb_run import WANDB_PROCESS\n"
        "from qk_sniffer.analysis.figure_process import FIGURE_PROCESS\n"
        "helpers = [Helper(FIGURE_PROCESS), Helper(WANDB_PROCESS)]\n"
        f"helpers[1].send({{'init': {{'mode': 'offline', 'project': 'qk', 'dir': {str(tmp_path)!r}}}}})\n"
        "print(json.dumps([h._process.pid for h in helpers]), flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    pids = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(_gone(pid) for pid in pids)
