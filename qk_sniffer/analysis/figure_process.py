"""The run's side of the figures' own processes (:mod:`.figure_helper`, started by the run).

Each helper imports matplotlib and the drawing code on another core while the main process loads torch and
captures; once the run's rows are committed, the helpers draw the figures (on Linux one helper and the
partner it forks, :mod:`.draw_partner`; elsewhere two helpers on a machine with two CPUs or more), each a
share: the main process only waits then, so drawing is what the end of a run costs. The run itself decides
which data they draw and writes the record of them (:func:`.figures.render_figures`), so the figures stay
one consistent set. When a helper is gone (it crashed, or could not start), the run draws its share in its
own process.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ..core.child import Helper, log_in_parent, take
from .figures import NEEDS, PngWriter, render_after_run, write_pngs
from .loading import CommittedPart

FIGURE_PROCESS = "qk_sniffer.analysis.figure_helper"
# Seconds each figure took to build and save (2-core VM, a 4096-token sampler=all capture). Any figure not
# listed counts as the dearest.
COST = {
    "logit_vs_distance": 0.17,
    "mean_norm_by_layer_bucket": 0.15,
    "norm_vs_position": 0.14,
    "rows_per_bucket": 0.11,
    "coverage": 0.06,
}
# Seconds per million rows the aggregates a share's figures need (figures.NEEDS) take on one core (same VM).
AGGREGATE_COST = {
    frozenset(): 0.0,
    frozenset({"norms"}): 0.45,
    frozenset({"logits"}): 0.6,
    frozenset({"norms", "logits"}): 0.7,
}


def helper_count() -> int:
    """One helper where it can fork a partner to draw beside it (:mod:`.draw_partner`), else two on a
    machine with two CPUs or more."""
    if (os.cpu_count() or 1) < 2:
        return 1
    return 1 if sys.platform.startswith("linux") else 2


def share_cost(names: Sequence[str], rows: int) -> float:
    """Seconds to draw ``names`` from ``rows`` rows: each figure, and the aggregates they need once."""
    needs = frozenset(need for name in names if (need := NEEDS.get(name, "norms")) is not None)
    drawing = sum(COST.get(name, max(COST.values())) for name in names)
    return drawing + AGGREGATE_COST[needs] * rows / 1e6


def shares(names: Sequence[str], count: int, rows: int = 0) -> list[list[str]]:
    """``names`` in ``count`` shares, the dearest of which costs least (:func:`share_cost`): every way to
    split them is tried (count**len(names) ways: 32 for the five figures in two shares)."""
    best: tuple[float, list[list[str]]] | None = None
    for assignment in itertools.product(range(count), repeat=len(names)):
        split = [[n for n, s in zip(names, assignment, strict=True) if s == i] for i in range(count)]
        cost = max(share_cost(share, rows) for share in split)
        if best is None or cost < best[0]:
            best = (cost, split)
    return best[1] if best is not None else [[] for _ in range(count)]


class FigureDrawer:
    """The run's side: :meth:`draw` a dir's figures (in the helpers), :meth:`close` when done."""

    def __init__(self, helpers: list[Helper]) -> None:
        self._helpers = helpers

    def draw(self, root: Path) -> None:
        render_after_run(root, self.write if self._helpers else None)

    def write(
        self,
        root: Path,
        parts: dict[str, list[CommittedPart]],
        layout: dict[str, object],
        names: Sequence[str],
    ) -> list[str]:
        """A :data:`.figures.PngWriter`: each helper draws its share; a share whose helper is gone is drawn
        here. A figure that failed to draw fails the whole set (the run logs it, as for a drawing here)."""
        listing = {
            config: [[str(p.path), p.rows, p.recipe] for p in files] for config, files in parts.items()
        }
        asked = []
        rows = sum(p.rows for files in parts.values() for p in files)
        for helper, share in zip(self._helpers, shares(names, len(self._helpers), rows), strict=True):
            sent = helper.send({"draw": str(root), "parts": listing, "layout": layout, "names": share})
            asked.append((helper, share, sent))
        drawn: list[str] = []
        for helper, share, sent in asked:
            reply = helper.receive() if sent else None
            if reply is None:  # gone: this share is drawn here, and the helper is not asked again
                self._helpers.remove(helper)
                helper.close(wait=False)
                drawn += write_pngs(root, parts, layout, share)
                continue
            log_in_parent(reply.get("records", []))
            if "error" in reply:
                raise RuntimeError(reply["error"])
            drawn += reply["drawn"]
        return drawn

    def close(self) -> None:
        helpers, self._helpers = self._helpers, []
        for helper in helpers:
            helper.close(wait=False)


def start_drawer() -> FigureDrawer:
    """A drawer whose helpers were started early by the command, or start now."""
    return FigureDrawer([take(FIGURE_PROCESS) for _ in range(helper_count())])


__all__ = ["FIGURE_PROCESS", "FigureDrawer", "PngWriter", "start_drawer"]
