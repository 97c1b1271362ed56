"""A second drawer inside the figure helper: a fork of it, made once its imports are done.

Two helper processes would each import matplotlib, numpy and pyarrow (half a second of CPU each) while the
run imports torch on the same cores: measured on 2 cores, the second helper's start delayed the run's own
imports by 0.2 s. A fork made after the imports shares them (copy on write) and still draws on a core of
its own.

A fork copies only the thread that makes it: a lock another thread held would stay held in the copy
forever. So the partner is forked only while the helper runs a single thread, before the helper starts its
own (:func:`quiet_libraries` keeps numpy's BLAS and Arrow's allocator from starting any), and only on Linux,
where the kernel says how many threads a process has. Anywhere else the helper draws alone.

The partner reads requests and writes replies as JSON lines on two pipes of its own. It holds no end of the
run's pipes (the run learns a helper is gone from the end of its replies), and it exits when the helper's
end of its requests closes: the helper ended, however it ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

from ..core.child import Message

TASKS = Path("/proc/self/task")
READY = {"ready": True}


def quiet_libraries() -> None:
    """Before numpy and pyarrow are imported: no threads of their own (BLAS is held to one thread while
    the aggregates run anyway; Arrow's jemalloc would start a background thread)."""
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    os.environ.setdefault("JE_ARROW_MALLOC_CONF", "background_thread:false")


def can_fork() -> bool:
    """Linux, and this process runs one thread."""
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return False
    try:
        return len(os.listdir(TASKS)) == 1
    except OSError:
        return False


class Partner:
    """The helper's side of a forked drawer; :meth:`ask`, then :meth:`answer`."""

    def __init__(self, requests: IO[str], replies: IO[str], pid: int) -> None:
        self._requests, self._replies, self.pid = requests, replies, pid

    def ask(self, message: Message) -> bool:
        """Send ``message``; False when the partner is gone."""
        try:
            self._requests.write(json.dumps(message) + "\n")
            self._requests.flush()
        except (OSError, ValueError):
            return False
        return True

    def answer(self) -> Message | None:
        """The reply to the last message; None when the partner is gone (it died, or replied garbage)."""
        try:
            reply = json.loads(self._replies.readline())
        except (OSError, ValueError):
            return None
        return reply if isinstance(reply, dict) else None

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._requests.close()
        with contextlib.suppress(OSError, ValueError):
            self._replies.close()
        with contextlib.suppress(OSError):
            os.waitpid(self.pid, 0)


def fork_partner(handle: Callable[[Message], Message], inherited: list[int]) -> Partner | None:
    """Fork a partner that answers each request with ``handle(request)``; None where :func:`can_fork` says
    no. ``inherited``: this process's file descriptors the partner must not hold (the run's pipes)."""
    if not can_fork():
        return None
    from_helper, to_partner = os.pipe()  # requests
    from_partner, to_helper = os.pipe()  # replies
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the partner: never returns
        os.close(to_partner)
        os.close(from_partner)
        _serve(handle, from_helper, to_helper, inherited)
    os.close(from_helper)
    os.close(to_helper)
    requests = os.fdopen(to_partner, "w", encoding="utf-8")
    replies = os.fdopen(from_partner, "r", encoding="utf-8")
    partner = Partner(requests, replies, pid)
    if partner.answer() != READY:  # it died before it let go of the run's pipes
        partner.close()
        return None
    return partner


def _serve(
    handle: Callable[[Message], Message], requests_fd: int, replies_fd: int, inherited: list[int]
) -> None:
    status = 1
    try:
        for fd in inherited:
            with contextlib.suppress(OSError):
                os.close(fd)
        with (
            os.fdopen(requests_fd, "r", encoding="utf-8") as requests,
            os.fdopen(replies_fd, "w", encoding="utf-8") as replies,
        ):
            # Said once the run's pipes are let go: from then on the helper's end alone tells the run that
            # the helper is gone.
            replies.write(json.dumps(READY) + "\n")
            replies.flush()
            for line in requests:
                replies.write(json.dumps(handle(json.loads(line))) + "\n")
                replies.flush()
        status = 0
    finally:
        os._exit(status)  # no exit handlers: they belong to the helper this is a copy of
