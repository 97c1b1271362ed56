"""``python -m qk_sniffer.compact output.dir=PATH``: merge each config's part files into one, in place.

Also ``output.compact=true`` at the end of a run. The merge itself is the store's
(:mod:`qk_sniffer.store.compact`); this is the command around it: verify first (a damaged commit is
dropped, naming its file), merge, rewrite the metadata and card, then delete the old parts.
"""

from __future__ import annotations

import uuid

from omegaconf import DictConfig

from ..core.config import register_configs
from ..publish import documents
from ..store import RunInfo, Store
from ..store.compact import compact_store
from .common import capture_dir, command, report_user_errors

register_configs()


def compact(store: Store) -> int:
    """Merge the dir's part files; returns how many configs were merged."""
    store.check_accountable()
    run_id = uuid.uuid4().hex[:12]
    merged = 0

    def change() -> None:
        nonlocal merged
        store.repair()
        merged = compact_store(store, run_id)

    # The lease protects the merged files (a live run's files) until their commit exists.
    with store.lease(RunInfo(run_id, "compact", (0, 1), [])):
        documents.settle(store, change=change)
    return merged


@command("compact")
def main(cfg: DictConfig) -> None:
    with report_user_errors():
        store = capture_dir(cfg.output.dir, "qk_sniffer.compact")
        merged = compact(store)
    print(f"qk_sniffer.compact: merged the part files of {merged} configs in {store.root}")


if __name__ == "__main__":
    main()
