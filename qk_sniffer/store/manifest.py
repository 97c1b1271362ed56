"""The manifest: which examples are durable for which configs, under which capture recipe.

A *recipe* is everything that determines the rows of a config for a given example (model identity and
dtype, dataset identity, tokenizer and max_length, sampler and its parameters, pre_rope, token_strings).
What it leaves out only chooses *which* rows get written: layers/heads, max_samples, shards, batch size,
device. Two runs with the same recipe therefore write identical rows for the same (example, config).

A *commit* records one durable flush: each part file it made durable (name, rows, bytes, sha256) and the
examples (index, example_id, tokens, token-id hash) those files complete, with the configs written for
each. The hash is what tells an edited text from the one captured (format 3; earlier commits have none). It is
written only after every file it names is durable, so the manifest never claims rows that are not on disk.
A commit is *trusted* while every file it names is on disk; :mod:`.store` also checks rows and hashes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import DamagedFile, read_json, write_json_atomic
from .layout import Paths

FORMAT = 3


# ---------------------------------------------------------------------------------------------- recipes


def model_identity(metadata: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs "the same model": its weights (name + revision, and for a local dir the digest
    of its files, which the metadata records as ``weights``) or, without a name, its shape."""
    model = metadata.get("model", {})
    identity = {
        "name": model.get("name") if not model.get("random_init") else None,
        "revision": model.get("revision"),
        "config_overrides": model.get("config_overrides") or {},
        "pre_rope": metadata.get("capture", {}).get("pre_rope", False),
    }
    if metadata.get("weights"):
        identity["weights"] = metadata["weights"]["sha256"]
    if identity["name"] is None:
        identity["layout"] = metadata.get("layout")
        identity["seed"] = model.get("seed")
    return plain_json(identity)


def plain_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists): live and recorded values compare equal."""
    return json.loads(json.dumps(value, default=str))


def recipe_of(metadata: dict[str, Any]) -> dict[str, Any]:
    """The part of a run's metadata that determines the rows of each config (see the module docstring)."""
    dataset = metadata.get("dataset", {})
    data: dict[str, Any] = {
        k: dataset.get(k) for k in ("path", "name", "data_files", "split", "text_column", "id_column")
    }
    if dataset.get("path") == "synthetic":
        data.update(seq_len=dataset.get("seq_len"), seed=dataset.get("seed"))
    capture = metadata.get("capture", {})
    recipe = {
        "model": {**model_identity(metadata), "dtype": metadata.get("model", {}).get("dtype")},
        "dataset": data,
        "tokenizer": {
            "name": metadata.get("tokenizer", {}).get("name"),
            "max_length": metadata.get("max_length"),
        },
        "sampler": metadata.get("sampler", {}),
        "token_strings": bool(capture.get("token_strings", False)),
    }
    return plain_json(recipe)  # type: ignore[no-any-return]


