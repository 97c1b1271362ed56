"""``python -m qk_sniffer`` ends with ``run_and_exit``: out without the interpreter's teardown, but only after
what a normal exit does that matters."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import atexit, sys, threading, time
    from concurrent.futures import ThreadPoolExecutor
    from qk_sniffer.commands.common import run_and_exit

    def main():
        atexit.register(lambda: open(sys.argv[1], "w").write("atexit ran"))
        pool = ThreadPoolExecutor(2)  # never shut down: its idle workers must not hold the exit
        pool.submit(print, "from a worker").result()
        late = threading.Thread(target=lambda: (time.sleep(0.3), print("a thread that is not a daemon")))
        late.start()  # still running when main returns: the exit waits for it
        print("buffered, not flushed")
        sys.exit(int(sys.argv[2]) if sys.argv[2].isdigit() else sys.argv[2])

    run_and_exit(main)
    """
)


def run(tmp_path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "marker"), code],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_exit_code_the_atexit_handlers_threads_and_buffered_output_survive(tmp_path):
    proc = run(tmp_path, "3")
    assert proc.returncode == 3
    assert (tmp_path / "marker").read_text() == "atexit ran"
    assert proc.stdout.splitlines() == [
        "from a worker",
        "buffered, not flushed",
        "a thread that is not a daemon",
    ]


def test_a_message_as_exit_code_is_printed_and_exits_1_as_the_interpreter_does(tmp_path):
    proc = run(tmp_path, "stopped: a reason")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "stopped: a reason"
