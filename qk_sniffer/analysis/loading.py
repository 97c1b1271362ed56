"""Reading a capture back as arrays: ``qk_sniffer.load(dir_or_repo, "l00h00q")``.

Only committed part files are read (:func:`committed_parts`, the one place that asks the store what the
dataset holds): a part file no trusted commit names is a killed run's leftover and is never visible. The
vector column is a fixed-size list of float32, so its flat child buffer is the (rows, head_dim) matrix
itself: it is reshaped, never converted through Python objects, and copied at most once (to join chunks
or to own a writable array).

A Hub repo (``"user/repo"`` with a ``revision``) is read the same way after downloading, at the revision's
commit, the manifest, the metadata, and then exactly the files its commits name for that config.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..capture.samplers import build_sampler
from ..core.arrow import numpy_values
from ..core.errors import UserError
from ..core.naming import CONFIG_NAME
from ..store import Store
from ..store.layout import METADATA, STATE
from ..store.manifest import Manifest

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
COLUMNS = ["bucket", "example_id", "position", "vector"]


@dataclass(frozen=True)
class CommittedPart:
    """One part file a trusted commit names, with the row count and recipe that commit records."""

    path: Path
    rows: int
    recipe: str


def committed_parts(root: Path, elsewhere: Collection[str] = ()) -> dict[str, list[CommittedPart]]:
    """Config name -> its committed part files, in the card's order: the store's view of the dataset.
    ``elsewhere``: relative paths present on the Hub branch a partial download came from (a commit is
    trusted when all its files exist, also those of configs that were not downloaded)."""
    store = Store(root)
    if not store.claimed():
        raise UserError(
            f"{str(root)!r} has no {STATE}/ manifest, so which of its files are committed is unknown; "
            "it is not an output dir written by qk_sniffer"
        )
    view = store.view(remote=elsewhere)
    return {
        config: [CommittedPart(root / p.rel, p.rows, view.recipe_of[p.rel]) for p in parts]
        for config, parts in view.files.items()
    }


def recorded_samplers(root: Path) -> dict[str, Any]:
    """Recipe id -> the sampler its rows were drawn with (from the manifest's recipes; the dir's metadata
    for a recipe that has none recorded)."""
    fallback = Store(root).recorded_metadata().get("sampler")
    samplers: dict[str, Any] = {}
    for rid, recipe in Manifest(root).recipes.items():
        recorded = recipe.get("sampler") or fallback
        if recorded:
            samplers[rid] = build_sampler(recorded)
    if fallback:
        samplers.setdefault("", build_sampler(fallback))
    return samplers


@dataclass
class ConfigRows:
    """The rows of one config as numpy arrays (writable, owned by numpy), in committed-file order.
    ``keep_prob[i]`` is the probability the sampler kept row i's position (its bucket's), so
    ``sum(x / keep_prob)`` estimates a total over all positions; per-bucket means need no weighting."""

    config: str
    vectors: np.ndarray  # (N, head_dim) float32
    positions: np.ndarray  # (N,) int32
    buckets: np.ndarray  # (N,) int32
    example_ids: np.ndarray  # (N,) int64
    keep_prob: np.ndarray  # (N,) float64

    def __len__(self) -> int:
        return len(self.positions)

    def to_torch(self) -> dict[str, Any]:
        """The same arrays as torch tensors sharing their memory (no copy)."""
        import torch

        names = ("vectors", "positions", "buckets", "example_ids", "keep_prob")
        return {name: torch.from_numpy(getattr(self, name)) for name in names}


def vectors_of(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed_size_list<float32>[d] column as a (rows, d) float32 array, without Python objects. One chunk
    is a view of Arrow's buffer; several are concatenated once."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    width = column.type.list_size
    flats = [_flat_values(chunk, width) for chunk in chunks]
    if not flats:
        return np.empty((0, width), dtype=np.float32)
    flat = flats[0] if len(flats) == 1 else np.concatenate(flats)
    return flat.reshape(-1, width)


def owned(array: np.ndarray) -> np.ndarray:
    """A writable array: a view of Arrow memory is read-only, and users (and torch) expect to write."""
    return array if array.flags.writeable else array.copy()


def _flat_values(chunk: pa.FixedSizeListArray, width: int) -> np.ndarray:
    # .values ignores a slice's offset; flatten() honours it (and is still zero-copy without nulls).
    return numpy_values(chunk.flatten() if chunk.offset else chunk.values)


def load(path_or_repo: str | Path, config: str, revision: str | None = None) -> ConfigRows:
    """The committed rows of ``config`` (e.g. ``"l00h00q"``) in an output dir, or in a Hub dataset repo at
    ``revision`` (a branch, tag or commit; the capture branches are named ``<model>-<dataset>``)."""
    if not CONFIG_NAME.match(config):
        raise UserError(f"config={config!r} is not a config name such as 'l00h00q' (l<layer>h<head><q|k>)")
    local = Path(path_or_repo).expanduser()
    if local.exists():
        if revision is not None:
            raise UserError(f"revision={revision!r} applies to a Hub repo; {str(local)!r} is a local dir")
        return read_config(local, config=config)
    if isinstance(path_or_repo, str) and REPO_ID.match(path_or_repo):
        from ..hub.download import download_config

        return read_config(*download_config(path_or_repo, config, revision), config=config)
    raise UserError(f"{str(path_or_repo)!r} is neither an existing output dir nor a Hub repo id (user/name)")


def read_config(root: Path, elsewhere: Collection[str] = (), *, config: str) -> ConfigRows:
    held_parts = committed_parts(root, elsewhere)
    parts = held_parts.get(config)
    if not parts:
        held = sorted(held_parts)
        shown = ", ".join(held[:8]) + (", ..." if len(held) > 8 else "") if held else "none"
        raise UserError(f"config {config!r} holds no committed rows in {str(root)!r} (configs held: {shown})")
    files = [pq.ParquetFile(p.path) for p in parts]
    for part, f in zip(parts, files, strict=True):
        if f.metadata.num_rows != part.rows:
            raise UserError(
                f"{str(part.path)!r} has {f.metadata.num_rows} rows where its commit records {part.rows}: "
                "the dir was changed by hand"
            )
    # The files are read side by side (in order), as pyarrow's own multi-file read does.
    with ThreadPoolExecutor(max_workers=min(len(files), os.cpu_count() or 1)) as pool:
        tables = list(pool.map(lambda f: f.read(columns=COLUMNS), files))
    # Parts of one config may differ in the vector floats' declared nullability (files written before they
    # were declared non-null): the same values, concatenated under the wider type.
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    buckets = owned(numpy_values(table.column("bucket")))
    return ConfigRows(
        config=config,
        vectors=owned(vectors_of(table.column("vector"))),
        positions=owned(numpy_values(table.column("position"))),
        buckets=buckets,
        example_ids=owned(numpy_values(table.column("example_id"))),
        keep_prob=_keep_prob(root, parts, buckets),
    )


def _keep_prob(root: Path, parts: list[CommittedPart], buckets: np.ndarray) -> np.ndarray:
    """Each row's probability under the sampler of the recipe whose commit wrote it."""
    samplers = recorded_samplers(root)
    prob = np.empty(len(buckets), dtype=np.float64)
    start = 0
    for part in parts:
        sampler = samplers.get(part.recipe) or samplers.get("")
        if sampler is None:
            raise UserError(f"{str(root)!r} records no sampler ({METADATA} is missing or has no 'sampler')")
        end = start + part.rows
        prob[start:end] = sampler.keep_probability(buckets[start:end].astype(np.int64))
        start = end
    return prob
