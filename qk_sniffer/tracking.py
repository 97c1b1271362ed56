"""Run tracking: a terminal progress bar, and (optionally) Weights & Biases."""

from __future__ import annotations

import sys
from typing import Any, Protocol

from .capture import Block
from .config import Config
from .data import Batch


class Tracker(Protocol):
    def batch(self, batch: Batch, step: dict[str, float], wall_s: float, buffer_bytes: int) -> None: ...

    def rows(self, blocks: list[Block]) -> None: ...

    def summary(self, result: Any, bytes_written: int) -> None: ...

    def finish(self) -> None: ...


class ProgressTracker:
    """A tqdm bar with tokens/s; silent when stderr is not a terminal."""

    def __init__(self, enabled: bool) -> None:
        from tqdm import tqdm

        self._bar = tqdm(unit="tok", unit_scale=True, disable=not (enabled and sys.stderr.isatty()))

    def batch(self, batch: Batch, step: dict[str, float], wall_s: float, buffer_bytes: int) -> None:
        self._bar.update(batch.num_tokens)

    def rows(self, blocks: list[Block]) -> None:
        pass

    def summary(self, result: Any, bytes_written: int) -> None:
        pass

    def finish(self) -> None:
        self._bar.close()


def make_tracker(cfg: Config, metadata: dict[str, Any]) -> Tracker:
    return ProgressTracker(cfg.tracking.progress)
