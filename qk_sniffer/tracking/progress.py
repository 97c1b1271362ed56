"""The terminal progress bar of a capture: examples done (of how many, when the config says), tokens done
and tokens per second. Silent unless stderr is a terminal, so logs and pipes stay clean."""

from __future__ import annotations

import sys
import time
from typing import Any

from ..core.config import DatasetConfig
from ..inputs.data import Batch


def expected_examples(dataset: DatasetConfig) -> int | None:
    """Examples this shard will see when the config alone says so (for the bar's ETA); else None."""
    limit = dataset.num_examples if dataset.path == "synthetic" else dataset.max_samples
    if limit is None:
        return None
    return len(range(dataset.shard_index, limit, dataset.num_shards))


class ProgressBar:
    """A tqdm bar over examples, with the tokens captured so far and their rate, and an ETA when the example
    count is known. Started at the first batch, so model loading does not skew the rate."""

    def __init__(self, enabled: bool, total_examples: int | None) -> None:
        self._enabled = enabled and sys.stderr.isatty()
        self._total = total_examples
        self._bar: Any = None
        self._tokens = 0
        self._started = 0.0

    def update(self, batch: Batch, wall_s: float) -> None:
        if not self._enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=self._total, unit="ex", desc="capture", dynamic_ncols=True)
            self._started = time.perf_counter() - wall_s
        self._tokens += batch.num_tokens
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        self._bar.set_postfix_str(f"{self._tokens:,} tok, {self._tokens / elapsed:,.0f} tok/s", refresh=False)
        self._bar.update(len(batch.examples))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
