"""The W&B run's own process (``python -m qk_sniffer.tracking.wandb_process``, started by the run).

It imports wandb and starts the run on another core while the main process loads torch and captures
(together about a second of work that, on a thread, would hold the capture's interpreter lock), then applies
what the run sends, in the order sent: the run's settings, one history point per batch, the charts and the
figures on the last batch's step, the summary, the finish. A failure is sent back as a warning and W&B is
dropped for the rest of the run; the capture never depends on it. When the main process goes away without a
finish (a crash, a kill), its stdin ends and the W&B run is marked failed.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

from ..core.child import Message, become_helper, serve
from ..core.imports import collector_paused

# Replies are logged by the main process under this name (as the in-process tracker always did).
LOGGER = "qk_sniffer.tracking.wandb_run"
# The smallest chart data: building it once imports what the real charts need.
WARM_UP: dict[str, Any] = {
    name: {"columns": ["bucket", "rows"], "data": [["0", 0]]}
    for name in ("rows_per_bucket", "mean_norm", "mean_norm_heatmap")
} | {"figures": []}


class WandbReplay:
    """What the helper does with each message; ``wandb_module`` is wandb (a stand-in in the tests)."""

    def __init__(self, wandb_module: ModuleType | None) -> None:
        self.wandb = wandb_module
        self.run: Any = None

    def handle(self, message: Message) -> list[Message]:
        if "init" in message:
            return self._start(message["init"])
        replies = self._apply(message) if self.run is not None else []
        if "finish" in message:
            replies.append({"finished": True})  # the run's files are complete: the main process may go
        return replies

    def end(self) -> list[Message]:
        """stdin ended: without a finish first, the main process stopped early and the run failed."""
        run, self.run = self.run, None
        if run is not None:
            with contextlib.suppress(Exception):
                run.finish(exit_code=1)
        return []

    def _start(self, settings: dict[str, Any]) -> list[Message]:
        try:
            if self.wandb is None:
                self.wandb = importlib.import_module("wandb")
            # console="off": this process's own output is not the run's (the run's log is Hydra's file).
            self.run = self.wandb.init(**settings, settings=self.wandb.Settings(console="off"))
        except Exception as exc:  # noqa: BLE001 - tracking must never end a capture
            return [_warning(f"could not start W&B ({exc}); the capture goes on without it")]
        return []

    def _apply(self, message: Message) -> list[Message]:
        try:
            self._call(message)
        except Exception as exc:  # noqa: BLE001 - tracking must never end a capture
            run, self.run = self.run, None
            with contextlib.suppress(Exception):
                run.finish(exit_code=1)
            return [_warning(f"W&B logging failed ({exc}); the capture goes on without W&B")]
        return []

    def _call(self, message: Message) -> None:
        if "log" in message:
            self.run.log(message["log"], step=message["step"])
        elif "charts" in message:
            self.run.log(charts(self.wandb, message["charts"]), step=message["step"])
        elif "summary" in message:
            self.run.summary.update(message["summary"])
        elif "finish" in message:
            run, self.run = self.run, None
            run.finish(exit_code=int(message["finish"]))


def charts(wandb: Any, data: dict[str, Any]) -> dict[str, Any]:
    """The W&B objects for the tracker's chart data: tables, the rows-per-bucket bar chart, the figures."""
    bucket_rows = wandb.Table(**data["rows_per_bucket"])
    return {
        "charts/rows_per_bucket": wandb.plot.bar(bucket_rows, "bucket", "rows", title="Rows per bucket"),
        "tables/rows_per_bucket": bucket_rows,
        "tables/mean_norm": wandb.Table(**data["mean_norm"]),
        "tables/mean_norm_heatmap": wandb.Table(**data["mean_norm_heatmap"]),
        **{f"figures/{Path(path).stem}": wandb.Image(path) for path in data["figures"]},
    }


def _warning(text: str) -> Message:
    return {"logger": LOGGER, "level": logging.WARNING, "message": text}


def main() -> None:
    replies = become_helper()
    # Everything that does not need the run's settings, now, while the main process imports torch: wandb,
    # its service (setup), and what the charts need the first time (tables import pandas; images, PIL).
    wandb: ModuleType | None = None
    try:
        with collector_paused():
            module = importlib.import_module("wandb")
            importlib.import_module("PIL.Image")
        module.setup()
        charts(module, WARM_UP)
        wandb = module
    except Exception:  # noqa: BLE001 - init is tried again when the settings come, and reports what fails
        pass
    replay = WandbReplay(wandb)
    serve(replies, replay.handle, replay.end)


if __name__ == "__main__":
    main()
