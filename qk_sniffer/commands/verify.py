"""``python -m qk_sniffer.verify output.dir=PATH [repair=true]``: what a capture dir holds, and its damage.

It hashes every committed part file against its commit (``fast=true`` trusts the digest cache for files
whose size and times are unchanged, and says how many it did not read), checks the manifest can be read,
that the card lists exactly the committed files, and that nothing foreign sits where the tool writes. It
prints one line per finding, then one JSON object as its last line, and exits 1 when anything is damaged
(naming the command that repairs it). ``repair=true`` drops damaged commits, rewrites the metadata and
card, and removes the files no commit needs; the next capture run then captures the dropped examples
again.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml
from omegaconf import DictConfig

from ..core.config import register_configs
from ..publish import documents
from ..store import Store
from ..store.layout import CARD
from .common import capture_dir, command, report_user_errors

register_configs()


def card_listing(store: Store) -> dict[str, list[str]] | None:
    """config -> files, as the card's front matter lists them; None without a readable card."""
    try:
        text = store.paths.card.read_text()
        matter: Any = yaml.safe_load(text.split("---", 2)[1]) if text.startswith("---") else None
        return {
            c["config_name"]: sorted(
                p
                for d in c["data_files"]
                for p in (d["path"] if isinstance(d["path"], list) else [d["path"]])
            )
            for c in matter["configs"]
        }
    except (OSError, IndexError, KeyError, TypeError, yaml.YAMLError):
        return None


def inspect(store: Store, fast: bool = False) -> dict[str, Any]:
    """Everything the report says, as plain data."""
    view = store.view()
    manifest = store.manifest()
    check = store.check_files(fast=fast)
    damage = [d.line() for d in check.damage]
    listed = card_listing(store)
    expected = {c: [p.rel for p in view.files[c]] for c in view.configs}
    if view.configs and listed is None:
        damage.append(f"{CARD}: missing or unreadable, so no config can be loaded (a repair writes it)")
    elif view.configs and listed != expected:
        damage.append(f"{CARD}: lists other files than the commits name (it is rewritten by a repair)")
    examples = {(c.recipe, int(e[0])) for c in manifest.commits for g in c.groups for e in g["examples"]}
    return {
        "ok": not damage and not store.foreign_entries(),
        "dir": str(store.root),
        "configs": len(view.configs),
        "q_configs": sum(c.endswith("q") for c in view.configs),
        "k_configs": sum(c.endswith("k") for c in view.configs),
        "rows": view.total_rows,
        "files": len(view.paths()),
        "commits": len(manifest.commits),
        "recipes": len({c.recipe for c in manifest.commits}),
        "examples": len(examples),
        "damage": damage,
        "foreign": store.foreign_entries(),
        "leftovers": sum(p.name.startswith("part-") for p in store.garbage()),
        "hashed": check.hashed,
        "cached": check.cached,
    }


def report(state: dict[str, Any], command: str) -> str:
    lines = [
        f"qk_sniffer.verify: output.dir={state['dir']!r}",
        f"  {state['configs']} configs ({state['q_configs']} q, {state['k_configs']} k), "
        f"{state['rows']} rows in {state['files']} files, {state['commits']} commits of "
        f"{state['recipes']} recipes, {state['examples']} examples",
    ]
    lines += [f"  damaged: {d}" for d in state["damage"]]
    lines += [f"  foreign: {f}" for f in state["foreign"]]
    if state["leftovers"]:
        lines.append(
            f"  {state['leftovers']} part files no commit names (not part of the dataset; removed by a "
            "repair or the next run)"
        )
    if state["cached"]:
        lines.append(
            f"  fast: {state['cached']} files were not read (their digests come from the cache, by size and "
            "times); run without fast=true to hash every file"
        )
    if state["damage"]:
        lines.append(
            f"  repair: {command} repair=true  (then run the capture command again: it captures the "
            "dropped examples again)"
        )
    elif state["foreign"]:
        lines.append("  move the foreign files out of the dir: qk_sniffer refuses to write to it until then")
    else:
        checked = "its recorded size" if state["cached"] else "its commit's sha256"
        lines.append(f"  ok: every committed file is on disk and matches {checked}")
    return "\n".join(lines)


@command("verify")
def main(cfg: DictConfig) -> None:
    with report_user_errors():
        store = capture_dir(cfg.output.dir, "qk_sniffer.verify")
        if cfg.repair:
            store.check_accountable()
            documents.settle(store, change=store.repair)
        state = inspect(store, fast=cfg.fast)
    print(report(state, f"python -m qk_sniffer.verify output.dir={store.root}"))
    print(json.dumps(state, sort_keys=True))
    if not state["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
