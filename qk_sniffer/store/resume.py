"""Which examples a run still has to capture, from what the manifest records as durable, and the refusal
of an example whose content changed since its rows were captured.

An example is its dataset index; what the dir records of it (example_id, token count, token-id hash) must
still hold for the text read now. If it does not (a text edited in place, a tokenizer changed at the same
path), the dir's rows of that example describe another text. The run refuses, naming the example, before
any of its rows are written: recapturing it here would leave the old text's rows in every config this run
does not write (other layers merged in, other samplers, other shards, the Hub branch), one example_id
standing for two texts. Restoring the text, or a new output.dir for the edited dataset, keeps every
dataset true to one corpus.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, TypeVar

from ..core.errors import UserError
from .manifest import ExampleDone


class ExampleLike(Protocol):
    @property
    def index(self) -> int: ...
    @property
    def example_id(self) -> int: ...
    @property
    def length(self) -> int: ...
    @property
    def token_hash(self) -> str: ...


E = TypeVar("E", bound=ExampleLike)


class ResumeFilter:
    """Skips examples whose rows are durable for every config of this run; tells the rest which configs
    they still need. ``done``: what this recipe holds; ``seen``: what every recipe reading the same texts
    holds (this one included), each of which must still match the example read now."""

    def __init__(
        self,
        done: dict[int, ExampleDone],
        configs: list[str],
        root: Path,
        seen: dict[int, ExampleDone] | None = None,
    ) -> None:
        self.done = done
        self.seen = done if seen is None else seen
        self.configs = tuple(configs)
        self.root = root
        self.skipped = 0
        self._none: frozenset[str] = frozenset()

    def filter(self, examples: Iterator[E]) -> Iterator[E]:
        for example in examples:
            recorded = self.seen.get(example.index)
            if recorded is not None:
                self._check_unchanged(example, recorded)
            done = self.done.get(example.index)
            if done is not None and done.configs.issuperset(self.configs):
                self.skipped += 1
                continue
            yield example

    def _check_unchanged(self, example: ExampleLike, recorded: ExampleDone) -> None:
        now = (example.example_id, example.length)
        then = (recorded.example_id, recorded.tokens)
        if now == then and recorded.token_hash in (None, example.token_hash):
            return  # a hash of None: recorded before hashes were, so only the id and count can be compared
        what = (
            f"its token ids changed (token-id hash {recorded.token_hash} -> {example.token_hash}, "
            f"{example.length} tokens both times)"
            if now == then
            else f"example_id {recorded.example_id} with {recorded.tokens} tokens there, now "
            f"example_id {example.example_id} with {example.length} tokens"
        )
        raise UserError(
            f"output.dir={str(self.root)!r}: example {example.index} of the dataset is not the text whose "
            f"rows the dir holds: {what}. Restore the text (or the tokenizer) it was captured from, or "
            "capture the edited dataset into another output.dir; nothing of this example was written"
        )

    def done_for(self, index: int) -> frozenset[str]:
        recorded = self.done.get(index)
        return recorded.configs if recorded is not None else self._none

    def todo(self, index: int) -> tuple[str, ...]:
        done = self.done_for(index)
        return tuple(c for c in self.configs if c not in done)
