"""The run's helper processes (qk_sniffer.core.child): the figures drawn in one, what it logs logged by the
run, the run drawing itself when the helper is gone, Ctrl-C left to the run, and no helper outliving the
process that started it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers import compose_cfg

from qk_sniffer.analysis.figure_process import COST, FIGURE_PROCESS, FigureDrawer, share_cost, shares
from qk_sniffer.analysis.figures import FIGURE_NAMES, NEEDS, current_figures
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


def test_the_figures_are_drawn_in_the_helpers_a_share_each(capture_dir, caplog):
    helpers = [Helper(FIGURE_PROCESS), Helper(FIGURE_PROCESS)]
    drawer = FigureDrawer(list(helpers))
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
    assert all(_gone(helper._process.pid) for helper in helpers)


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().split(") ")[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _ready(helper: Helper, capture_dir) -> int:
    """Wait until the helper serves (its partner forked by then); returns the partner's pid."""
    assert helper.send({"draw": str(capture_dir), "parts": {}, "layout": {}, "names": []})
    assert helper.receive() is not None
    (partner,) = _children(helper._process.pid)
    return partner


@pytest.mark.skipif(not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2, reason="Linux, 2 CPUs")
def test_one_helper_draws_with_a_forked_partner_that_ends_with_it(capture_dir):
    """On Linux the run starts one figure helper; it forks a partner after its imports, and the two draw a
    share each. The partner holds none of the run's pipes and ends when the helper does."""
    for png in (capture_dir / "figures").glob("*.png"):
        png.unlink()
    helper = Helper(FIGURE_PROCESS)
    partner = _ready(helper, capture_dir)
    # The partner holds no end of the two pipes between the run and the helper (its requests, its replies).
    ends = (helper._process.stdin.fileno(), helper._process.stdout.fileno())
    run_pipes = {os.readlink(f"/proc/self/fd/{fd}") for fd in ends}
    assert all(pipe.startswith("pipe:") for pipe in run_pipes)
    partner_files = {os.readlink(f"/proc/{partner}/fd/{fd}") for fd in os.listdir(f"/proc/{partner}/fd")}
    assert not run_pipes & partner_files
    before = _cpu_ticks(partner)
    FigureDrawer([helper]).draw(capture_dir)
    assert len(current_figures(capture_dir)) == 5
    assert _cpu_ticks(partner) > before, "the partner drew nothing"
    helper.close(wait=True)
    assert _gone(partner)


@pytest.mark.skipif(not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2, reason="Linux, 2 CPUs")
def test_a_partner_gone_leaves_its_share_to_the_helper_and_a_helper_gone_ends_its_partner(capture_dir):
    for png in (capture_dir / "figures").glob("*.png"):
        png.unlink()
    helper = Helper(FIGURE_PROCESS)
    os.kill(_ready(helper, capture_dir), signal.SIGKILL)
    drawer = FigureDrawer([helper])
    drawer.draw(capture_dir)
    assert len(current_figures(capture_dir)) == 5
    assert _children(helper._process.pid) == [], "a killed partner was not reaped"
    drawer.close()

    for png in (capture_dir / "figures").glob("*.png"):
        png.unlink()
    helper = Helper(FIGURE_PROCESS)
    partner = _ready(helper, capture_dir)
    helper._process.kill()
    start = time.monotonic()
    FigureDrawer([helper]).draw(capture_dir)  # the run learns at once that it is gone, and draws itself
    assert time.monotonic() - start < 20
    assert len(current_figures(capture_dir)) == 5
    assert _gone(partner)


