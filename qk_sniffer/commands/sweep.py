"""The end of a multirun (``-m``): one summary of its jobs, and one exit code for all of them.

A Hydra callback (``hydra.callbacks.sweep_summary`` in ``conf/config.yaml``). A job that is refused
(a user error) prints its message and returns a :class:`JobOutcome` instead of ending the sweep, so the
other jobs still run; the summary then lists every job, and the sweep exits 2 when any job failed.
Where the jobs write is :mod:`qk_sniffer.pipeline.sweep`'s.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from ..pipeline.sweep import swept_keys_of, swept_values


@dataclass(frozen=True)
class JobOutcome:
    """What one capture job of a sweep did: the rows it wrote, or the message that refused it."""

    output_dir: Path | None = None
    rows: int = 0
    examples: int = 0
    error: str | None = None


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.jobs: list[tuple[int, list[str], JobOutcome]] = []
        self.swept: set[str] = set()

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self.jobs = []
        self.swept = swept_keys_of(config)

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        num = OmegaConf.select(config, "hydra.job.num")
        if num is None:  # a single run: nothing to sum up
            return
        if job_return.status == JobStatus.COMPLETED and isinstance(job_return.return_value, JobOutcome):
            outcome = job_return.return_value
        else:
            outcome = JobOutcome(error="it crashed (its traceback is above)")
        self.jobs.append((int(num), swept_values(list(job_return.overrides or []), self.swept), outcome))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if not self.jobs:  # the jobs ran elsewhere (a cluster launcher): their logs say what they did
            return
        print(summary(self.jobs))
        failed = sum(o.error is not None for _, _, o in self.jobs)
        if failed:
            print(f"qk_sniffer: error: {failed} of {len(self.jobs)} jobs failed (see above)", file=sys.stderr)
            sys.exit(2)


def summary(jobs: list[tuple[int, list[str], JobOutcome]]) -> str:
    lines = [f"qk_sniffer: sweep of {len(jobs)} jobs:"]
    for num, overrides, outcome in sorted(jobs, key=lambda j: j[0]):
        what = " ".join(overrides) or "(no overrides)"
        if outcome.error is None:
            done = f"{outcome.rows} rows from {outcome.examples} examples in {outcome.output_dir}"
        else:
            done = f"failed: {outcome.error.splitlines()[0]}"
        lines.append(f"  job {num} [{what}]: {done}")
    return "\n".join(lines)
