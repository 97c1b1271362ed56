"""Helper processes spoken to in JSON lines, for the side work of a run (the W&B run, the figures).

Why processes and not threads: their imports (wandb, matplotlib) and their start (W&B's service) hold the
interpreter lock for about a second each, which a thread takes from the capture. A process of its own does
that work on another core while the main process loads torch and captures, and then answers at once.

The parent writes one JSON object per line to the helper's stdin and reads its replies, one per line, from
the helper's stdout. A helper keeps its stdout for replies alone (what its libraries print goes to stderr,
the terminal's), runs in a session of its own at a lower priority (the terminal's Ctrl-C is the run's,
which decides what an interrupt means and closes the pipe), and ends when its stdin does: the main process
crashing or being killed ends its helpers too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

Message = dict[str, Any]
log = logging.getLogger(__name__)

# Helpers started ahead of the run that will use them, by module: the command starts them before it
# imports torch, and the run takes them (or starts its own, e.g. when called from Python).
_started_early: dict[str, list[Helper]] = {}
# Helpers told to end and not waited for, kept until they have (a Popen dropped while its process runs warns).
_ending: list[Helper] = []


class Helper:
    """One helper process: ``python -m <module>``, which calls :func:`serve`."""

    def __init__(self, module: str) -> None:
        self.module = module
        # The helper imports the very qk_sniffer this process runs (a checkout put on sys.path, say); an
        # installed one is found where it is, and site-packages is not put ahead of anything.
        source = Path(__file__).resolve().parents[2]
        own = "" if source.name in ("site-packages", "dist-packages") else str(source)
        path = os.pathsep.join(p for p in (own, os.environ.get("PYTHONPATH")) if p)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | (
            {"PYTHONPATH": path} if path else {}
        )
        try:
            self._process: subprocess.Popen[str] | None = subprocess.Popen(
                [sys.executable, "-m", module],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                bufsize=1,  # line-buffered: each message leaves when it is written
                start_new_session=True,  # the terminal's Ctrl-C and Ctrl-Z are the run's, not its helpers'
            )
        except OSError as exc:  # no process to be had (a process limit, no memory): the run goes on
            log.warning("could not start a helper process (%s): %s; the run does without it", module, exc)
            self._process = None

    def send(self, message: Message) -> bool:
        """False when the helper is gone (it ended, crashed, never started): the caller goes on without it."""
        stdin = self._process.stdin if self._process is not None else None
        if stdin is None or stdin.closed:
            return False
        try:
            stdin.write(json.dumps(message, default=_plain) + "\n")
            stdin.flush()
        except (OSError, ValueError):  # a broken pipe: the helper ended
            return False
        return True

    def receive(self) -> Message | None:
        """The helper's next reply; None when it has ended without one."""
        stdout = self._process.stdout if self._process is not None else None
        line = stdout.readline() if stdout is not None else ""
        if not line:
            return None
        try:
            reply = json.loads(line)
        except ValueError:
            return None
        return reply if isinstance(reply, dict) else None

    @property
    def returncode(self) -> int | None:
        """Its exit status once it ended and was waited for (None while it runs, or if it never started)."""
        return self._process.returncode if self._process is not None else None

    def close(self, wait: bool = True) -> list[Message]:
        """End the helper (it sees its stdin end). ``wait``: for it to exit, returning the replies it had
        left; else it exits on its own while this process goes on (its work is done: what remains is the
        interpreter's teardown, a tenth of a second or more that nobody needs to wait for)."""
        if self._process is None:
            return []
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):  # a broken pipe: it ended already
                self._process.stdin.close()
        if not wait:
            _ending[:] = [h for h in _ending if h._process is not None and h._process.poll() is None] + [self]
            return []
        left = []
        while (reply := self.receive()) is not None:
            left.append(reply)
        self._process.wait()
        return left


def _plain(value: Any) -> Any:
    """numpy numbers as the Python numbers they hold (W&B charts them as numbers, not text)."""
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


def start_early(module: str, count: int = 1) -> None:
    """Have ``count`` helpers of ``module`` started now, for a run that will :func:`take` them."""
    started = _started_early.setdefault(module, [])
    started += [Helper(module) for _ in range(count - len(started))]


def take(module: str) -> Helper:
    """A helper of ``module`` started early, else a new one."""
    started = _started_early.get(module)
    return started.pop() if started else Helper(module)


def drop_early() -> None:
    """End helpers started early that no run took (the run stopped before it needed them)."""
    while _started_early:
        _, helpers = _started_early.popitem()
        for helper in helpers:
            helper.close()


# ------------------------------------------------------------------------------------------ the helper's side


def become_helper() -> TextIO:
    """The first thing a helper does: yield the CPU to the run (the helper's work is never the run's
    critical path, unless the run waits for it, and then the CPU is free), ignore Ctrl-C, and keep stdout
    for replies alone (what its libraries print goes to stderr). Returns the replies' stream."""
    with contextlib.suppress(OSError, AttributeError):  # not permitted, or not POSIX: same priority
        os.nice(10)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return replies


def serve(
    replies: TextIO, handle: Callable[[Message], Iterable[Message]], end: Callable[[], Iterable[Message]]
) -> None:
    """The helper's loop: ``handle`` each message, write its replies; ``end`` when stdin ends. A thread
    reads stdin all along, so the run's writes never wait on a pipe filled while ``handle`` is slow (W&B's
    start online can take many seconds, during which the capture goes on logging)."""
    inbox: queue.SimpleQueue[Message | None] = queue.SimpleQueue()

    def read() -> None:
        for message in _messages(sys.stdin):
            inbox.put(message)
        inbox.put(None)

    threading.Thread(target=read, name="helper-stdin", daemon=True).start()
    while (message := inbox.get()) is not None:
        for reply in handle(message):
            _write(replies, reply)
    for reply in end():
        _write(replies, reply)
    with contextlib.suppress(OSError):  # the parent is gone (interrupted): what is unsent goes nowhere
        replies.close()


def _messages(lines: Iterable[str]) -> Iterator[Message]:
    for line in lines:
        with contextlib.suppress(ValueError):
            message = json.loads(line)
            if isinstance(message, dict):
                yield message


def _write(replies: Any, reply: Message) -> None:
    with contextlib.suppress(OSError):  # the parent is gone: nobody to tell
        replies.write(json.dumps(reply, default=_plain) + "\n")


class LogRecords(logging.Handler):
    """The log records some work emits, kept as plain data to log again elsewhere: a helper's, sent to the
    run that logs them as its own; a dry run's, remembered with its plan."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[Message] = []

    @classmethod
    @contextlib.contextmanager
    def attached(cls, logger: str) -> Iterator[LogRecords]:
        """Collect what ``logger`` (and its children) log inside the block; they are logged as usual too."""
        records = cls()
        target = logging.getLogger(logger)
        target.addHandler(records)
        try:
            yield records
        finally:
            target.removeHandler(records)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append({"logger": record.name, "level": record.levelno, "message": record.getMessage()})

    def take(self) -> list[Message]:
        records, self.records = self.records, []
        return records


def log_in_parent(records: Iterable[Message]) -> None:
    """Log records kept by :class:`LogRecords` (a helper's, a remembered dry run's) in this process, to the
    same loggers, so Hydra's log file has them."""
    for record in records:
        logging.getLogger(str(record.get("logger", __name__))).log(
            int(record.get("level", logging.WARNING)), "%s", record.get("message", "")
        )
