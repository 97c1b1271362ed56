"""``python -m qk_sniffer.report output.dir=PATH``: redraw a capture's figures and its card (see
:mod:`qk_sniffer.figures`). A Hydra app like the others: ``--help``, ``--cfg job``, the same overrides."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .cli import CONFIG_DIR, report_user_errors
from .config import register_configs
from .errors import UserError

register_configs()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="report")
def main(cfg: DictConfig) -> None:
    with report_user_errors():
        if not cfg.output.dir:
            raise UserError("output.dir is required: python -m qk_sniffer.report output.dir=PATH")
        from .card import write_card
        from .figures import FIGURES_DIR, capture_layout, render_figures
        from .hub import SYNC_STATE
        from .outdir import maintenance_lock

        root = Path(str(cfg.output.dir)).expanduser().resolve()
        capture_layout(root)  # refuse a dir that is not a capture before anything is written into it
        # Drawn outside the lock (minutes on a big dir): figures.json names the committed files they show,
        # so a card written after more rows arrive marks them out of date instead of showing them.
        paths = render_figures(root)
        with maintenance_lock(root):
            # A pushed dir's card names its repo and branch: keep them (the last sync recorded them).
            synced = json.loads((root / SYNC_STATE).read_text()) if (root / SYNC_STATE).is_file() else {}
            write_card(root, synced.get("repo_id"), synced.get("branch"))
    print(f"qk_sniffer.report: wrote {len(paths)} figures to {root / FIGURES_DIR}")


if __name__ == "__main__":
    main()
