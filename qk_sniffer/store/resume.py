"""Which examples a run still has to capture, from what the manifest records as durable."""

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


E = TypeVar("E", bound=ExampleLike)


class ResumeFilter:
    """Skips examples whose rows are durable for every config of this run; tells the rest which configs
    they still need. Refuses when an example differs from the one recorded under the same recipe."""

    def __init__(self, done: dict[int, ExampleDone], configs: list[str], root: Path) -> None:
        self.done = done
        self.configs = tuple(configs)
        self.root = root
        self.skipped = 0
        self._none: frozenset[str] = frozenset()

    def filter(self, examples: Iterator[E]) -> Iterator[E]:
        for example in examples:
            recorded = self.done.get(example.index)
            if recorded is not None:
                if (recorded.example_id, recorded.tokens) != (example.example_id, example.length):
                    raise UserError(
                        f"output.dir={str(self.root)!r}: example {example.index} is not the one recorded "
                        f"there with the same recipe (example_id {recorded.example_id}, {recorded.tokens} "
                        f"tokens; now {example.example_id}, {example.length}): the dataset changed; use "
                        "another output.dir"
                    )
                if recorded.configs.issuperset(self.configs):
                    self.skipped += 1
                    continue
            yield example

    def done_for(self, index: int) -> frozenset[str]:
        recorded = self.done.get(index)
        return recorded.configs if recorded is not None else self._none

    def todo(self, index: int) -> tuple[str, ...]:
        done = self.done_for(index)
        return tuple(c for c in self.configs if c not in done)
