"""The run's helper processes: the W&B run (:mod:`qk_sniffer.tracking.wandb_process`) and the figures
(:mod:`qk_sniffer.analysis.figure_process`). Started as early as the config allows (the capture command
starts them before it imports torch), so that their imports and W&B's start happen on another core while
this process loads torch and captures; the run takes them when it needs them. Light to import on purpose.
"""

from __future__ import annotations

import os

from ..analysis.figure_process import FIGURE_PROCESS, helper_count
from ..core.child import drop_early, start_early
from ..core.config import Config
from ..core.errors import UserError
from ..tracking.wandb_run import WANDB_PROCESS, choose_mode, wandb_installed

__all__ = ["drop_early", "start_helpers"]


def start_helpers(cfg: Config) -> None:
    """Start the helpers this config's run will use (a bad value starts none: the run's check reports it)."""
    if cfg.report.enabled is True:
        start_early(FIGURE_PROCESS, helper_count())
    try:
        mode, _ = choose_mode(cfg.wandb.mode, os.environ)
    except UserError:
        return
    if mode != "disabled" and wandb_installed():
        start_early(WANDB_PROCESS)
