"""What reading the texts counted: examples, tokens, and the texts skipped or cut. Torch-free, so the
metadata (and every command that only reads a capture dir) can carry these counts without the data path."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataStats:
    skipped_empty: int = 0
    examples: int = 0
    tokens: int = 0
    truncated: int = 0
    # Texts cut to the model's position limit because tokenizer.max_length was null.
    truncated_to_model_limit: int = 0
    lengths: list[int] = field(default_factory=list)
