"""The figures' own processes (``python -m qk_sniffer.analysis.figure_process``, started by the run).

Each imports matplotlib and the drawing code on another core while the main process loads torch and
captures; once the run's rows are committed, each draws a share of the figures (two helpers on a machine
with two CPUs or more: the main process only waits then, so drawing is what the end of a run costs). The run
itself decides which data they draw and writes the record of them (:func:`.figures.render_figures`), so the
figures stay one consistent set. When a helper is gone (it crashed, or could not start), the run draws its
share in its own process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ..core.child import Helper, LogRecords, Message, become_helper, log_in_parent, serve, take
from ..core.imports import collector_paused
from .figures import PngWriter, render_after_run, write_pngs
from .loading import CommittedPart

FIGURE_PROCESS = "qk_sniffer.analysis.figure_process"
# Seconds each figure took to build and save (2-core VM, a 4096-token sampler=all capture): the shares
# are balanced by them. Any figure not listed counts as the dearest.
COST = {
    "logit_vs_distance": 0.17,
    "mean_norm_by_layer_bucket": 0.15,
    "norm_vs_position": 0.14,
    "rows_per_bucket": 0.11,
    "coverage": 0.06,
}


def helper_count() -> int:
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def shares(names: Sequence[str], count: int) -> list[list[str]]:
    """``names`` in ``count`` shares of about equal cost (the dearest first, each to the cheapest share)."""
    split: list[list[str]] = [[] for _ in range(count)]
    loads = [0.0] * count
    for name in sorted(names, key=lambda n: -COST.get(n, max(COST.values()))):
        cheapest = loads.index(min(loads))
        split[cheapest].append(name)
        loads[cheapest] += COST.get(name, max(COST.values()))
    return split


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
        for helper, share in zip(self._helpers, shares(names, len(self._helpers)), strict=True):
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


def draw_share(message: Message) -> list[str]:
    """The helper's side of :meth:`FigureDrawer.write`."""
    parts = {
        config: [CommittedPart(Path(path), int(rows), str(recipe)) for path, rows, recipe in files]
        for config, files in message["parts"].items()
    }
    return write_pngs(Path(message["draw"]), parts, message["layout"], message["names"])


def main() -> None:
    replies = become_helper()
    with collector_paused():
        from . import numbers, plots  # noqa: F401 - imported now, while the capture runs, not when asked

    records = LogRecords()
    package = logging.getLogger("qk_sniffer")
    package.addHandler(records)
    package.setLevel(logging.INFO)
    package.propagate = False  # the run logs them, in its own format and log file

    def handle(message: Message) -> list[Message]:
        if "draw" not in message:
            return []
        try:
            drawn = draw_share(message)
        except Exception as exc:  # noqa: BLE001 - the run reports it, as a failure to draw there
            return [{"error": str(exc), "records": records.take()}]
        return [{"drawn": drawn, "records": records.take()}]

    serve(replies, handle, lambda: [])


__all__ = ["FIGURE_PROCESS", "FigureDrawer", "PngWriter", "start_drawer"]

if __name__ == "__main__":
    main()
