"""``python -m qk_sniffer.load_bench [--rows N] [--head-dim D]``: :func:`qk_sniffer.load` against pyarrow.

Writes one committed config of random vectors the way a run does (zstd Parquet part files, one commit per
flush, the metadata's sampler) into a temporary dir, then times, on the same files: pyarrow's own
``pq.read_table`` of the columns load reads, ``qk_sniffer.load``, and (``--pylist``) the Python-object
round trip the README used to show. Medians of ``--repeats`` warm runs; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..analysis.loading import COLUMNS, load
from ..capture.samplers import LogBucketSampler
from ..core.arrow import schema, vector_array
from ..store import RunInfo, Store
from ..store.layout import METADATA
from ..store.manifest import model_identity, recipe_id
from ..store.writer import PartWriter


def write_config(root: Path, rows: int, head_dim: int, parts: int, seed: int = 0) -> str:
    """One config (``l00h00q``) of ``rows`` random rows in ``parts`` part files, committed through the
    store one flush per file, as a run commits them."""
    rng = np.random.default_rng(seed)
    sampler = LogBucketSampler()
    recorded = {"name": sampler.name, **sampler.params()}
    metadata = {"model": {"name": "bench"}, "sampler": recorded}
    recipe = {"sampler": recorded}
    config, run = "l00h00q", "0000000be0c4"
    store = Store(root)
    info = RunInfo(run, recipe_id(recipe), (0, 1), [config])
    with store.registered(info, recipe, model_identity(metadata), "append"):
        writer = PartWriter(root, "000", run, store.committer(info.recipe, run, "000"))
        for index, count in enumerate(np.diff(np.linspace(0, rows, parts + 1).astype(np.int64))):
            positions = rng.integers(0, 131072, count).astype(np.int32)
            table = pa.table(
                {
                    "bucket": pa.array(sampler.buckets(positions.astype(np.int64)).astype(np.int32)),
                    "example_id": pa.array(np.sort(rng.integers(0, 1000, count))),
                    "position": pa.array(positions),
                    "vector": vector_array(rng.standard_normal((count, head_dim), dtype=np.float32)),
                    "sliding_window": pa.nulls(count, pa.int32()),
                },
                schema=schema(head_dim, token_strings=False),
            )
            # Random rows with no text behind them: the token-id hash records that there is none.
            example = (index, index, int(count), "none", (config,))
            writer.submit(partial(list, [(config, table)]), [example])
        writer.close()
    (root / METADATA).write_text(json.dumps(metadata))
    return config


def median_seconds(action: Callable[[], Any], repeats: int) -> float:
    action()  # warm the page cache and imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m qk_sniffer.load_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--parts", type=int, default=4, help="part files (one per flush)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pylist", action="store_true", help="also time the to_pylist() round trip")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="qk_load_bench_") as tmp:
        root = Path(tmp)
        config = write_config(root, args.rows, args.head_dim, args.parts)
        files = sorted((root / config).glob("*.parquet"))

        def arrow() -> pa.Table:
            return pq.read_table(files, columns=COLUMNS)

        result: dict[str, Any] = {
            "rows": args.rows,
            "head_dim": args.head_dim,
            "parts": args.parts,
            "bytes": sum(f.stat().st_size for f in files),
            "pyarrow_read_table_s": median_seconds(arrow, args.repeats),
            "qk_sniffer_load_s": median_seconds(lambda: load(root, config), args.repeats),
        }
        if args.pylist:
            result["to_pylist_s"] = median_seconds(
                lambda: np.array(arrow().column("vector").to_pylist(), dtype=np.float32), 1
            )
    result["load_over_pyarrow"] = result["qk_sniffer_load_s"] / result["pyarrow_read_table_s"]
    for key, value in result.items():
        print(f"{key:>22}: {value:.3f}" if isinstance(value, float) else f"{key:>22}: {value}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
