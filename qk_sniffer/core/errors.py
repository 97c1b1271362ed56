"""The one exception type that means "the user asked for something we cannot do", and how Ctrl-C reads."""

from __future__ import annotations

import sys
from types import TracebackType


class UserError(Exception):
    """Bad input or environment. The CLI prints the message alone and exits non-zero, without a traceback."""

    exit_code = 2


INTERRUPTED = (
    "qk_sniffer: error: interrupted (Ctrl-C): what was committed before it is kept; run the same command "
    "again to go on"
)


def quiet_interrupts() -> None:
    """For a command's entry point, before it imports the rest: Ctrl-C while modules load ends with the one
    line a command prints for it, not an import traceback (the process still ends by SIGINT)."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            print(INTERRUPTED, file=sys.stderr)
        else:
            previous(kind, value, tb)

    sys.excepthook = hook
