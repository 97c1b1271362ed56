"""What the command-line entry points share: how user errors are shown, and the dir a command works on."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..core.errors import UserError
from ..store import Store


@contextmanager
def report_user_errors() -> Iterator[None]:
    """A UserError becomes one message on stderr and its exit code (2; 128+N for signal N), no traceback."""
    try:
        yield
    except UserError as exc:
        print(f"qk_sniffer: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


def capture_dir(value: str | None, command: str) -> Store:
    """The store of an existing capture dir named by ``output.dir``, for the commands that work on one."""
    if not value:
        raise UserError(f"output.dir is required: python -m {command} output.dir=PATH")
    root = Path(value).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"output.dir={value!r} does not exist or is not a directory")
    store = Store(root)
    if not store.claimed():
        store.check_accountable()  # says why: no manifest, a stray qk_sniffer.json, or not a capture
    return store
