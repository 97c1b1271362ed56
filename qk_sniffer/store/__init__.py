"""The store: one object owns an output dir (see :mod:`.store` for its invariants).

Layer: takes Arrow tables and metadata dicts; writes part files, the manifest and leases. It knows no
model, no capture internals, no card content and no Hub. May import: the core and itself.

- :mod:`.layout`      every path and file-name pattern of a dir, named once
- :mod:`.files`       atomic writes, reading back what was written, hashes
- :mod:`.manifest`    recipes and commits, as read from disk
- :mod:`.leases`      run leases and the maintenance lock
- :mod:`.writer`      the background Parquet writer (tables in, durable parts and commits out)
- :mod:`.base`        what the parts of the Store share: the dir, its lock, the one rule for deleting
- :mod:`.claim`       whether a dir may be written (claimed for one model, nothing foreign)
- :mod:`.admission`   who may add rows (one recipe per config, no overlapping live runs)
- :mod:`.integrity`   hashing every committed file; repair drops the commits that do not match
- :mod:`.deletions`   configs taken over, and the garbage nothing needs
- :mod:`.store`       the Store: all of the above, plus registration, commits and the dataset view
- :mod:`.compact`     merging each config's parts into one
- :mod:`.resume`      which examples a run still has to capture
"""

from .base import StoreError
from .integrity import Damage
from .leases import RunInfo
from .store import DatasetView, Registration, Store

__all__ = ["DatasetView", "Damage", "Registration", "RunInfo", "Store", "StoreError"]
