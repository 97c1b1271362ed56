"""What the command-line entry points share: the Hydra app around each command with the project's exit
codes, how user errors are shown, and the dir a command works on.

Exit codes: 0 done; 1 a crash (a bug: Hydra prints it), or ``verify`` finding damage; 2 any user error,
one ``qk_sniffer: error:`` line with no traceback (Hydra's own, such as an unknown key or group option,
included); 128+N a signal N (130 for Ctrl-C, wherever it lands: start-up included).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from ..core.config import CONF_DIR, unknown_keys
from ..core.errors import INTERRUPTED, UserError
from ..store import Store

USER_ERROR = UserError.exit_code
INTERRUPTED_EXIT = 128 + signal.SIGINT


@contextmanager
def report_user_errors() -> Iterator[None]:
    """A UserError becomes one message on stderr and its exit code (2; 128+N for signal N), no traceback;
    so does Ctrl-C."""
    try:
        yield
    except UserError as exc:
        print(f"qk_sniffer: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _interrupted()


def _interrupted() -> None:
    print(INTERRUPTED, file=sys.stderr)
    sys.exit(INTERRUPTED_EXIT)


def command(
    config_name: str, *, check_keys: bool = True
) -> Callable[[Callable[[Any], Any]], Callable[[], None]]:
    """``@hydra.main`` for a qk_sniffer command (``conf/<config_name>.yaml``), with the exit codes above.
    ``check_keys``: refuse keys the schema does not know before the command runs (the capture command
    lists them with every other problem of its config instead)."""
    import hydra

    def wrap(task: Callable[[Any], Any]) -> Callable[[], None]:
        entered = False

        @functools.wraps(task)
        def job(cfg: Any) -> Any:
            nonlocal entered
            entered = True
            if check_keys:
                with report_user_errors():
                    problems = unknown_keys(cfg)
                    if problems:
                        raise UserError("invalid configuration:\n  - " + "\n  - ".join(problems))
            return task(cfg)

        app = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)(job)

        @functools.wraps(task)
        def main() -> None:
            nonlocal entered
            entered = False  # per call: a process (a notebook, the tests) may call main more than once
            try:
                app()
            except KeyboardInterrupt:
                _interrupted()
            except SystemExit as exc:
                # Hydra reports a bad override, an unknown key or group option and exits 1, as it does for
                # a crash; before the command ran, it can only have been the command line.
                if exc.code == 1 and not entered:
                    sys.exit(USER_ERROR)
                raise

        return main

    return wrap


def run_and_exit(main: Callable[[], None]) -> NoReturn:
    """``main()`` as the whole life of a ``python -m`` process, then out without tearing the interpreter
    down: with torch and transformers loaded, Python's finalisation (freeing every module one by one) adds
    about a second to every command. What a normal exit does that matters happens first: the threads that
    are not daemons are stopped and joined, the atexit handlers run (logging's flush, W&B's teardown,
    temporary dirs), stdout and stderr are flushed. A crash keeps the normal path: its traceback, exit 1.
    The data never waits for this: parts and commits are fsynced when they are written."""
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    # The command is over (its data committed, its message printed): a Ctrl-C now would only put a
    # traceback from an exit hook under that message.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # As the interpreter's own exit does, in its order: threading's exit hooks (they tell idle executor
    # workers to stop), then a join of every thread that is not a daemon, then the atexit handlers.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing left to lose
            stream.flush()
    os._exit(code)


def _exit_code(code: object) -> int:
    """SystemExit's code as the interpreter turns it into a status: None 0, an int itself, else printed, 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def capture_dir(value: str | None, command: str) -> Store:
    """The store of an existing capture dir named by ``output.dir``, for the commands that work on one."""
    if not value:
        raise UserError(f"output.dir is required: python -m {command} output.dir=PATH")
    root = Path(value).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"output.dir={value!r} does not exist or is not a directory")
    store = Store(root)
    if not store.claimed():
        store.check_accountable()  # says why: empty, no manifest, a stray qk_sniffer.json, or not a capture
    return store
