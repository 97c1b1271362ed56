"""The output dir's manifest: which examples are durable for which configs, under which capture recipe.

A *recipe* is everything that determines the rows of a config for a given example (model identity and
dtype, dataset identity, tokenizer and max_length, sampler and its parameters, pre_rope, token_strings).
What it leaves out only chooses *which* rows get written: layers/heads, max_samples, shards, batch size,
device. Two runs with the same recipe therefore write identical rows for the same (example, config).

State lives under ``<output.dir>/.qk_sniffer/`` (hidden, so never part of the dataset's configs)::

    model.json                  identity of the one model this dir belongs to (see outdir.model_identity)
    recipes/<rid>.json          a recipe, by id (a hash of its canonical JSON)
    commits/<rid>/<name>.json   one per flush: the part files it made durable, and the examples (index,
                                example_id, tokens) those files complete, with the configs written for each
    runs/<run>.lock             a running (or dead) writer; flock-ed for its whole life
    trash/<id>.json             deletions planned before a manifest change, finished by any later run

A commit is written (temp file, fsync, rename, fsync dir) only after every file it names is durable, so the
manifest never claims rows that are not on disk; part files no commit names are a killed run's leftovers.

``model.json``, the recipes and the commits travel with the part files on a Hub push/pull (hub.py); runs
and trash are this machine's own. Commit names carry the shard and run id, so commits from several machines
sit side by side; a commit is trusted only while every file it names is on disk (a pull that brought the
commit but not all its parts, or a hand-deleted file, must not make the manifest claim missing rows).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .durable import atomic_file, fsync_dir

if TYPE_CHECKING:
    from .data import Example

STATE_DIR = ".qk_sniffer"
FORMAT = 1


def state_dir(root: Path) -> Path:
    return root / STATE_DIR


# ---------------------------------------------------------------------------------------------- recipes


def recipe_of(metadata: dict[str, Any]) -> dict[str, Any]:
    """The part of a run's metadata that determines the rows of each config (see the module docstring)."""
    from .outdir import model_identity  # noqa: PLC0415 - outdir imports this module

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
    return json.loads(json.dumps(recipe, default=str))  # type: ignore[no-any-return] # as it reads back


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


