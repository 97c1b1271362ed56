"""Tokenizer loading: the model's own, a named one, or the small one shipped for the embedded default."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ..core.config import ModelConfig, TokenizerConfig
from ..core.errors import UserError
from .data import EMBEDDED_TOKENIZER


def load_tokenizer(tokenizer: TokenizerConfig, model: ModelConfig) -> PreTrainedTokenizerBase:
    name = tokenizer.name or model.name
    if name is None:
        return PreTrainedTokenizerFast(tokenizer_file=str(EMBEDDED_TOKENIZER), eos_token="<|endoftext|>")
    try:
        revision = model.revision if tokenizer.name is None else None
        return AutoTokenizer.from_pretrained(
            name, revision=revision, trust_remote_code=model.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        key = "tokenizer.name" if tokenizer.name else "model.name"
        raise UserError(f"{key}={name!r}: cannot load a tokenizer ({exc})") from None


def encoder(tok: PreTrainedTokenizerBase) -> Callable[[str], list[int]]:
    """Text -> ids with the tokenizer's own special tokens (e.g. a BOS), as the model saw them in training."""

    def encode(text: str) -> list[int]:
        return list(tok(text, add_special_tokens=True)["input_ids"])

    return encode


def token_strings(tok: PreTrainedTokenizerBase) -> Callable[[np.ndarray], list[str]]:
    def convert(ids: np.ndarray) -> list[str]:
        return [str(t) for t in tok.convert_ids_to_tokens(ids.tolist())]

    return convert


def pad_id(tok: PreTrainedTokenizerBase | None) -> int:
    """Any id works for right padding (never attended by real tokens, never captured); prefer pad."""
    if tok is None:
        return 0
    for candidate in (tok.pad_token_id, tok.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0
