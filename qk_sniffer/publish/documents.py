"""The dataset's documents (``qk_sniffer.json`` and the card), and the one sequence that changes what a
dir's dataset shows: :func:`settle`.

Every step that drops, replaces or merges committed files (a run's end, replace, compaction, repair, a
pull) goes through :func:`settle`, which holds the store's maintenance lock while it makes the change,
rewrites the documents from the store's view, and only then deletes the files that left the dataset. The
card therefore never lists a deleted file, and a file leaves the card before it leaves the disk.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..store import Store
from . import card
from .metadata import refreshed_metadata, write_metadata

MetadataFactory = Callable[[], dict[str, Any]]


def settle(
    store: Store,
    metadata: MetadataFactory | None = None,
    *,
    repo_id: str | None = None,
    branch: str | None = None,
    change: Callable[[], object] | None = None,
    draw: Callable[[Path], None] | None = None,
) -> None:
    """Under the lock: ``change`` (take over, compact, repair), then the metadata (from ``metadata``, or
    the dir's own refreshed from the manifest), the figures (``draw(root)``, e.g. a run's
    :class:`~qk_sniffer.analysis.figure_process.FigureDrawer`) and the card, then delete what left the
    dataset."""
    with store.maintenance():
        if change is not None:
            change()
        try:
            meta = metadata() if metadata is not None else _recorded(store)
            if meta is not None:
                write_metadata(store.root, meta)
            if draw is not None:
                draw(store.root)
            # Always, for a claimed dir: a stale card must not list what goes next, and a dir whose first
            # run was killed before its card (no metadata yet) gets one listing what is committed.
            if meta is not None or store.claimed():
                card.write_card(store, repo_id, branch)
        except OSError as exc:
            raise store.write_error("the metadata and card", exc, committed=True) from None
        store.collect_garbage()


def _recorded(store: Store) -> dict[str, Any] | None:
    meta = store.recorded_metadata()
    return refreshed_metadata(store, meta) if meta else None
