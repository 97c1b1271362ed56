"""What the command-line entry points share: where the configs live, and how user errors are shown."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

# conf/ sits next to the package in the repository (installs are editable, see the Makefile).
CONFIG_DIR = (Path(__file__).resolve().parent.parent / "conf").resolve()


@contextmanager
def report_user_errors() -> Iterator[None]:
    """A UserError becomes one message on stderr and its exit code (2; 128+N for signal N), no traceback."""
    try:
        yield
    except UserError as exc:
        print(f"qk_sniffer: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
