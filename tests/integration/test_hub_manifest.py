"""The manifest travels with the data: a capture continued on a second machine through the Hub branch (the
recording stand-in of HfApi in hub_stand_in) resumes, checks recipes, replaces and compacts exactly as it
would in one dir, and nothing machine-local ever reaches the branch."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from helpers import compose_cfg, corpus, files_with_bytes, rows, save_checkpoint
from hub_stand_in import REPO_ID as REPO
from hub_stand_in import FakeHub

from qk_sniffer.commands import publish
from qk_sniffer.commands.compact import compact
from qk_sniffer.core.errors import UserError
from qk_sniffer.pipeline.runner import run
from qk_sniffer.publish.branches import branch_name
from qk_sniffer.publish.sync import local_files
from qk_sniffer.store import Store
from qk_sniffer.store.layout import HUB_SYNC, METADATA
from qk_sniffer.store.manifest import Manifest, recipe_id

PUSH = ("output.hub.push=true", f"output.hub.repo_id={REPO}")
LOCAL_ONLY = re.compile(r"(^|/)(runs|trash)/|\.lock$|\.tmp$|^\.qk_sniffer_(hub|pull)")


@pytest.fixture
def sources(tmp_path) -> tuple[Path, Path]:
    return save_checkpoint(tmp_path, "qwen3"), corpus(tmp_path / "docs.jsonl", 8)


def cfg(sources: tuple[Path, Path], out_dir: Path, *overrides: str):
    checkpoint, data = sources
    return compose_cfg(
        [
            f"model.name={checkpoint}",
            "model.dtype=float32",
            "dataset=local",
            f"dataset.data_files={data}",
            "capture.layers=[0]",
            "inference.batch_size=1",  # bit-exact across runs that batch different examples together
            "output.flush_every_examples=2",
            f"output.dir={out_dir}",
            *overrides,
        ]
    )


def branch_files(fake: FakeHub, branch: str, root: Path) -> Path:
    """The branch's tree written out as a dir, to read it the way a dir is read."""
    for path, data in fake.tree(REPO, branch).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return root


def shared(root: Path) -> dict[str, bytes]:
    return {f: b for f, b in files_with_bytes(root).items() if f in local_files(Store(root))}


def examples_by_run(root: Path) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for commit in Manifest(root).commits:
        out.setdefault(commit.run, set()).update(i for g in commit.groups for i, *_ in g["examples"])
    return out


def assert_nothing_local_was_pushed(fake: FakeHub) -> None:
    pushed = {path for call in fake.calls if call[0] == "create_commit" for _, path in call[2]}
    assert pushed and not [p for p in pushed if LOCAL_ONLY.search(p)]


def test_second_machine_resumes_from_the_branch_and_the_branch_equals_one_run(fake, sources, tmp_path):
    a, b, ref = tmp_path / "machine-a", tmp_path / "machine-b", tmp_path / "ref"
    run(cfg(sources, a, "dataset.max_samples=4", *PUSH))
    branch = branch_name(cfg(sources, a))
    result = run(cfg(sources, b, "dataset.max_samples=8", *PUSH))
    run(cfg(sources, ref, "dataset.max_samples=8"))

    # B pulled A's commits before reading its manifest: it skipped A's examples and captured only the rest.
    assert result.resumed_examples == 4
    (run_a,) = examples_by_run(a)
    by_run = examples_by_run(b)
    assert by_run.pop(run_a) == {0, 1, 2, 3} and list(by_run.values()) == [{4, 5, 6, 7}]
    # The branch (and B's dir) hold exactly the rows of one uninterrupted 8-example run: none lost or doubled.
    reference = rows(ref)
    assert rows(branch_files(fake, branch, tmp_path / "branch-1")) == reference == rows(b)
    remote_meta = json.loads(fake.tree(REPO, branch)[METADATA])
    ref_meta = json.loads((ref / METADATA).read_text())
    assert (remote_meta["examples"], remote_meta["tokens"]) == (8, ref_meta["tokens"])
    assert ref_meta["examples"] == 8

    # Machine-local state lying around is never pushed.
    (a / ".qk_sniffer/runs").mkdir(exist_ok=True)
    (a / ".qk_sniffer/runs/0123456789ab.lock").write_text('{"run": "0123456789ab"}')
    (a / ".qk_sniffer/trash").mkdir(exist_ok=True)
    (a / ".qk_sniffer/trash/planned.json.tmp").write_text("{}")
    next(a.glob(".qk_sniffer/commits/*")).joinpath("half-written.json.tmp").write_text("{")
    # A compacts and publishes: it pulls B's commits (its qk_sniffer.json now counts all 8 examples) and
    # deletes its own superseded commits and parts on the branch in the same one commit.
    old_a = sorted(f for f in shared(a) if f.endswith(".parquet") or "/commits/" in f)
    compact(Store(a))
    plan = publish.publish_dir(publish.parse([f"output.dir={a}", f"output.hub.repo_id={REPO}"]))
    assert sorted(plan.deleted) == sorted(f for f in old_a if not (a / f).exists()) and plan.deleted
    assert json.loads((a / METADATA).read_text())["examples"] == 8
    assert rows(branch_files(fake, branch, tmp_path / "branch-2")) == reference
    # B publishes: it pulls A's compaction and finishes it here (A's old files go), so no row is doubled.
    plan = publish.publish_dir(publish.parse([f"output.dir={b}", f"output.hub.repo_id={REPO}"]))
    assert plan.deleted == [] and any("/commits/" in f for f in plan.pulled)
    assert rows(b) == reference
    remote = fake.tree(REPO, branch)
    assert {f: remote[f] for f in shared(b)} == shared(b) and set(remote) == {*shared(b), ".gitattributes"}
    assert_nothing_local_was_pushed(fake)