def recipe_id(recipe: dict[str, Any]) -> str:
    canonical = json.dumps(recipe, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def recipe_difference(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs, with dotted keys."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += recipe_difference(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


# ---------------------------------------------------------------------------------------------- commits


@dataclass(frozen=True)
class PartFile:
    """One part file as a commit records it."""

    config: str
    name: str
    rows: int
    bytes: int | None = None  # None in commits written before hashes were recorded
    sha256: str | None = None

    @property
    def rel(self) -> str:
        return f"{self.config}/{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "rows": self.rows, "bytes": self.bytes, "sha256": self.sha256}


@dataclass
class Commit:
    """One durable flush. ``groups``: [{"configs", "examples"}], each example as [index, example_id, tokens,
    token-id hash] (format 3; earlier commits recorded no hash).
    ``supersedes`` names commits (same recipe) this one replaces whole (compaction)."""

    name: str
    recipe: str
    run: str
    parts: list[PartFile] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    supersedes: list[str] = field(default_factory=list)

    @property
    def configs(self) -> set[str]:
        return {c for g in self.groups for c in g["configs"]} | {p.config for p in self.parts}

    def paths(self) -> list[str]:
        return [p.rel for p in self.parts]

    def example_ids(self, config: str) -> set[int]:
        return {int(e[1]) for g in self.groups if config in g["configs"] for e in g["examples"]}

    def without(self, configs: set[str]) -> Commit:
        groups = [
            {"configs": [c for c in g["configs"] if c not in configs], "examples": g["examples"]}
            for g in self.groups
        ]
        return Commit(
            self.name,
            self.recipe,
            self.run,
            [p for p in self.parts if p.config not in configs],
            [g for g in groups if g["configs"]],
            list(self.supersedes),
        )

    def to_json(self) -> dict[str, Any]:
        files: dict[str, list[dict[str, Any]]] = {}
        for part in self.parts:
            files.setdefault(part.config, []).append(part.to_json())
        return {
            "format": FORMAT,
            "name": self.name,
            "recipe": self.recipe,
            "run": self.run,
            "files": files,
            "groups": self.groups,
            "supersedes": self.supersedes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Commit:
        parts = [
            PartFile(config, f["name"], int(f["rows"]), f.get("bytes"), f.get("sha256"))
            for config, entries in data.get("files", {}).items()
            for f in entries
        ]
        return cls(
            str(data["name"]),
            str(data["recipe"]),
            str(data["run"]),
            parts,
            list(data.get("groups", [])),
            list(data.get("supersedes", [])),
        )


@dataclass(frozen=True)
class ExampleDone:
    example_id: int
    tokens: int
    configs: frozenset[str]
    token_hash: str | None = None  # None: recorded by a commit from before hashes (format 2)


def write_commit(paths: Paths, commit: Commit) -> None:
    write_json_atomic(paths.commit(commit.recipe, commit.name), commit.to_json())


def read_commit(path: Path) -> Commit:
    data = read_json(path)
    try:
        commit = Commit.from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DamagedFile(path, f"not a commit ({type(exc).__name__}: {exc})") from None
    if path.stem != commit.name or path.parent.name != commit.recipe:
        raise DamagedFile(path, "its name does not match the commit it holds")
    return commit


class Manifest:
    """Every commit and recipe of one output dir, as read at one moment.

    ``commits``: the live ones (every file on disk, not superseded); ``superseded``: replaced whole by a
    trusted commit; ``untrusted``: the rest, naming a file that is not on disk; ``damaged``: state files
    that cannot be read. ``incoming`` reads a second dir's ``.qk_sniffer`` as well and ``remote`` counts
    those paths as present: together they show the manifest a pull would produce before anything moves."""

    def __init__(self, root: Path, *, incoming: Path | None = None, remote: Collection[str] = ()) -> None:
        self.root = root
        self.recipes: dict[str, dict[str, Any]] = {}
        self.damaged: list[Path] = []
        by_key: dict[tuple[str, str], Commit] = {}
        for base in [root] if incoming is None else [incoming, root]:  # the dir's own files win
            paths = Paths(base)
            for path in sorted(paths.recipes.glob("*.json")):
                try:
                    self.recipes[path.stem] = read_json(path)
                except DamagedFile:
                    self.damaged.append(path)
            for path in sorted(paths.commits.glob("*/*.json")):
                try:
                    commit = read_commit(path)
                except DamagedFile:
                    self.damaged.append(path)
                    continue
                by_key[(commit.recipe, commit.name)] = commit
        self.all_commits = [by_key[k] for k in sorted(by_key)]
        bases = [root] if incoming is None else [root, incoming]
        remote = set(remote)

        def on_disk(commit: Commit) -> bool:
            return all(p in remote or any((b / p).is_file() for b in bases) for p in commit.paths())

        trusted = {(c.recipe, c.name) for c in self.all_commits if on_disk(c)}
        # Only a trusted commit may supersede: a compaction whose merged file is missing replaces nothing.
        superseded = {
            (c.recipe, s) for c in self.all_commits if (c.recipe, c.name) in trusted for s in c.supersedes
        }
        self.superseded = [c for c in self.all_commits if (c.recipe, c.name) in superseded]
        live = [c for c in self.all_commits if (c.recipe, c.name) not in superseded]
        self.commits = [c for c in live if (c.recipe, c.name) in trusted]
        self.untrusted = [c for c in live if (c.recipe, c.name) not in trusted]

    def of_recipe(self, rid: str) -> list[Commit]:
        return [c for c in self.commits if c.recipe == rid]

    def done(self, rid: str) -> dict[int, ExampleDone]:
        """Per example index, the configs durable for it under recipe ``rid``."""
        return self.examples([rid])

    def examples(self, rids: Collection[str]) -> dict[int, ExampleDone]:
        """Per example index, what the commits of recipes ``rids`` record of it: its id, tokens and token-id
        hash (the first recorded), and the configs durable for it under any of them."""
        seen: dict[int, tuple[int, int, str | None, set[str]]] = {}
        for commit in self.commits:
            if commit.recipe not in rids:
                continue
            for group in commit.groups:
                for entry in group["examples"]:
                    index, example_id, tokens = (int(v) for v in entry[:3])
                    digest = str(entry[3]) if len(entry) > 3 else None
                    record = seen.setdefault(index, (example_id, tokens, digest, set()))
                    record[3].update(group["configs"])
        return {i: ExampleDone(eid, tok, frozenset(cfgs), h) for i, (eid, tok, h, cfgs) in seen.items()}

    def same_texts(self, recipe: dict[str, Any]) -> list[str]:
        """The recipes that read the same dataset with the same tokenizer as ``recipe``: an example index
        means the same token ids under each of them (whatever their sampler or model)."""
        return [
            rid
            for rid, other in self.recipes.items()
            if other.get("dataset") == recipe.get("dataset")
            and other.get("tokenizer") == recipe.get("tokenizer")
        ]

    def recipes_by_config(self) -> dict[str, set[str]]:
        owners: dict[str, set[str]] = {}
        for commit in self.commits:
            for config in commit.configs:
                owners.setdefault(config, set()).add(commit.recipe)
        return owners

    def referenced(self) -> set[str]:
        """Relative paths of every part file a live commit names: exactly the dataset's files."""
        return {p for c in self.commits for p in c.paths()}

    def mixed_configs(self) -> dict[str, set[str]]:
        """Configs whose live rows come from more than one recipe."""
        return {c: rids for c, rids in self.recipes_by_config().items() if len(rids) > 1}

    def totals(self, rid: str) -> tuple[int, int]:
        """(examples, tokens) durable under ``rid`` for at least one config."""
        done = self.done(rid)
        return len(done), sum(d.tokens for d in done.values())
