"""Shared fixtures: tiny random-weight models built offline, and the recording stand-in of the Hub."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# No dry run is remembered (a test that patches the code under a dry run must see it run); the tests of
# the cache give it a dir of their own.
os.environ["QK_SNIFFER_CACHE"] = "off"

from tiny_models import tiny_model  # noqa: E402 - needs tests/ on the path

if TYPE_CHECKING:
    from hub_stand_in import FakeHub

# Tiny models spend more time synchronising threads than computing; one thread is faster and steadier.
torch.set_num_threads(1)


@pytest.fixture
def make_tiny():
    return tiny_model


@pytest.fixture
def fake(monkeypatch, tmp_path) -> FakeHub:
    """The recording Hub stand-in, installed with a token in HF_TOKEN, online, in a clean working dir."""
    # Imported here: its HTTP client is not on the bare GPU machine, where only the gpu-marked tests run.
    from hub_stand_in import install_stand_in

    return install_stand_in(monkeypatch, tmp_path)
