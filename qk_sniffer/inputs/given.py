"""Inputs handed over in Python (``Recording.run``): texts or token-id lists, each checked before anything
is captured, with ids that never repeat within one recording."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..core.errors import UserError
from .data import DataStats, Example, make_example, stable_id
from .tokenization import encoder


class GivenInputs:
    """Turns each call's inputs into examples; counts what it skipped or cut in ``stats``.

    Indices (and default ids) count on across calls, so the n-th input of a recording has index n, as the
    n-th row of a dataset has in the CLI.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, max_length: int | None) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.stats = DataStats()
        self._next_index = 0
        # Example ids taken so far: a repeat would give (example_id, position) twice in one dataset.
        self._ids: set[int] = set()

    def examples(
        self, inputs: Sequence[str | Sequence[int]], example_ids: Sequence[Any] | None
    ) -> list[Example]:
        """Tokenize and check every input first, so a bad one fails the call before anything is captured;
        only then are the call's ids and counts taken."""
        if isinstance(inputs, (str, bytes)):
            raise UserError("Recording.run takes a list of texts or token-id lists, not a single string")
        if example_ids is not None and len(example_ids) != len(inputs):
            raise UserError(f"example_ids has {len(example_ids)} entries for {len(inputs)} inputs")
        encode = encoder(self.tokenizer) if self.tokenizer is not None else None
        examples = []
        counts = DataStats()
        ids_here: set[int] = set()
        for i, item in enumerate(inputs):
            ids = self._ids_of(i, item, encode)
            example_id = self._example_id(i, example_ids, ids_here)
            example = make_example(self._next_index + i, example_id, ids, self.max_length, counts)
            if example is not None:
                examples.append(example)
        self.stats.skipped_empty += counts.skipped_empty
        self.stats.truncated += counts.truncated
        self._ids |= ids_here
        self._next_index += len(inputs)
        return examples

    def _ids_of(self, i: int, item: str | Sequence[int], encode: Any) -> list[int]:
        if isinstance(item, str):
            if encode is None:
                raise UserError(f"inputs[{i}] is a text but no tokenizer was given to qk_sniffer.attach")
            return encode(item) if item.strip() else []
        ids = [int(t) for t in item]
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise UserError(
                f"inputs[{i}]: token id {bad[0]} is outside the model's vocabulary (0..{self.vocab_size - 1})"
            )
        return ids

    def _example_id(self, i: int, example_ids: Sequence[Any] | None, ids_here: set[int]) -> int:
        """The id of input ``i``; a null id, or one already used in this recording or call, is refused."""
        if example_ids is None:
            example_id = self._next_index + i
        elif example_ids[i] is None:
            raise UserError(f"example_ids[{i}] is None; every input needs its own id")
        else:
            example_id = stable_id(example_ids[i])
        if example_id in self._ids or example_id in ids_here:
            raise UserError(
                f"example_ids[{i}]={example_ids[i] if example_ids is not None else example_id!r} was already "
                "used in this capture; ids must be unique (rows would repeat)"
            )
        ids_here.add(example_id)
        return example_id
