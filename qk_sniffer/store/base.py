"""What every part of the store shares: the dir it owns, its paths, its lock, and the one rule for
deleting (only files this tool made, only inside the dir)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..core.errors import UserError
from ..core.naming import CONFIG_NAME
from .layout import STATE, Paths, part_run
from .leases import maintenance_lock
from .manifest import Manifest


class StoreError(UserError):
    """The dir cannot be used as asked; the message names the file or key and what to do."""


class StoreBase:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths = Paths(root)
        # sha256 of the part files this object hashed itself, keyed by relative path, each with the
        # (size, mtime, inode, ctime) it had then: a second check in the same run (registration repeats
        # the start's under the lock) need not read every file again. Any write to a file changes its ctime.
        self.hashed: dict[str, list[Any]] = {}

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    @property
    def where(self) -> str:
        return f"output.dir={str(self.root)!r}"

    def claimed(self) -> bool:
        return self.paths.model.is_file()

    def manifest(self) -> Manifest:
        return Manifest(self.root)

    @contextmanager
    def maintenance(self) -> Iterator[None]:
        with maintenance_lock(self.paths):
            yield

    def write_error(self, what: str, exc: OSError, *, committed: bool = False) -> StoreError:
        kept = "the rows already committed are kept" if committed else "nothing of this run is claimed"
        return StoreError(
            f"{self.where}: cannot write {what}: {exc.strerror or exc} (errno {exc.errno}); {kept}. Free "
            "space or fix permissions, then run the same command again"
        )

    def _unlink(self, path: Path) -> None:
        """Delete a file only if it is one this tool names, inside the dir (never follows a symlink out)."""
        base = self.root.resolve()
        target = path.parent.resolve() / path.name
        if not target.is_relative_to(base) or target == base:
            raise RuntimeError(f"refusing to delete {str(target)!r}: outside {self.where}")
        parts = target.relative_to(base).parts
        ours = (len(parts) == 2 and CONFIG_NAME.match(parts[0]) and part_run(parts[1])) or parts[0] == STATE
        if not ours:
            raise RuntimeError(f"refusing to delete {str(target)!r}: not a file qk_sniffer made")
        target.unlink(missing_ok=True)


def shown(configs: list[str]) -> str:
    """At most four config names, then how many more."""
    return ", ".join(configs[:4]) + (f" and {len(configs) - 4} more" if len(configs) > 4 else "")
