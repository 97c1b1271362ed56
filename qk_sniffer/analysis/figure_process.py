"""The figures' own process (``python -m qk_sniffer.analysis.figure_process``, started by the run).

It imports matplotlib and the drawing code on another core while the main process loads torch and
captures, then draws when asked, once the run's rows are committed: the half second of imports leaves the
run's critical path. What it logs is sent back and logged by the run. When the helper is gone (it crashed,
or could not start), the run draws in its own process, as :func:`.figures.render_after_run` always did.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..core.child import Helper, LogRecords, Message, log_in_parent, serve, take
from .figures import render_after_run

FIGURE_PROCESS = "qk_sniffer.analysis.figure_process"


class FigureDrawer:
    """The run's side: :meth:`draw` the figures of a dir (in the helper), :meth:`close` when done."""

    def __init__(self, helper: Helper | None) -> None:
        self._helper = helper

    def draw(self, root: Path) -> None:
        if self._helper is not None and self._helper.send({"draw": str(root)}):
            reply = self._helper.receive()
            if reply is not None:
                log_in_parent(reply.get("records", []))
                return
        self.close()  # the helper is gone: draw here
        render_after_run(root)

    def close(self) -> None:
        helper, self._helper = self._helper, None
        if helper is not None:
            helper.close(wait=False)


def start_drawer() -> FigureDrawer:
    """A drawer whose helper was started early by the command, or starts now."""
    return FigureDrawer(take(FIGURE_PROCESS))


def main() -> None:
    from . import numbers, plots  # noqa: F401 - imported now, while the capture runs, not when asked

    records = LogRecords()
    package = logging.getLogger("qk_sniffer")
    package.addHandler(records)
    package.setLevel(logging.INFO)
    package.propagate = False  # the run logs them, in its own format and log file

    def handle(message: Message) -> list[Message]:
        if "draw" not in message:
            return []
        render_after_run(Path(message["draw"]))
        return [{"records": records.take()}]

    serve(handle, lambda: [])


if __name__ == "__main__":
    main()
