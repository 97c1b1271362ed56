"""Where the user's cache lives: ``$QK_SNIFFER_CACHE``, by default ``$XDG_CACHE_HOME/qk_sniffer``
(``~/.cache/qk_sniffer``). ``QK_SNIFFER_CACHE=off`` turns every cache off (nothing is read or written
there); it is a switch, never a dir name. What lives there is only ever a cache: deleting it costs time,
never data."""

from __future__ import annotations

import os
from pathlib import Path

OFF = "off"


def cache_root() -> Path | None:
    """The cache's root dir, or None when caching is off."""
    root = os.environ.get("QK_SNIFFER_CACHE")
    if root == OFF:
        return None
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "qk_sniffer")
    return Path(root)
