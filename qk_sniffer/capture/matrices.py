"""Which measured support matrix a transformers release uses.

Each matrix records the release it was measured on (``make sweep``). ``resources/families.json`` is the
newest one (the docs and the README show it); other releases' matrices, in the same format, are
``resources/families/<release>.json``. A run reads the matrix of the installed release, or of the nearest
older release measured; on a release never measured, :mod:`.probe` checks each family on a tiny model of
its own before the real weights load, and the metadata says which matrix was used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from packaging.version import Version

from . import backend_facts

MATRIX_PATH = Path(__file__).resolve().parent.parent / "resources" / "families.json"
RELEASE_MATRICES = MATRIX_PATH.parent / "families"


@dataclass(frozen=True)
class MatrixChoice:
    """The matrix a release uses: its own, or the nearest older one measured."""

    installed: str
    measured_on: str
    path: Path

    @property
    def measured_here(self) -> bool:
        return Version(self.measured_on) == Version(self.installed)


def measured_releases() -> dict[str, Path]:
    """Every release a shipped matrix was measured on -> its file."""
    found = {path.stem: path for path in sorted(RELEASE_MATRICES.glob("*.json"))}
    found[json.loads(MATRIX_PATH.read_text())["transformers"]] = MATRIX_PATH
    return found


def matrix_choice(release: str | None = None) -> MatrixChoice:
    """The matrix for ``release`` (default: the installed one): its own, else the nearest older one
    measured, else (a release older than every matrix) the oldest. Not cached: a glob and one small read."""
    release = release or backend_facts.installed_release()
    measured = measured_releases()
    older = [r for r in measured if Version(r) <= Version(release)]
    chosen = max(older, key=Version) if older else min(measured, key=Version)
    return MatrixChoice(release, chosen, measured[chosen])


def matrix_file_for(release: str) -> Path:
    """Where a matrix measured on ``release`` is written: onto ``families.json`` when no shipped matrix is
    newer (it becomes the one the docs show), else into ``families/<release>.json``."""
    newest = json.loads(MATRIX_PATH.read_text())["transformers"]
    if Version(release) >= Version(newest):
        return MATRIX_PATH
    return RELEASE_MATRICES / f"{release}.json"
