"""``python -m qk_sniffer.families``: print the support matrix, or measure it (``sweep=true``: tiny models
of every family transformers ships, each captured and compared with its own eager attention; ``write=true``
also writes it, as ``make sweep`` does: on the newest release measured it rewrites the shipped matrix,
``docs/families.md`` and the README's family table; on an older release, its own
``resources/families/<release>.json``; with ``only=[...]`` it rewrites those families' entries and keeps
every other one). The last stdout line is one JSON object ``{"transformers": ..., "families": {...}}``."""

from __future__ import annotations

import json
import sys
from typing import Any

from ..capture import matrices
from ..capture.support import support_matrix
from ..core.errors import UserError


def run_families(cfg: Any) -> dict[str, Any]:
    """The matrix to print: the shipped one, or one measured now (and written, with ``write=true``)."""
    only = list(cfg.only) if cfg.only else None
    if cfg.write and not cfg.sweep:
        raise UserError("write=true needs sweep=true: only a measured matrix is written")
    if cfg.sweep:
        from ..families import sweep  # the sweep loads models; printing the shipped matrix needs none of it

        unknown = sorted(set(only or ()) - set(sweep.candidates()))
        if unknown:
            raise UserError(f"only: unknown model types {unknown}; see transformers' causal-LM mapping")
        matrix = sweep.sweep(only, log=lambda line: print(line, file=sys.stderr, flush=True))
        if cfg.write:
            write_matrix(merged(support_matrix(), matrix) if only else matrix, sweep.STATUSES, sweep.QUIRKS)
        return matrix
    matrix = support_matrix()
    if only:
        unknown = sorted(set(only) - set(matrix["families"]))
        if unknown:
            raise UserError(f"only: model types {unknown} are not in the support matrix")
        matrix = {**matrix, "families": {k: matrix["families"][k] for k in only}}
    return matrix


def merged(shipped: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    """The shipped matrix with the measured families' entries replaced. An entry measured on another
    transformers than the shipped matrix's records its own version, so no line claims a release it was not
    measured on."""
    families = dict(shipped["families"])
    version = measured["transformers"]
    own = {"transformers": version} if version != shipped["transformers"] else {}
    for model_type, entry in measured["families"].items():
        families[model_type] = {**entry, **own}
    return {**shipped, "families": families}


def write_matrix(matrix: dict[str, Any], statuses: dict[str, str], quirks: dict[str, str]) -> None:
    """One measured matrix, into its release's file; for the newest release measured, also docs/families.md
    and the README table (the matrix it replaces moves to its own release's file, so none is lost)."""
    from ..families.docs import docs_page, replace_readme_table

    repo = matrices.MATRIX_PATH.parent.parent.parent
    shipped = {**matrix, "families": {k: {f: v for f, v in e.items() if f != "seconds"} for k, e in
                                      matrix["families"].items()}}  # fmt: skip
    target = matrices.matrix_file_for(matrix["transformers"])
    if target != matrices.MATRIX_PATH:
        target.parent.mkdir(exist_ok=True)
        target.write_text(matrix_json(shipped))
        return
    previous = json.loads(target.read_text())
    if previous["transformers"] != matrix["transformers"]:
        matrices.RELEASE_MATRICES.mkdir(exist_ok=True)
        (matrices.RELEASE_MATRICES / f"{previous['transformers']}.json").write_text(matrix_json(previous))
    (matrices.RELEASE_MATRICES / f"{matrix['transformers']}.json").unlink(missing_ok=True)  # one per release
    target.write_text(matrix_json(shipped))
    (repo / "docs").mkdir(exist_ok=True)
    (repo / "docs" / "families.md").write_text(docs_page(shipped, statuses, quirks))
    readme = repo / "README.md"
    readme.write_text(replace_readme_table(readme.read_text(), shipped))


def matrix_json(matrix: dict[str, Any]) -> str:
    """The matrix as JSON with one line per family, so a re-measurement diffs family by family."""
    rows = ",\n".join(
        f"  {json.dumps(name)}: {json.dumps(entry, sort_keys=True)}"
        for name, entry in sorted(matrix["families"].items())
    )
    head = {k: v for k, v in matrix.items() if k != "families"}
    return json.dumps(head, sort_keys=True)[:-1] + ',\n "families": {\n' + rows + "\n }\n}\n"


def summary(matrix: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for entry in matrix["families"].values():
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    parts = ", ".join(f"{status} {n}" for status, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"transformers {matrix['transformers']}: {len(matrix['families'])} model types: {parts}"


def main() -> None:
    from ..core.config import register_configs
    from .common import command, report_user_errors

    register_configs()

    @command("families")
    def app(cfg: Any) -> None:
        with report_user_errors():
            matrix = run_families(cfg)
        print(summary(matrix))
        record = {"transformers": matrix["transformers"], "families": matrix["families"]}
        print(json.dumps(record), flush=True)

    app()
