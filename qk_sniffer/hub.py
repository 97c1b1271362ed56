"""Hugging Face Hub publishing (branch per model). Implemented in the publishing issue."""

from __future__ import annotations

from pathlib import Path

from .config import Config, HubConfig
from .errors import UserError


def preflight(hub: HubConfig) -> None:
    """With push on, check the repo is reachable and writable before any weights load."""
    if hub.push:
        raise UserError("output.hub.push=true is not available yet")


def publish(cfg: Config, out_dir: Path) -> None:
    if cfg.output.hub.push:
        raise UserError("output.hub.push=true is not available yet")
