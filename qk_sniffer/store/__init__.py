"""The store: one object owns an output dir (see :mod:`.store` for its invariants).

Layer: takes Arrow tables and metadata dicts; writes part files, the manifest and leases. It knows no
model, no capture internals, no card content and no Hub. May import: the core and itself.

- :mod:`.layout`    every path and file-name pattern of a dir, named once
- :mod:`.files`     atomic writes, reading back what was written, hashes
- :mod:`.manifest`  recipes and commits, as read from disk
- :mod:`.leases`    run leases and the maintenance lock
- :mod:`.writer`    the background Parquet writer (tables in, durable parts and commits out)
- :mod:`.store`     the Store: claim, register, verify, repair, view, take over, collect garbage
- :mod:`.compact`   merging each config's parts into one
- :mod:`.resume`    which examples a run still has to capture
"""

from .leases import RunInfo
from .store import Damage, DatasetView, Registration, Store, StoreError

__all__ = ["DatasetView", "Damage", "Registration", "RunInfo", "Store", "StoreError"]
