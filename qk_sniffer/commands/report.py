"""``python -m qk_sniffer.report output.dir=PATH``: redraw a capture's figures and its card (see
:mod:`qk_sniffer.analysis.figures`). A Hydra app like the others: ``--help``, ``--cfg job``, the same
overrides."""

from __future__ import annotations

from omegaconf import DictConfig

from ..analysis.figures import capture_layout, render_figures
from ..core.config import register_configs
from ..publish import documents
from ..store.files import DamagedFile, read_json
from .common import capture_dir, command, report_user_errors

register_configs()


@command("report")
def main(cfg: DictConfig) -> None:
    with report_user_errors():
        store = capture_dir(cfg.output.dir, "qk_sniffer.report")
        store.check_accountable()
        capture_layout(store.root)  # refuse a dir that is not a capture before anything is written into it
        # Drawn outside the lock (minutes on a big dir): figures.json names the committed files they show,
        # so a card written after more rows arrive marks them out of date instead of showing them.
        paths = render_figures(store.root)
        # A pushed dir's card names its repo and branch: keep them (the last sync recorded them).
        try:
            synced = read_json(store.paths.hub_sync)
        except (FileNotFoundError, DamagedFile):
            synced = {}
        documents.settle(store, repo_id=synced.get("repo_id"), branch=synced.get("branch"))
    print(f"qk_sniffer.report: wrote {len(paths)} figures to {store.paths.figures}")


if __name__ == "__main__":
    main()