@dataclass
class Commit:
    """One durable flush. ``files``: config -> [{"name", "rows"}]; ``groups``: [{"configs", "examples"}],
    each example as [index, example_id, tokens]. ``supersedes`` names commits (same recipe) this one
    replaces whole (compaction)."""

    name: str
    recipe: str
    run: str
    files: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    groups: list[dict[str, Any]] = field(default_factory=list)
    supersedes: list[str] = field(default_factory=list)

    @property
    def configs(self) -> set[str]:
        return {c for g in self.groups for c in g["configs"]} | set(self.files)

    def paths(self) -> list[str]:
        return [f"{config}/{f['name']}" for config, files in self.files.items() for f in files]

    def without(self, configs: set[str]) -> Commit:
        groups = [
            {"configs": [c for c in g["configs"] if c not in configs], "examples": g["examples"]}
            for g in self.groups
        ]
        return Commit(
            self.name,
            self.recipe,
            self.run,
            {c: f for c, f in self.files.items() if c not in configs},
            [g for g in groups if g["configs"]],
            list(self.supersedes),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "recipe": self.recipe,
            "run": self.run,
            "files": self.files,
            "groups": self.groups,
            "supersedes": self.supersedes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Commit:
        return cls(
            data["name"],
            data["recipe"],
            data["run"],
            data.get("files", {}),
            data.get("groups", []),
            data.get("supersedes", []),
        )


@dataclass(frozen=True)
class ExampleDone:
    example_id: int
    tokens: int
    configs: frozenset[str]


def commit_path(root: Path, recipe: str, name: str) -> Path:
    return state_dir(root) / "commits" / recipe / f"{name}.json"


def write_json_atomic(path: Path, data: Any) -> None:
    """Temp file, fsync, rename, fsync the directory: the final name only ever holds complete JSON."""
    with atomic_file(path, "w") as f:
        json.dump(data, f, sort_keys=True, default=str)
    fsync_dir(path.parent)


def write_commit(root: Path, commit: Commit) -> None:
    write_json_atomic(commit_path(root, commit.recipe, commit.name), commit.to_json())


def write_recipe(root: Path, recipe: dict[str, Any]) -> str:
    rid = recipe_id(recipe)
    path = state_dir(root) / "recipes" / f"{rid}.json"
    if not path.exists():
        write_json_atomic(path, recipe)
    return rid


class Manifest:
    """Every commit and recipe of one output dir, as read at one moment.

    ``commits``: the live ones (trusted, not superseded); ``superseded``: replaced whole by a trusted commit;
    ``untrusted``: the rest, naming a file that is not on disk. ``incoming`` reads a second dir's
    ``.qk_sniffer`` as well and ``remote`` counts those paths as present: together they show the manifest a
    pull would produce before anything is downloaded into ``root``."""

    def __init__(self, root: Path, *, incoming: Path | None = None, remote: Collection[str] = ()) -> None:
        self.root = root
        self.recipes: dict[str, dict[str, Any]] = {}
        by_key: dict[tuple[str, str], Commit] = {}
        for base in [root] if incoming is None else [incoming, root]:  # the dir's own files win
            state = state_dir(base)
            for path in sorted((state / "recipes").glob("*.json")):
                self.recipes[path.stem] = json.loads(path.read_text())
            for path in sorted((state / "commits").glob("*/*.json")):
                commit = Commit.from_json(json.loads(path.read_text()))
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
        seen: dict[int, tuple[int, int, set[str]]] = {}
        for commit in self.of_recipe(rid):
            for group in commit.groups:
                for index, example_id, tokens in group["examples"]:
                    entry = seen.setdefault(int(index), (int(example_id), int(tokens), set()))
                    entry[2].update(group["configs"])
        return {i: ExampleDone(eid, tok, frozenset(cfgs)) for i, (eid, tok, cfgs) in seen.items()}

    def recipes_by_config(self) -> dict[str, set[str]]:
        owners: dict[str, set[str]] = {}
        for commit in self.commits:
            for config in commit.configs:
                owners.setdefault(config, set()).add(commit.recipe)
        return owners

    def referenced(self) -> set[str]:
        """Relative paths of every part file a live commit names."""
        return {p for c in self.commits for p in c.paths()}

    def named(self) -> set[str]:
        """Relative paths of every part file any commit on disk names (live, superseded or untrusted)."""
        return {p for c in self.all_commits for p in c.paths()}

    def mixed_configs(self) -> dict[str, set[str]]:
        """Configs whose live rows come from more than one recipe."""
        return {c: rids for c, rids in self.recipes_by_config().items() if len(rids) > 1}

    def totals(self, rid: str) -> tuple[int, int]:
        """(examples, tokens) durable under ``rid`` for at least one config."""
        done = self.done(rid)
        return len(done), sum(d.tokens for d in done.values())


# ---------------------------------------------------------------------------------------- used by a run


class ResumeFilter:
    """Skips examples whose rows are durable for every config of this run; tells the rest which configs
    they still need. Refuses when an example differs from the one recorded under the same recipe."""

    def __init__(self, done: dict[int, ExampleDone], configs: list[str], root: Path) -> None:
        self.done = done
        self.configs = tuple(configs)
        self.root = root
        self.skipped = 0
        self._none: frozenset[str] = frozenset()

    def filter(self, examples: Iterator[Example]) -> Iterator[Example]:
        for example in examples:
            recorded = self.done.get(example.index)
            if recorded is not None:
                if (recorded.example_id, recorded.tokens) != (example.example_id, example.length):
                    from .errors import UserError  # noqa: PLC0415

                    raise UserError(
                        f"output.dir={str(self.root)!r}: example {example.index} is not the one recorded "
                        f"there with the same recipe (example_id {recorded.example_id}, {recorded.tokens} "
                        f"tokens; now {example.example_id}, {example.length}): the dataset changed; use "
                        "another output.dir"
                    )
                if recorded.configs.issuperset(self.configs):
                    self.skipped += 1
                    continue
            yield example

    def done_for(self, index: int) -> frozenset[str]:
        recorded = self.done.get(index)
        return recorded.configs if recorded is not None else self._none

    def todo(self, index: int) -> tuple[str, ...]:
        done = self.done_for(index)
        return tuple(c for c in self.configs if c not in done)


def committer(root: Path, rid: str, run: str, shard: int) -> Callable[[int, list[Any], list[Any]], None]:
    """The writer's ``on_durable``: record a flush's examples and files as one commit."""

    def commit(seq: int, examples: list[Any], written: list[Any]) -> None:
        files: dict[str, list[dict[str, Any]]] = {}
        for rel, rows, _size in written:
            config, name = rel.split("/")
            files.setdefault(config, []).append({"name": name, "rows": rows})
        groups: dict[tuple[str, ...], list[list[int]]] = {}
        for index, example_id, tokens, configs in examples:
            groups.setdefault(tuple(configs), []).append([index, example_id, tokens])
        write_commit(
            root,
            Commit(
                f"{shard:03d}-{run}-{seq:05d}",
                rid,
                run,
                files,
                [{"configs": list(c), "examples": e} for c, e in groups.items() if c],
            ),
        )

    return commit
