"""Merge each config's part files into one, in place, atomically in what the dataset shows.

For each recipe: the merged files are written whole (temp, fsync, rename) under the compacting run's name,
protected by its lease; then ONE commit that *supersedes* the recipe's old commits is written. Before that
commit the dataset is the old files (the merged ones are a live run's files in flight, or a dead run's
leftovers); after it, the merged files. The old files are deleted only after the caller has rewritten the
card (:meth:`Store.collect_garbage`), so the card never lists a deleted file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..core.arrow import vector_type
from .files import atomic_file, fsync_dir, sha256_of
from .layout import part_name
from .manifest import Commit, PartFile, write_commit
from .store import Store
from .writer import parquet_options


def compact_store(store: Store, run_id: str) -> int:
    """Merge part files per (config, recipe). The caller holds the maintenance lock and a run lease named
    ``run_id`` (which protects the merged files until their commit exists). Returns configs merged. A
    write that fails (a full disk) is one StoreError; the dataset is then still the unmerged files."""
    try:
        return _compact(store, run_id)
    except OSError as exc:
        raise store.write_error("the merged part files", exc, committed=True) from None


def _compact(store: Store, run_id: str) -> int:
    manifest = store.manifest()
    merged = 0
    for rid in sorted({c.recipe for c in manifest.commits}):
        commits = manifest.of_recipe(rid)
        parts: dict[str, list[PartFile]] = {}
        for commit in commits:
            for part in commit.parts:
                parts.setdefault(part.config, []).append(part)
        if len(commits) <= 1 and all(len(v) <= 1 for v in parts.values()):
            continue
        new_parts: list[PartFile] = []
        for config, entries in sorted(parts.items()):
            if len(entries) == 1:
                new_parts += entries
                continue
            name = part_name("compact", run_id, rid[:8])
            new_parts.append(_merge(store.root, config, name, sorted(entries, key=lambda p: p.name)))
            merged += 1
        groups: dict[tuple[str, ...], list[Any]] = {}
        for commit in commits:
            for group in commit.groups:
                groups.setdefault(tuple(group["configs"]), []).extend(group["examples"])
        write_commit(
            store.paths,
            Commit(
                f"compact-{run_id}-{rid[:8]}",
                rid,
                run_id,
                new_parts,
                [{"configs": list(c), "examples": e} for c, e in groups.items()],
                [c.name for c in commits],
            ),
        )
    return merged


def _merge(root: Path, config: str, name: str, parts: list[PartFile]) -> PartFile:
    """Stream the row groups of ``parts`` into one file (memory: one row group at a time)."""
    rows = 0
    target = root / config / name
    with atomic_file(target) as f:
        schema = _floats_non_null(pq.ParquetFile(root / parts[0].rel).schema_arrow)
        writer = pq.ParquetWriter(f, schema, **parquet_options(schema))
        for part in parts:  # one open at a time: a config may hold thousands of parts
            source = pq.ParquetFile(root / part.rel)
            for i in range(source.num_row_groups):
                table = source.read_row_group(i)
                writer.write_table(table if table.schema.equals(schema) else table.cast(schema))
                rows += table.num_rows
        writer.close()
    fsync_dir(target.parent)
    return PartFile(config, name, rows, target.stat().st_size, sha256_of(target))


def _floats_non_null(schema: pa.Schema) -> pa.Schema:
    """The schema with the vector's floats declared non-null, as the writer declares them now. Parts written
    before may declare them nullable; they hold no null, and cast to it unchanged."""
    if "vector" not in schema.names:
        return schema
    index = schema.get_field_index("vector")
    vector = schema.field(index)
    if not pa.types.is_fixed_size_list(vector.type) or not vector.type.value_field.nullable:
        return schema
    return schema.set(index, vector.with_type(vector_type(vector.type.list_size)))
