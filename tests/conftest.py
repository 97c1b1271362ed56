"""Shared fixtures: tiny random-weight models built offline with ``from_config``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent

# Tiny models spend more time synchronising threads than computing; one thread is faster and steadier.
torch.set_num_threads(1)

_SHAPE = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
)
TINY = {
    "llama": _SHAPE,
    "qwen3": _SHAPE,
    # One KV head, and a sliding window (8) much shorter than the texts used in tests.
    "mistral": {**_SHAPE, "num_key_value_heads": 1, "sliding_window": 8},
}


def tiny_model(model_type: str, seed: int = 0, **overrides) -> torch.nn.Module:
    config = AutoConfig.for_model(model_type, **{**TINY[model_type], **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    return model.eval()


@pytest.fixture
def make_tiny():
    return tiny_model
