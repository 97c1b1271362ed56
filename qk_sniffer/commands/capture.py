"""``python -m qk_sniffer`` / ``sniff-qk``: a thin Hydra entry point around
:func:`qk_sniffer.pipeline.runner.run` (or :func:`qk_sniffer.pipeline.dry_run.dry_run`)."""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from ..core.config import register_configs
from ..core.errors import UserError
from ..core.imports import collector_paused
from .common import USER_ERROR, command, report_user_errors
from .sweep import JobOutcome

register_configs()


# Unknown keys are listed by the run's own check, with every other problem of the config.
@command("config", check_keys=False)
def main(cfg: DictConfig) -> JobOutcome | None:
    if cfg.dry_run:
        from ..pipeline.dry_run_cache import recall
        from ..pipeline.dry_run_output import show

        with report_user_errors():
            plan = recall(cfg)  # type: ignore[arg-type] # a DictConfig typed by the Config schema
            if plan is not None:  # the same local inputs as a dry run before: no torch to import
                show(plan)
                return None
            with collector_paused():
                from ..pipeline.dry_run import dry_run

            dry_run(cfg)  # type: ignore[arg-type] # a DictConfig typed by the Config schema
        return None
    with report_user_errors():
        from ..pipeline.helpers import start_helpers

        # W&B's and the figures' processes import while this one imports torch.
        start_helpers(cfg)  # type: ignore[arg-type] # a DictConfig typed by the Config schema
        with collector_paused():
            from ..pipeline.runner import in_multirun, run

        if in_multirun():
            return _sweep_job(cfg)
        result = run(cfg)  # type: ignore[arg-type] # a DictConfig typed by the Config schema
    if result.resumed_examples:
        print(f"qk_sniffer: resumed: {result.resumed_examples} examples were already saved and were skipped")
    print(f"qk_sniffer: wrote {result.rows} rows from {result.examples} examples to {result.output_dir}")
    if result.summary is not None:
        print("\n".join(result.summary.lines()))
    return None


def _sweep_job(cfg: DictConfig) -> JobOutcome:
    """One job of a multirun: a refusal is reported and the sweep goes on (its summary lists every job);
    an interrupt (exit 128+N) ends the sweep."""
    from ..pipeline.runner import run

    try:
        result = run(cfg)  # type: ignore[arg-type] # a DictConfig typed by the Config schema
    except UserError as exc:
        if exc.exit_code != USER_ERROR:
            raise
        print(f"qk_sniffer: error: {exc}", file=sys.stderr)
        return JobOutcome(error=str(exc))
    print(f"qk_sniffer: wrote {result.rows} rows from {result.examples} examples to {result.output_dir}")
    return JobOutcome(result.output_dir, result.rows, result.examples)


if __name__ == "__main__":
    main()
