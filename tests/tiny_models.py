"""Tiny random-weight models built offline with ``from_config``: the one place their shapes are written."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

# The shape every tiny decoder starts from; a test or family overrides only what makes it different.
SHAPE = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
)
# The embedded tokenizer's ids reach 511: models that read its token ids need this many rows.
EMBEDDED_VOCAB = 512
TINY = {
    "llama": SHAPE,
    "qwen3": SHAPE,
    # One KV head, and a sliding window (8) much shorter than the texts used in tests.
    "mistral": {**SHAPE, "num_key_value_heads": 1, "sliding_window": 8},
}


def tiny_model(model_type: str, seed: int = 0, **overrides) -> torch.nn.Module:
    config = AutoConfig.for_model(model_type, **{**TINY[model_type], **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    return model.eval()