def test_other_recipe_on_the_branch_is_refused_and_replace_takes_the_configs_over(fake, sources, tmp_path):
    a, b, ref = tmp_path / "machine-a", tmp_path / "machine-b", tmp_path / "ref"
    run(cfg(sources, a, "dataset.max_samples=4", *PUSH))
    branch = branch_name(cfg(sources, a))
    before, commits = dict(fake.tree(REPO, branch)), len(fake.commit_ops(branch))
    configs = sorted(p.name for p in a.glob("l*"))

    with pytest.raises(UserError) as err:
        run(cfg(sources, b, "dataset.max_samples=4", "sampler.base_rate=0.5", *PUSH))
    assert str(err.value) == (
        f"output.hub.branch='{branch}' of {REPO}: configs {', '.join(configs[:4])} and "
        f"{len(configs) - 4} more already hold rows captured with a different recipe (on the branch -> "
        "this run: sampler.base_rate: 1.0 -> 0.5). Use output.mode=replace to replace those configs (their "
        "old files are deleted once the new rows are complete), or another output.hub.branch"
    )
    assert not b.exists()
    assert fake.tree(REPO, branch) == before and len(fake.commit_ops(branch)) == commits

    run(cfg(sources, b, "dataset.max_samples=4", "sampler.base_rate=0.5", "output.mode=replace", *PUSH))
    run(cfg(sources, ref, "dataset.max_samples=4", "sampler.base_rate=0.5"))
    # One commit adds B's rows and deletes every part and commit file of A's recipe.
    (last,) = fake.commit_ops(branch)[commits:]
    a_data = sorted(f for f in shared(a) if f.endswith(".parquet") or "/commits/" in f)
    assert sorted(path for op, path in last if op == "delete") == a_data
    assert rows(branch_files(fake, branch, tmp_path / "branch")) == rows(ref) == rows(b)
    recipes = json.loads(fake.tree(REPO, branch)[METADATA])["recipes"]
    assert [r["recipe"]["sampler"]["base_rate"] for r in recipes] == [0.5]
    assert_nothing_local_was_pushed(fake)


def test_shards_on_two_machines_merge_through_the_branch(fake, sources, tmp_path):
    a, b, ref = tmp_path / "machine-a", tmp_path / "machine-b", tmp_path / "ref"
    shards = ("dataset.max_samples=4", "dataset.num_shards=2")
    run(cfg(sources, a, *shards, "dataset.shard_index=0", *PUSH))
    run(cfg(sources, b, *shards, "dataset.shard_index=1", *PUSH))
    run(cfg(sources, ref, "dataset.max_samples=4"))
    names = {c.name.split("-")[0] for c in Manifest(b).commits}
    assert names == {"000", "001"} and sorted(examples_by_run(b).values(), key=min) == [{0, 2}, {1, 3}]
    assert rows(b) == rows(ref)
    assert json.loads((b / METADATA).read_text())["examples"] == 4


def test_a_pull_whose_parts_do_not_arrive_is_refused_and_such_commits_are_not_trusted(
    fake, sources, tmp_path
):
    a, b = tmp_path / "machine-a", tmp_path / "machine-b"
    run(cfg(sources, a, "dataset.max_samples=4", *PUSH))
    lost = sorted(f for f in shared(a) if f.endswith(".parquet"))[0]
    fake.lost_in_download.add(lost)
    with pytest.raises(UserError) as err:
        run(cfg(sources, b, "dataset.max_samples=4", *PUSH))
    assert str(err.value) == f"the download of {lost} from the branch failed; nothing was pulled"
    assert not b.exists()

    # The same state reached any other way (a pull cut short, a file deleted by hand): the commit naming a
    # missing file is not trusted, so its examples are not "done" and will be captured again.
    pulled = tmp_path / "pulled"
    shutil.copytree(a, pulled, ignore=shutil.ignore_patterns(HUB_SYNC))
    (pulled / lost).unlink()
    manifest = Manifest(pulled)
    (broken,) = [c for c in manifest.all_commits if lost in c.paths()]
    assert manifest.untrusted == [broken] and broken not in manifest.commits
    rid = recipe_id(manifest.recipes[broken.recipe])
    broken_examples = {i for g in broken.groups for i, *_ in g["examples"]}
    assert set(manifest.done(rid)) == {0, 1, 2, 3} - broken_examples and broken_examples
    # A repair drops that commit (naming the file) and then its other files, which no commit names now.
    store = Store(pulled)
    (damage,) = store.repair()
    assert damage.path == lost and damage.commit == f"{broken.recipe}/{broken.name}"
    store.collect_garbage()
    assert not any((pulled / p).exists() for p in broken.paths())
    assert set(store.manifest().done(rid)) == {0, 1, 2, 3} - broken_examples
