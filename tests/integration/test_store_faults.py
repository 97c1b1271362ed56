"""Whatever happens to a capture dir, ``load_dataset`` returns each captured row exactly once, or the
command refuses with one message. Every event goes through the real CLI; what a user would load is read
back with ``datasets.load_dataset`` from the card."""

from __future__ import annotations

import errno
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import compose_cfg, files_with_bytes, loaded_rows, run_cli, start_cli

from qk_sniffer.core.errors import UserError
from qk_sniffer.pipeline.runner import run
from qk_sniffer.store import Store
from qk_sniffer.store.layout import CARD, METADATA

ARGS = ["capture.layers=[0]", "output.flush_every_examples=2", "wandb=disabled"]


def capture(out: Path, *extra: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli([f"output.dir={out}", *ARGS, *extra], cwd=cwd)


def one_message(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("qk_sniffer: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A clean capture of the embedded default (several commits) and what load_dataset returns from it."""
    base = tmp_path_factory.mktemp("reference")
    out = base / "capture"
    proc = capture(out, cwd=base)
    assert proc.returncode == 0, proc.stderr
    assert len(list(out.glob(".qk_sniffer/commits/*/*.json"))) >= 3
    return out, loaded_rows(out, base / "cache")


@pytest.fixture
def copy(reference, tmp_path):
    out = tmp_path / "capture"
    shutil.copytree(reference[0], out)
    return out


def commits(out: Path) -> list[Path]:
    return sorted(out.glob(".qk_sniffer/commits/*/*.json"))


def named_files(commit: Path) -> list[str]:
    data = json.loads(commit.read_text())
    return [f"{config}/{f['name']}" for config, files in data["files"].items() for f in files]


def assert_exactly_the_reference(out: Path, reference, tmp_path: Path) -> None:
    assert loaded_rows(out, tmp_path / "check") == reference[1]
    # Nothing but committed files remains: no leftover that a glob or a push could pick up.
    on_disk = {p.relative_to(out).as_posix() for p in out.glob("l*/*")}
    assert on_disk == set(Store(out).view().paths())


# ------------------------------------------------------------------------------------------- damage


def test_a_removed_part_is_named_and_only_its_examples_are_captured_again(copy, reference, tmp_path):
    lost = named_files(commits(copy)[1])[0]
    (copy / lost).unlink()
    proc = capture(copy, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"{lost}: missing; commit " in proc.stdout + proc.stderr
    assert "resumed:" in proc.stdout  # the other commits' examples were skipped
    assert_exactly_the_reference(copy, reference, tmp_path)


def test_a_corrupted_part_is_found_by_its_hash(copy, reference, tmp_path):
    assert Store(copy).verify() == []  # the digest cache now holds every committed file
    damaged = copy / named_files(commits(copy)[0])[0]
    before = damaged.stat()
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, written in place: same size, same inode
    with open(damaged, "r+b") as f:
        f.write(data)
    os.utime(damaged, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the same mtime
    after = damaged.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )
    check = run_cli([f"output.dir={copy}"], cwd=tmp_path, module="qk_sniffer.verify")
    assert check.returncode == 1, check.stderr
    assert "does not match the recorded sha256" in check.stdout
    assert json.loads(check.stdout.splitlines()[-1])["cached"] == 0  # every file was read
    assert f"repair: python -m qk_sniffer.verify output.dir={copy} repair=true" in check.stdout
    assert json.loads(check.stdout.splitlines()[-1])["ok"] is False
    proc = capture(copy, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "does not match the recorded sha256" in proc.stdout + proc.stderr
    assert_exactly_the_reference(copy, reference, tmp_path)


def test_a_truncated_part_and_verify_repair(copy, reference, tmp_path):
    damaged = copy / named_files(commits(copy)[-1])[0]
    damaged.write_bytes(damaged.read_bytes()[:40])
    repaired = run_cli([f"output.dir={copy}", "repair=true"], cwd=tmp_path, module="qk_sniffer.verify")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    state = json.loads(repaired.stdout.splitlines()[-1])
    assert state["ok"] and state["damage"] == [] and not damaged.exists()
    # The dataset is consistent (fewer examples) and loads; the next run fills the gap.
    assert len(loaded_rows(copy, tmp_path / "partial")) < len(reference[1])
    proc = capture(copy, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_exactly_the_reference(copy, reference, tmp_path)


def test_a_removed_commit_leaves_no_orphan_rows(copy, reference, tmp_path):
    commits(copy)[2].unlink()
    proc = capture(copy, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_exactly_the_reference(copy, reference, tmp_path)


def test_a_truncated_commit_is_named_and_its_rows_captured_again(copy, reference, tmp_path):
    broken = commits(copy)[1]
    broken.write_text(broken.read_text()[:30])
    proc = capture(copy, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (
        f"{broken.relative_to(copy).as_posix()}: cannot be read (not valid JSON)" in proc.stdout + proc.stderr
    )
    assert_exactly_the_reference(copy, reference, tmp_path)


def test_compaction_keeps_orphans_out(copy, reference, tmp_path):
    commits(copy)[0].unlink()  # its files are orphans now
    proc = run_cli([f"output.dir={copy}"], cwd=tmp_path, module="qk_sniffer.compact")
    assert proc.returncode == 0, proc.stderr
    assert all(len(list(d.glob("*.parquet"))) == 1 for d in copy.glob("l*"))
    rows = loaded_rows(copy, tmp_path / "compacted")
    assert len(rows) == len(set(rows)) and set(rows) < set(reference[1])


def test_verify_fast_trusts_the_cache_and_says_how_many_files_it_did_not_read(copy):
    from qk_sniffer.commands.verify import inspect, report

    store = Store(copy)
    files = len(store.view().paths())
    full = inspect(store)
    assert full["ok"] and (full["hashed"], full["cached"]) == (files, 0)
    fast = inspect(Store(copy), fast=True)
    assert fast["ok"] and (fast["hashed"], fast["cached"]) == (0, files)
    text = report(fast, "python -m qk_sniffer.verify")
    assert f"fast: {files} files were not read" in text and "run without fast=true" in text
    assert "matches its recorded size" in text


# ------------------------------------------------------------------------------ dirs we cannot account for


def test_a_lost_manifest_is_refused_and_nothing_changes(copy, tmp_path):
    shutil.rmtree(copy / ".qk_sniffer")
    before = files_with_bytes(copy)
    message = one_message(capture(copy, cwd=tmp_path))
    assert "holds qk_sniffer.json but no manifest (.qk_sniffer/)" in message
    assert files_with_bytes(copy) == before


def test_a_users_folder_with_a_readme_and_a_stray_metadata_file_is_refused(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / CARD).write_text("# my notes\n")
    (folder / METADATA).write_text("{}")
    before = files_with_bytes(folder)
    message = one_message(capture(folder, cwd=tmp_path))
    assert f"output.dir={str(folder)!r} holds qk_sniffer.json but no manifest" in message
    assert files_with_bytes(folder) == before and not (folder / ".qk_sniffer").exists()


def test_a_config_dir_linked_out_of_the_dir_is_refused(copy, tmp_path):
    outside = tmp_path / "elsewhere"
    shutil.move(copy / "l00h00q", outside)
    (copy / "l00h00q").symlink_to(outside)
    before, outside_before = files_with_bytes(copy), files_with_bytes(outside)
    for extra in ([], ["output.mode=replace", "sampler=uniform"]):
        message = one_message(capture(copy, *extra, cwd=tmp_path))
        assert "l00h00q is a symbolic link" in message
    assert files_with_bytes(copy) == before and files_with_bytes(outside) == outside_before


def test_a_foreign_file_in_a_config_dir_is_refused(copy, tmp_path):
    (copy / "l00h00q" / "notes.txt").write_text("mine")
    message = one_message(capture(copy, cwd=tmp_path))
    assert "l00h00q/notes.txt was not made by qk_sniffer" in message
    assert (copy / "l00h00q" / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------------- compaction killed


KILL_POINTS = {
    # after the merged files are written, before their commit
    "merged": ("qk_sniffer.store.compact", "_merge"),
    # after the superseding commit, before the card lists the merged files
    "committed": ("qk_sniffer.store.compact", "write_commit"),
    # after the card, before the old files are deleted
    "card": ("qk_sniffer.publish.card", "write_card"),
    # in the middle of deleting the old files
    "deleting": ("qk_sniffer.store.store.Store", "_unlink"),
}

KILLER = textwrap.dedent(
    """
    import importlib, os, signal, sys
    module, name, after = sys.argv[1], sys.argv[2], int(sys.argv[3])
    owner_path, _, attr = module.rpartition(".") if module.endswith("Store") else (module, "", "")
    owner = getattr(importlib.import_module(owner_path), attr) if attr else importlib.import_module(module)
    real = getattr(owner, name)
    calls = {"n": 0}
    def dying(*args, **kwargs):
        result = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] >= after:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    setattr(owner, name, dying)
    sys.argv = ["qk_sniffer.compact", sys.argv[4]]
    from qk_sniffer.commands.compact import main
    main()
    """
)


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_compaction_killed_at_any_point_shows_every_row_once(point, copy, reference, tmp_path):
    module, name = KILL_POINTS[point]
    after = 3 if point == "deleting" else 1
    env = {**os.environ, "WANDB_MODE": "disabled"}
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, module, name, str(after), f"output.dir={copy}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr
    assert loaded_rows(copy, tmp_path / "killed") == reference[1]
    again = run_cli([f"output.dir={copy}"], cwd=tmp_path, module="qk_sniffer.compact")
    assert again.returncode == 0, again.stderr
    assert_exactly_the_reference(copy, reference, tmp_path)
    assert all(len(list(d.glob("*.parquet"))) == 1 for d in copy.glob("l*"))


# ------------------------------------------------------------------------------------ two processes


RACE = ["dataset=synthetic", "dataset.num_examples=60", "dataset.seq_len=256", "wandb=disabled"]


def test_a_run_with_another_recipe_is_refused_while_the_first_is_still_writing(tmp_path):
    out = tmp_path / "capture"
    # Long enough to still be capturing when the second starts; it commits only when stopped.
    long = [*RACE, "dataset.num_examples=5000", "output.flush_every_examples=100000"]
    first = start_cli([f"output.dir={out}", *long, "sampler=log_bucket"], cwd=tmp_path)
    deadline = time.monotonic() + 240
    while not list(out.glob(".qk_sniffer/runs/*.lock")):  # registered, nothing committed yet
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    # In this process: the sooner the second is refused, the less the first has to commit when stopped.
    second = run_cli([f"output.dir={out}", *RACE, "sampler=uniform"], cwd=tmp_path)
    err = second.stderr
    assert first.poll() is None, "the first run ended before the second was checked"
    assert not list(out.glob(".qk_sniffer/commits/*/*.json"))
    assert second.returncode == 2 and "Traceback" not in err, err
    assert "already hold rows captured with a different recipe (being written right now)" in err
    first.send_signal(signal.SIGTERM)  # it commits what it has and stops
    _, err = first.communicate(timeout=300)
    assert first.returncode == 128 + signal.SIGTERM, err
    manifest = Store(out).manifest()
    assert manifest.commits and {c.recipe for c in manifest.commits} == {
        c.recipe for c in manifest.commits[:1]
    }
    assert [r["sampler"]["name"] for r in manifest.recipes.values()] == ["log_bucket"]


def test_two_runs_with_different_recipes_started_together_one_wins(tmp_path):
    out = tmp_path / "capture"
    procs = [
        start_cli([f"output.dir={out}", *RACE, f"sampler={s}"], cwd=tmp_path)
        for s in ("log_bucket", "uniform")
    ]
    codes = sorted(p.wait(timeout=400) for p in procs)
    assert codes == [0, 2]
    meta = json.loads((out / METADATA).read_text())
    assert len(meta["recipes"]) == 1 and len({c for r in meta["recipes"] for c in r["configs"]}) > 0


# --------------------------------------------------------------------------------------- full disk


@pytest.mark.parametrize(
    "target", ["qk_sniffer.store.store.write_json_atomic", "qk_sniffer.publish.card.atomic_file"]
)
def test_a_full_disk_while_registering_or_writing_the_card_is_one_message_and_a_rerun_recovers(
    target, reference, tmp_path, monkeypatch
):
    out = tmp_path / "capture"
    module, _, name = target.rpartition(".")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(importlib.import_module(module), name, full)
    overrides = [f"output.dir={out}", *ARGS]
    with pytest.raises(UserError) as err:
        run(compose_cfg(overrides))
    assert "No space left on device (errno 28)" in str(err.value)
    assert "run the same command again" in str(err.value)
    monkeypatch.undo()
    run(compose_cfg(overrides))
    assert_exactly_the_reference(out, reference, tmp_path)


def test_a_full_disk_during_compaction_is_one_message_and_loses_nothing(
    copy, reference, tmp_path, monkeypatch
):
    from qk_sniffer.commands.compact import compact
    from qk_sniffer.store import compact as compaction

    real = compaction.atomic_file
    calls = {"n": 0}

    def fills_up(path, mode="wb"):
        calls["n"] += 1
        if calls["n"] > 1:  # the second merged file finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, mode)

    monkeypatch.setattr(compaction, "atomic_file", fills_up)
    before = files_with_bytes(copy)
    with pytest.raises(UserError) as err:
        compact(Store(copy))
    assert str(err.value) == (
        f"output.dir={str(copy)!r}: cannot write the merged part files: No space left on device (errno 28); "
        "the rows already committed are kept. Free space or fix permissions, then run the same command again"
    )
    # The dataset is the unmerged files, as before; the one merged file written is a dead run's leftover.
    assert loaded_rows(copy, tmp_path / "full") == reference[1]
    assert {p: b for p, b in files_with_bytes(copy).items() if p in before} == before
    monkeypatch.undo()
    compact(Store(copy))
    assert_exactly_the_reference(copy, reference, tmp_path)
    assert all(len(list(d.glob("*.parquet"))) == 1 for d in copy.glob("l*"))


def test_an_empty_dir_is_called_empty(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli([f"output.dir={empty}"], cwd=tmp_path, module="qk_sniffer.verify")
    assert (
        one_message(proc)
        == f"qk_sniffer: error: output.dir={str(empty)!r} is empty: it holds no qk-sniffer capture yet"
    )
    assert list(empty.iterdir()) == []


# ------------------------------------------------------------------------------ the notebook API's dirs


def test_api_write_then_a_cli_run_into_the_same_dir(tmp_path):
    from helpers import embedded_tokenizer, save_checkpoint, write_jsonl
    from transformers import AutoModelForCausalLM

    import qk_sniffer

    ckpt = save_checkpoint(tmp_path, "qwen3")
    texts = ["attention keys and queries " * (3 + i) for i in range(4)]
    data = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in texts])
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype="float32").eval()
    with qk_sniffer.attach(model, embedded_tokenizer(), sampler="all", layers=[0]) as cap:
        cap.run(texts)
    out = cap.write(tmp_path / "capture", dataset="my-texts")
    api_rows = loaded_rows(out, tmp_path / "api")
    assert api_rows and len(api_rows) == len(set(api_rows))
    # The API's rows are committed like a run's: a second write of the same examples would repeat them.
    with qk_sniffer.attach(model, embedded_tokenizer(), sampler="all", layers=[0]) as again:
        again.run(texts)
    with pytest.raises(UserError, match="writing them again would repeat rows"):
        again.write(out, dataset="my-texts")
    assert loaded_rows(out, tmp_path / "api-2") == api_rows

    cli = [
        f"model.name={ckpt}",
        "sampler=all",
        "capture.layers=[0]",
        "dataset=local",
        f"dataset.data_files={data}",
    ]
    message = one_message(run_cli([f"output.dir={out}", *cli, "wandb=disabled"], cwd=tmp_path))
    assert (
        "already hold rows captured with a different recipe" in message and "output.mode=replace" in message
    )
    assert loaded_rows(out, tmp_path / "refused") == api_rows
    replaced = run_cli([f"output.dir={out}", *cli, "output.mode=replace", "wandb=disabled"], cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    fresh = tmp_path / "fresh"
    assert run_cli([f"output.dir={fresh}", *cli, "wandb=disabled"], cwd=tmp_path).returncode == 0
    assert loaded_rows(out, tmp_path / "replaced") == loaded_rows(fresh, tmp_path / "fresh-rows")
    meta = json.loads((out / METADATA).read_text())
    assert [r["recipe"]["dataset"]["path"] for r in meta["recipes"]] == ["json"]


def test_the_api_refuses_null_and_repeated_example_ids_before_capturing():
    from helpers import embedded_tokenizer, tiny_model

    import qk_sniffer

    model = tiny_model("qwen3", vocab_size=512)
    with qk_sniffer.attach(model, embedded_tokenizer(), sampler="all", layers=[0]) as cap:
        with pytest.raises(UserError, match=r"example_ids\[1\] is None"):
            cap.run(["a text", "another"], example_ids=[1, None])
        with pytest.raises(UserError, match=r"example_ids\[1\]=7 was already used"):
            cap.run(["a text", "another"], example_ids=[7, 7])
        assert cap.rows == 0
        cap.run(["a text"], example_ids=[7])  # the refused calls registered nothing
        with pytest.raises(UserError, match=r"example_ids\[0\]=7 was already used"):
            cap.run(["a third"], example_ids=[7])


def test_a_damaged_model_record_is_reported_and_rebuilt_by_repair(copy, reference, tmp_path):
    model = copy / ".qk_sniffer" / "model.json"
    recorded = model.read_text()
    model.write_text("{")
    message = one_message(capture(copy, cwd=tmp_path))
    assert f"python -m qk_sniffer.verify output.dir={copy} repair=true" in message
    check = run_cli([f"output.dir={copy}"], cwd=tmp_path, module="qk_sniffer.verify")
    assert check.returncode == 1 and ".qk_sniffer/model.json: cannot be read" in check.stdout
    repaired = run_cli([f"output.dir={copy}", "repair=true"], cwd=tmp_path, module="qk_sniffer.verify")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert json.loads(model.read_text()) == json.loads(recorded)
    proc = capture(copy, cwd=tmp_path)
    assert proc.returncode == 0 and "resumed:" in proc.stdout, proc.stderr
    assert_exactly_the_reference(copy, reference, tmp_path)


def test_a_dir_without_its_card_is_reported_and_repair_writes_it(copy, reference, tmp_path):
    # What a first run killed before its card leaves; datasets then finds no config by name at all.
    (copy / CARD).unlink()
    (copy / METADATA).unlink()
    check = run_cli([f"output.dir={copy}"], cwd=tmp_path, module="qk_sniffer.verify")
    assert check.returncode == 1 and f"{CARD}: missing or unreadable" in check.stdout
    repaired = run_cli([f"output.dir={copy}", "repair=true"], cwd=tmp_path, module="qk_sniffer.verify")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert loaded_rows(copy, tmp_path / "repaired") == reference[1]
