"""The figure helper process (``python -m qk_sniffer.analysis.figure_helper``, started by the run).

It imports the drawing code while the run loads torch and captures, then draws what the run asks
(:class:`.figure_process.FigureDrawer`). Where it can, it forks a partner once its imports are done
(:mod:`.draw_partner`) and draws each request in two shares side by side. This module imports nothing heavy
itself: the libraries are told to start no threads of their own before anything imports them, so that the
fork copies a single-threaded process.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from ..core.child import LogRecords, Message, become_helper, serve
from ..core.imports import collector_paused
from .draw_partner import Partner, fork_partner, quiet_libraries


def draw_share(message: Message) -> list[str]:
    """Draw the figures a request of :meth:`.figure_process.FigureDrawer.write` names; returns those drawn."""
    from .figures import write_pngs
    from .loading import CommittedPart

    parts = {
        config: [CommittedPart(Path(path), int(rows), str(recipe)) for path, rows, recipe in files]
        for config, files in message["parts"].items()
    }
    return write_pngs(Path(message["draw"]), parts, message["layout"], message["names"])


def main() -> None:
    replies = become_helper()
    quiet_libraries()
    with collector_paused():
        # Imported now, while the capture runs, not when asked.
        from . import figures, numbers, plots  # noqa: F401
        from .figure_process import shares

    records = LogRecords()
    package = logging.getLogger("qk_sniffer")
    package.addHandler(records)
    package.setLevel(logging.INFO)
    package.propagate = False  # the run logs them, in its own format and log file

    def draw(message: Message) -> Message:
        try:
            drawn = draw_share(message)
        except Exception as exc:  # noqa: BLE001 - the run reports it, as a failure to draw there
            return {"error": str(exc), "records": records.take()}
        return {"drawn": drawn, "records": records.take()}

    # Forked before serve() starts its reader thread: the partner is a copy of a single-threaded process.
    partner: Partner | None = None
    if (os.cpu_count() or 1) >= 2:
        partner = fork_partner(draw, [sys.stdin.fileno(), replies.fileno()])

    def handle(message: Message) -> list[Message]:
        nonlocal partner
        if "draw" not in message:
            return []
        if partner is None or len(message["names"]) < 2:
            return [draw(message)]
        rows = sum(int(part[1]) for files in message["parts"].values() for part in files)
        mine, theirs = shares(message["names"], 2, rows)
        asked = partner.ask({**message, "names": theirs})
        answers = [draw({**message, "names": mine})]
        answer = partner.answer() if asked else None
        if answer is None:  # the partner is gone: its share is drawn here, and it is not asked again
            partner.close()
            partner = None
            answer = draw({**message, "names": theirs})
        return [_joined([*answers, answer])]

    try:
        serve(replies, handle, lambda: [])
    finally:
        if partner is not None:
            partner.close()


def _joined(answers: list[Message]) -> Message:
    """One reply for the shares of one request: every record; the names drawn, or the first error."""
    records = [record for answer in answers for record in answer.get("records", [])]
    errors = [answer["error"] for answer in answers if "error" in answer]
    if errors:
        return {"error": errors[0], "records": records}
    return {"drawn": [name for answer in answers for name in answer["drawn"]], "records": records}


if __name__ == "__main__":
    main()
