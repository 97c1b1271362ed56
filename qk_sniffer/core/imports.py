"""Heavy imports (torch, transformers, matplotlib, wandb) with Python's cyclic garbage collector paused.

Importing torch and transformers builds about a million objects that live as long as the process. While
they are built, the collector runs full collections that walk every one of them and free nothing: about
0.45 s of a 3.4 s import on the 2-core VM. A process that owns its life (a command, a helper) imports them
with the collector paused, then freezes what the import made (``gc.freeze``: later full collections skip
those objects, so they cost nothing during the capture either) and resumes it. Objects made afterwards (the
model, each batch's tensors, the figures) are collected as usual.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run the block (imports) without the cyclic collector; freeze what it imported. Nothing is frozen when
    the block imported nothing new (a second call in one process, a test that imported it all already), and
    nothing changes when the collector was off already (a caller that manages it)."""
    if not gc.isenabled():
        yield
        return
    modules = len(sys.modules)
    gc.disable()
    try:
        yield
    finally:
        if len(sys.modules) > modules:
            gc.freeze()
        gc.enable()
