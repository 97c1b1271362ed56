"""Stopping a run cleanly: SIGINT/SIGTERM during capture finish the current batch and commit what is
complete (:class:`StopSignals`), then the run ends with :class:`RunInterrupted` (exit 128+N) naming what
was saved; the same command resumes."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from ..core.errors import UserError

log = logging.getLogger(__name__)


class RunInterrupted(UserError):
    """SIGINT/SIGTERM: everything complete was committed; the same command resumes."""

    def __init__(self, signum: int, out_dir: Path, committed: int) -> None:
        self.signum = signum
        # The shell convention for "ended by signal N", so schedulers see an interrupt, not a bad input.
        self.exit_code = 128 + signum
        super().__init__(
            f"interrupted by {signal.Signals(signum).name}: the {committed} examples this run completed are "
            f"saved and recorded in output.dir={str(out_dir)!r}; run the same command again to resume "
            "(completed examples are skipped)"
        )


class StopSignals:
    """During capture, SIGINT/SIGTERM ask the loop to stop after the current batch, so everything complete
    is flushed and committed before exiting. A second signal stops at once (committed rows stay valid)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python only allows handlers there
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        log.warning(
            "%s received: finishing the current batch and committing what is complete (send it again "
            "to stop at once)",
            signal.Signals(signum).name,
        )

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