def test_the_partner_is_forked_only_from_a_single_threaded_process():
    script = (
        "import threading, time\n"
        "from qk_sniffer.analysis.draw_partner import can_fork, fork_partner\n"
        "print(can_fork())\n"
        "threading.Thread(target=time.sleep, args=(2,), daemon=True).start()\n"
        "print(can_fork(), fork_partner(lambda m: m, []))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    linux = sys.platform.startswith("linux")
    assert proc.stdout.split() == [str(linux), "False", "None"], proc.stderr


def test_shares_cover_every_figure_and_keep_the_dearest_share_cheap():
    for rows in (0, 100_000, 10_000_000):
        split = shares(FIGURE_NAMES, 2, rows)
        assert sorted(name for share in split for name in share) == sorted(FIGURE_NAMES)
        dearest = max(share_cost(share, rows) for share in split)
        # No figure moved to the other share makes the dearest one cheaper.
        for i, share in enumerate(split):
            for name in share:
                moved = [
                    [n for n in s if n != name] + ([name] if j != i else []) for j, s in enumerate(split)
                ]
                assert max(share_cost(s, rows) for s in moved) >= dearest
    assert shares(FIGURE_NAMES, 1) == [list(FIGURE_NAMES)]
    # With many rows the aggregates dominate: the logit figure and the norm figures are drawn apart, so no
    # share computes both.
    assert all(
        not ({"norms", "logits"} <= {NEEDS[name] for name in share})
        for share in shares(FIGURE_NAMES, 2, 10**7)
    )
    assert share_cost(["coverage"], 10**7) == COST["coverage"]


def test_a_failure_to_draw_in_a_helper_is_logged_by_the_run(capture_dir, tmp_path, caplog):
    """The helper reads the rows the run names: a part gone since fails there, and the run says so."""
    broken = tmp_path / "broken"
    shutil.copytree(capture_dir, broken)
    for png in (broken / "figures").glob("*"):
        png.unlink()
    victim = next(broken.glob("l00h00q/*.parquet"))
    victim.write_bytes(b"not parquet")
    drawer = FigureDrawer([Helper(FIGURE_PROCESS)])
    with caplog.at_level(logging.WARNING, logger="qk_sniffer"):
        drawer.draw(broken)
    drawer.close()
    [message] = caplog.messages
    assert message.startswith("drawing the figures failed (")
    assert f"redraw them with: python -m qk_sniffer.report output.dir={broken}" in message
    assert current_figures(broken) == []


def test_the_run_draws_itself_when_the_helper_is_gone(capture_dir, caplog):
    for png in (capture_dir / "figures").glob("*.png"):
        png.unlink()
    helper = Helper(FIGURE_PROCESS)
    helper._process.kill()
    helper._process.wait()
    with caplog.at_level(logging.INFO, logger="qk_sniffer"):
        FigureDrawer([helper]).draw(capture_dir)
    assert len(current_figures(capture_dir)) == 5
    assert caplog.messages[-1].startswith("figures: rows_per_bucket.png")


def test_ctrl_c_is_the_runs_to_handle_not_the_helpers(capture_dir):
    helper = Helper(FIGURE_PROCESS)
    # Into its loop (a reply proves it), past where it starts ignoring SIGINT: a sleep was not enough on a
    # loaded machine. (The terminal's Ctrl-C never reaches it at all: it runs in a session of its own.)
    assert helper.send({"draw": str(capture_dir), "parts": {}, "layout": {}, "names": []})
    assert helper.receive() is not None
    os.kill(helper._process.pid, signal.SIGINT)
    assert helper.send({"hello": 1})
    helper.close(wait=True)
    assert helper.returncode == 0, "the helper died of the SIGINT"


SLOW_HELPER = """
import time
from qk_sniffer.core.child import become_helper, serve
replies = become_helper()
seen = []
def handle(message):
    if not seen:
        time.sleep(3)  # as W&B's start online: the run goes on writing meanwhile
    seen.append(message)
    return [{"count": len(seen)}] if message.get("last") else []
serve(replies, handle, lambda: [])
"""


def test_the_runs_writes_never_wait_on_a_slow_helper(tmp_path, monkeypatch):
    (tmp_path / "slow_helper.py").write_text(SLOW_HELPER)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    helper = Helper("slow_helper")
    message = {"log": {"x": "y" * 1000}}
    start = time.monotonic()
    for _ in range(2000):  # 2 MB: thirty times a pipe's buffer
        assert helper.send(message)
    assert time.monotonic() - start < 2.5, "the run waited on the helper"
    assert helper.send({"last": True})
    assert helper.receive() == {"count": 2001}
    helper.close()


def test_helpers_started_early_and_not_taken_are_ended():
    child.start_early(FIGURE_PROCESS, 2)
    helpers = list(child._started_early[FIGURE_PROCESS])
    assert len(helpers) == 2
    taken = child.take(FIGURE_PROCESS)
    child.drop_early()
    assert child._started_early == {}
    assert [helper.returncode for helper in helpers if helper is not taken] == [0]
    taken.close()


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


def test_every_figure_the_plots_can_draw_is_named(capture_dir):
    """FIGURE_NAMES (light, read by the run) and what plots.draw_all makes (matplotlib) are one list."""
    from qk_sniffer.analysis.figures import _layers, capture_layout
    from qk_sniffer.analysis.loading import committed_parts
    from qk_sniffer.analysis.numbers import aggregates, coverage
    from qk_sniffer.analysis.plots import draw_all

    layout, parts = capture_layout(capture_dir), committed_parts(capture_dir)
    norms, logits = aggregates(parts, layout)
    assert tuple(draw_all(norms, coverage(parts, layout), logits, _layers(layout))) == FIGURE_NAMES


def test_a_run_that_can_start_no_helper_draws_its_figures_itself(tmp_path, monkeypatch, caplog):
    def refuse(*args, **kwargs):
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(child.subprocess, "Popen", refuse)
    out = tmp_path / "out"
    overrides = [f"output.dir={out}", "dataset.max_samples=2", "report.enabled=true", "wandb.mode=offline"]
    with caplog.at_level(logging.INFO, logger="qk_sniffer"):
        result = run(compose_cfg(overrides))
    assert result.rows > 0
    assert len(current_figures(out)) == 5
    refusals = [m for m in caplog.messages if m.startswith("could not start a helper process")]
    why = "[Errno 11] Resource temporarily unavailable; the run does without it"
    assert refusals == [
        f"could not start a helper process (qk_sniffer.analysis.figure_helper): {why}",
        f"could not start a helper process (qk_sniffer.tracking.wandb_process): {why}",
    ]
