"""Compact text for sets of layer or head numbers, for messages and the dataset card."""

from __future__ import annotations

from collections.abc import Iterable


def format_ranges(values: Iterable[int]) -> str:
    """{0, 1, 2, 4, 5, 7} -> "0-2, 4-5, 7" (empty input -> "")."""
    parts: list[str] = []
    start = prev = None
    for value in sorted(set(values)):
        if prev is not None and value == prev + 1:
            prev = value
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = value
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}-{prev}")
    return ", ".join(parts)
