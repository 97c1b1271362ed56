"""Shared fixtures: tiny random-weight models built offline, and the recording stand-in of the Hub."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from hub_stand_in import FakeHub, install_stand_in  # noqa: E402 - needs tests/ on the path
from tiny_models import tiny_model  # noqa: E402 - needs tests/ on the path

# Tiny models spend more time synchronising threads than computing; one thread is faster and steadier.
torch.set_num_threads(1)


@pytest.fixture
def make_tiny():
    return tiny_model


@pytest.fixture
def fake(monkeypatch, tmp_path) -> FakeHub:
    """The recording Hub stand-in, installed with a token in HF_TOKEN, online, in a clean working dir."""
    return install_stand_in(monkeypatch, tmp_path)
