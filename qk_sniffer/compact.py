"""Merge each config's part files into one, in place: ``output.compact=true`` at the end of a run, or

    python -m qk_sniffer.compact output.dir=PATH

Crash-safe in the manifest's way: the merged file is written whole (temp, fsync, rename) under this run's
name, the deletions are planned, then one commit per recipe that *supersedes* the old commits is written,
and only then do the old files and commits go. A crash at any point leaves either the old commits (the new
file is a dead run's leftover) or the new one (the old files are deleted by the next run).
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from .durable import atomic_file, fsync_dir
from .errors import UserError
from .manifest import Commit, Manifest, state_dir, write_commit
from .outdir import RunInfo, RunLease, clean_dead_runs, finish_deletions, maintenance_lock, plan_deletion


def compact_dir(root: Path, run_id: str) -> int:
    """Merge part files per (config, recipe). The caller holds the maintenance lock and a run lease named
    ``run_id`` (which protects the merged files until their commit exists). Returns configs merged."""
    manifest = Manifest(root)
    merged = 0
    for rid in sorted({c.recipe for c in manifest.commits}):
        commits = manifest.of_recipe(rid)
        files: dict[str, list[dict[str, Any]]] = {}
        for commit in commits:
            for config, entries in commit.files.items():
                files.setdefault(config, []).extend(entries)
        if len(commits) <= 1 and all(len(v) <= 1 for v in files.values()):
            continue
        new_files: dict[str, list[dict[str, Any]]] = {}
        old: list[str] = []
        for config, entries in sorted(files.items()):
            if len(entries) == 1:
                new_files[config] = entries
                continue
            name = f"part-compact-{run_id}-{rid[:8]}.parquet"
            rows = _merge([root / config / e["name"] for e in entries], root / config / name)
            new_files[config] = [{"name": name, "rows": rows}]
            old += [f"{config}/{e['name']}" for e in entries]
            merged += 1
        groups: dict[tuple[str, ...], list[Any]] = {}
        for commit in commits:
            for group in commit.groups:
                groups.setdefault(tuple(group["configs"]), []).extend(group["examples"])
        plan_deletion(root, old, [(rid, c.name) for c in commits])
        write_commit(
            root,
            Commit(
                f"compact-{run_id}-{rid[:8]}",
                rid,
                run_id,
                new_files,
                [{"configs": list(c), "examples": e} for c, e in groups.items()],
                [c.name for c in commits],
            ),
        )
        finish_deletions(root)
    return merged


def _merge(parts: list[Path], target: Path) -> int:
    """Stream the row groups of ``parts`` into one file (memory: one row group at a time)."""
    rows = 0
    with atomic_file(target) as f:
        writer = pq.ParquetWriter(f, pq.ParquetFile(parts[0]).schema_arrow, compression="zstd")
        for part in parts:
            source = pq.ParquetFile(part)
            for i in range(source.num_row_groups):
                table = source.read_row_group(i)
                writer.write_table(table)
                rows += table.num_rows
        writer.close()
    fsync_dir(target.parent)
    return rows


def compact(root: Path) -> int:
    """Compact an output dir that no other process is changing the same way (the lock sees to that)."""
    if not (state_dir(root) / "commits").is_dir():
        raise UserError(
            f"output.dir={str(root)!r} holds no qk_sniffer manifest (.qk_sniffer/commits); nothing to compact"
        )
    run_id = uuid.uuid4().hex[:12]
    with RunLease(root, RunInfo(run_id, "compact", (0, 1), [])), maintenance_lock(root):
        finish_deletions(root)
        clean_dead_runs(root)
        return compact_dir(root, run_id)


def _parse(args: list[str]) -> Path:
    dirs = [a.split("=", 1)[1] for a in args if a.startswith("output.dir=")]
    unknown = [a for a in args if not a.startswith("output.dir=")]
    if len(dirs) != 1 or unknown or not dirs[0]:
        raise UserError("usage: python -m qk_sniffer.compact output.dir=PATH")
    root = Path(dirs[0]).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"output.dir={dirs[0]!r} is not a directory")
    return root


def main(argv: list[str] | None = None) -> None:
    from .cli import report_user_errors  # noqa: PLC0415

    with report_user_errors():
        root = _parse(sys.argv[1:] if argv is None else argv)
        merged = compact(root)
    print(f"qk_sniffer.compact: merged the part files of {merged} configs in {root}")


if __name__ == "__main__":
    main()
