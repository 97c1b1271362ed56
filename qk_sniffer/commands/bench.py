"""``python -m qk_sniffer.bench`` (``make bench``): the benchmarks, as a thin Hydra entry point.

``bench.mode=overhead`` (the default) times capture against a plain forward
(:mod:`qk_sniffer.pipeline.overhead_bench`): a table, then one JSON line. ``bench.mode=long_context`` measures
tokens/s and peak memory per length (:mod:`qk_sniffer.pipeline.long_bench`): one JSON line per run as it
finishes, then a table. ``bench.mode=first_minute`` times what a newcomer waits for: ``make run``, ``--help``,
``dry_run=true`` and the figures (:mod:`qk_sniffer.pipeline.first_minute`). The overhead and long-context
benches import only torch, transformers, hydra/omegaconf (and what they bring): they run on a bare GPU
machine without datasets, wandb or a network.
"""

from __future__ import annotations

import json

from omegaconf import DictConfig

from ..core.config import register_configs
from ..pipeline.long_bench import format_records, run_long_bench
from ..pipeline.overhead_bench import check_bench, format_table, run_bench
from .common import command, report_user_errors

register_configs()


@command("bench", check_keys=False)
def main(cfg: DictConfig) -> None:
    with report_user_errors():
        check_bench(cfg)  # type: ignore[arg-type] # a DictConfig typed by the BenchAppConfig schema
    if cfg.bench.mode == "long_context":
        records = []
        with report_user_errors():
            for record in run_long_bench(cfg):  # type: ignore[arg-type]
                print(json.dumps(record), flush=True)  # at once: a run stopped later keeps what it measured
                records.append(record)
        print(format_records(records))
        return
    with report_user_errors():
        if cfg.bench.mode == "first_minute":
            from ..pipeline import first_minute  # the analysis and the store: not on a bare GPU machine

            record = first_minute.run_first_minute(cfg)  # type: ignore[arg-type] # typed by BenchAppConfig
            table = first_minute.format_table(record)
        else:
            record = run_bench(cfg)  # type: ignore[arg-type]
            table = format_table(record)
    print(table)
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
