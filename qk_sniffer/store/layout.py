"""Every path and file-name pattern of an output dir, named once.

::

    <output.dir>/
      README.md                      the dataset card (written by the publish layer)
      qk_sniffer.json                the run metadata (written by the publish layer)
      figures/<name>.png             the report's figures (written by the report)
      l{LL}h{HH}{q|k}/part-*.parquet one dataset config per (layer, head, kind): the part files
      .qk_sniffer/                   the manifest (hidden, so never a dataset config)
        model.json                   the one model this dir belongs to            (travels with the Hub)
        recipes/<rid>.json           capture recipes, by id                       (travels with the Hub)
        commits/<rid>/<name>.json    one per durable flush: its files and examples (travels with the Hub)
        runs/<run>.lock              a writer's lease, flock-ed for its whole life (this machine's own)
        verified.json                cache of file hashes already checked          (this machine's own)
        maintenance.lock             serialises changes to existing commits         (this machine's own)
      .qk_sniffer_hub.json           what the last Hub sync of this dir knew       (this machine's own)
      .qk_sniffer_pull/              scratch space for a pull                      (this machine's own)

Part files are named ``part-<tag>-<run>-<seq>.parquet``: ``<run>`` is the id of the run that wrote it,
which is how a killed run's leftovers are told from a live run's files in flight.
"""

from __future__ import annotations

import re
from pathlib import Path

CARD = "README.md"
METADATA = "qk_sniffer.json"
FIGURES = "figures"
STATE = ".qk_sniffer"
HUB_SYNC = ".qk_sniffer_hub.json"
HUB_PULL = ".qk_sniffer_pull"
TMP_SUFFIX = ".tmp"

PART_NAME = re.compile(r"^part-([A-Za-z0-9]+)-([0-9a-f]+)-([A-Za-z0-9]+)\.parquet$")
# A part file as a path relative to the dir.
PART_PATH = re.compile(r"^(l\d+h\d+[qk])/(part-[A-Za-z0-9]+-[0-9a-f]+-[A-Za-z0-9]+\.parquet)$")
# The manifest files that travel with the part files (Hub push and pull).
SHARED_STATE = re.compile(r"^\.qk_sniffer/(?:model\.json|recipes/[^/]+\.json|commits/[^/]+/[^/]+\.json)$")
FIGURE_PATH = re.compile(r"^figures/(?:[A-Za-z0-9_.-]+\.png|figures\.json)$")
# Names at the top of a dir that this tool writes; anything else there is the user's and is left alone.
TOP_LEVEL = (CARD, METADATA, FIGURES, STATE, HUB_SYNC, HUB_PULL)


def part_name(tag: str, run: str, seq: str) -> str:
    return f"part-{tag}-{run}-{seq}.parquet"


def part_run(name: str) -> str | None:
    """The run that wrote a part file (or its temporary file), from its name."""
    match = PART_NAME.match(name.removesuffix(TMP_SUFFIX))
    return match[2] if match else None


class Paths:
    """The paths of one output dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / STATE
        self.model = self.state / "model.json"
        self.recipes = self.state / "recipes"
        self.commits = self.state / "commits"
        self.runs = self.state / "runs"
        self.verified = self.state / "verified.json"
        self.lock = self.state / "maintenance.lock"
        self.card = root / CARD
        self.metadata = root / METADATA
        self.figures = root / FIGURES
        self.hub_sync = root / HUB_SYNC
        self.hub_pull = root / HUB_PULL

    def recipe(self, rid: str) -> Path:
        return self.recipes / f"{rid}.json"

    def commit(self, rid: str, name: str) -> Path:
        return self.commits / rid / f"{name}.json"

    def run_lock(self, run: str) -> Path:
        return self.runs / f"{run}.lock"

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()
