"""``python -m qk_sniffer`` / ``sniff-qk``: a thin Hydra entry point around
:func:`qk_sniffer.pipeline.runner.run`."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ..core.config import CONF_DIR, register_configs
from .common import report_user_errors

register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    # Imported per path: a dry run reads configs only and must not pay for the capture's imports.
    if cfg.dry_run:
        from ..pipeline.dry_run import dry_run

        with report_user_errors():
            dry_run(cfg)  # type: ignore[arg-type] # a DictConfig typed by the Config schema
        return
    from ..pipeline.runner import run

    with report_user_errors():
        result = run(cfg)  # type: ignore[arg-type] # a DictConfig typed by the Config schema
    if result.resumed_examples:
        print(f"qk_sniffer: resumed: {result.resumed_examples} examples were already saved and were skipped")
    print(f"qk_sniffer: wrote {result.rows} rows from {result.examples} examples to {result.output_dir}")
    if result.summary is not None:
        print("\n".join(result.summary.lines()))


if __name__ == "__main__":
    main()
