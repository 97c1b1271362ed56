"""Publishing: merged captures and their card loaded with the real datasets.load_dataset, and the Hub protocol
(which calls, which commit operations, which branch) against a recording stand-in of HfApi — no Hub is
reachable from the tests."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import pytest
import yaml
from datasets import load_dataset
from helpers import compose_cfg, files_with_bytes, read_configs
from hub_stand_in import HTTP, SECRET, http_error
from hub_stand_in import REPO_ID as REPO
from huggingface_hub.errors import HfHubHTTPError
from omegaconf import OmegaConf

from qk_sniffer.commands import publish
from qk_sniffer.core.errors import UserError
from qk_sniffer.pipeline import plan, runner
from qk_sniffer.publish import hub
from qk_sniffer.publish.branches import branch_name
from qk_sniffer.store import Store
from qk_sniffer.store.layout import CARD, HUB_PULL, HUB_SYNC, METADATA, SHARED_STATE

BRANCH = "embedded-qwen3-tiny-embedded"  # the default config's branch


def run_capture(out_dir: Path, *overrides: str):
    cfg = compose_cfg([f"output.dir={out_dir}", "dataset.max_samples=2", *overrides])
    return runner.run(cfg)


def push_overrides(*extra: str) -> list[str]:
    return ["output.hub.push=true", f"output.hub.repo_id={REPO}", *extra]


def card_matter(text: str) -> dict:
    return yaml.safe_load(text[4:].split("\n---\n", 1)[0])


# ----------------------------------------------------------------------------------- merge + card + load


def test_two_runs_with_different_layers_give_one_card_and_both_load(tmp_path):
    out = tmp_path / "capture"
    run_capture(out, "capture.layers=[0]")
    first = read_configs(out)
    run_capture(out, "capture.layers=[1]")
    tables = read_configs(out)
    assert set(first) < set(tables)
    assert {name[:3] for name in tables} == {"l00", "l01"}
    matter = card_matter((out / CARD).read_text())
    assert [c["config_name"] for c in matter["configs"]] == sorted(tables)
    body = (out / CARD).read_text()
    assert "2 of 4 layers captured." in body
    for name in ("l00h00q", "l01h00q", "l00h00k", "l01h01k"):
        ds = load_dataset(str(out), name, split="train")
        assert ds.num_rows == tables[name].num_rows > 0
        assert ds["position"] == tables[name].column("position").to_pylist()


# --------------------------------------------------------------------------------------------- branches


def test_default_branch_from_slugs_or_last_path_parts():
    cfg = compose_cfg(["model=qwen3-8b", "dataset=longbench-pro-128k-plus"])
    assert branch_name(cfg) == "qwen3-8b-longbench-pro-128k-plus"
    cfg = compose_cfg(
        [
            "model.name=Org/My_Model.V2",
            "model.slug=null",
            "dataset.path='someone/Long Docs!'",
            "dataset.slug=null",
        ]
    )
    assert branch_name(cfg) == "my_model.v2-long-docs"
    assert branch_name(compose_cfg([])) == BRANCH
    assert branch_name(compose_cfg(["output.hub.branch=exp/run-1"])) == "exp/run-1"


@pytest.mark.parametrize("branch", ["main", "bad..name", "-x", "a b"])
def test_invalid_or_reserved_branch_is_a_user_error(branch):
    with pytest.raises(UserError, match="output.hub.branch="):
        branch_name(compose_cfg([f"output.hub.branch='{branch}'"]))


# -------------------------------------------------------------------------------------------- fail fast


def test_offline_hub_stops_the_run_before_the_model_loads(fake, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(plan, "load_model", lambda *a: pytest.fail("the model loaded"))
    out = tmp_path / "capture"
    start = time.perf_counter()
    with pytest.raises(UserError) as err:
        run_capture(out, *push_overrides())
    assert time.perf_counter() - start < 10
    assert str(err.value).startswith(f"output.hub.repo_id='{REPO}': cannot push: the Hub is offline")
    assert not out.exists() and fake.calls == []


def test_no_token_stops_naming_the_repo(fake, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(plan, "load_model", lambda *a: pytest.fail("the model loaded"))
    with pytest.raises(UserError, match=f"^output.hub.repo_id='{REPO}': cannot push: no Hugging Face token"):
        run_capture(tmp_path / "capture", *push_overrides())
    assert not (tmp_path / "capture").exists()


def test_token_from_dotenv_reaches_the_client_only(fake, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN")
    (tmp_path / ".env").write_text(f"HF_TOKEN={SECRET}\n")
    hub.preflight(compose_cfg(push_overrides()).output.hub)
    assert fake.tokens == [SECRET]
    assert "HF_TOKEN" not in __import__("os").environ


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (
            dict(fail={"whoami": HTTP.ConnectError("[Errno -2] Name or service not known")}),
            "cannot reach https://huggingface.co (ConnectError: [Errno -2] Name or service not known)",
        ),
        (
            dict(fail={"whoami": http_error(HfHubHTTPError, 401, "401 Unauthorized: invalid token")}),
            "the token was rejected (401 Unauthorized: invalid token)",
        ),
        (dict(role="read"), "the token of 'alice' is read-only; create a token with write access"),
        (dict(writable=False, exists=True), "no write access (403 Forbidden: you do not have write access)"),
        (dict(user="bob"), "the dataset repo does not exist and 'bob' cannot create it in 'alice'"),
    ],
)
def test_preflight_names_repo_and_reason(fake, setup, reason):
    for key, value in setup.items():
        if key == "exists":
            fake.branches[REPO] = {"main": fake.new_commit({})}
        else:
            setattr(fake, key, value)
    with pytest.raises(UserError) as err:
        hub.preflight(compose_cfg(push_overrides()).output.hub)
    assert str(err.value) == f"output.hub.repo_id='{REPO}': cannot push: {reason}"


def test_preflight_passes_for_own_namespace_or_org(fake):
    hub.preflight(compose_cfg(push_overrides()).output.hub)
    fake.user, fake.orgs = "bob", ["alice"]
    hub.preflight(compose_cfg(push_overrides()).output.hub)
    assert [c[0] for c in fake.calls] == ["whoami", "auth_check"] * 2
    assert fake.calls[1] == ("auth_check", REPO, "dataset", True)


def test_preflight_gives_up_within_its_deadline(fake, monkeypatch):
    monkeypatch.setattr(hub, "PREFLIGHT_TIMEOUT_S", 0.3)
    fake.whoami_delay = 5
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"cannot push: the Hub did not answer within 0.3 s$"):
        hub.preflight(compose_cfg(push_overrides()).output.hub)
    assert time.perf_counter() - start < 2


# --------------------------------------------------------------------------------------------- protocol


def test_first_push_creates_repo_main_readme_branch_and_one_commit(fake, tmp_path):
    out = tmp_path / "capture"
    run_capture(out, "capture.layers=[0]", *push_overrides("output.hub.private=true"))
    names = [c[0] for c in fake.calls]
    assert names == [
        "whoami",
        "auth_check",
        "repo_info",  # before the capture: nothing to pull, the repo does not exist yet
        "create_repo",
        "list_repo_files",
        "create_commit",
        "create_branch",
        "repo_info",
        "list_repo_files",
        "create_commit",
    ]
    assert fake.calls[2] == ("repo_info", REPO, BRANCH)
    assert fake.calls[3] == ("create_repo", REPO, "dataset", True, True)
    assert fake.calls[4] == ("list_repo_files", REPO, "main")
    assert fake.calls[5][1:3] == ("main", [("add", "README.md")])
    assert fake.calls[6] == ("create_branch", REPO, BRANCH, True)
    local = files_with_bytes(out)
    # The dataset and the shareable manifest travel; the sync state and this machine's locks do not.
    data_files = sorted(
        f
        for f in local
        if not f.startswith(".") or f.startswith((".qk_sniffer/commits/", ".qk_sniffer/recipes/"))
    )
    data_files = sorted([*data_files, ".qk_sniffer/model.json"])
    assert {f for f in local if f not in data_files} == {
        HUB_SYNC,
        ".qk_sniffer/maintenance.lock",
        ".qk_sniffer/verified.json",
    }
    (branch_commit,) = fake.commit_ops(BRANCH)
    assert branch_commit == [("add", f) for f in data_files]
    assert fake.commits[fake.calls[-1][4]] == fake.tree(REPO, "main")  # pinned to the head it was built on
    remote = fake.tree(REPO, BRANCH)
    assert {f: remote[f] for f in data_files} == {f: local[f] for f in data_files}
    assert set(remote) == {*data_files, ".gitattributes"}
    assert (
        f'ds = load_dataset("{REPO}", "l00h00k", revision="{BRANCH}", split="train")' in remote[CARD].decode()
    )
    main_readme = fake.tree(REPO, "main")[CARD].decode()
    assert f'revision="{BRANCH}"' in main_readme and "`main` holds only this page" in main_readme
    assert fake.private[REPO] is True


def test_second_machine_pulls_the_branch_so_the_card_covers_both(fake, tmp_path):
    first, second = tmp_path / "machine-a", tmp_path / "machine-b"
    run_capture(first, "capture.layers=[0]", *push_overrides())
    run_capture(second, "capture.layers=[1]", *push_overrides())
    downloads = [c[3] for c in fake.calls if c[0] == "snapshot_download"]
    first_parts = sorted(f for f in files_with_bytes(first) if f.endswith(".parquet"))
    first_manifest = sorted(f for f in files_with_bytes(first) if SHARED_STATE.match(f))
    # before its capture: the branch's model identity, then its manifest, then the parts it names
    assert downloads[:3] == [[".qk_sniffer/model.json"], first_manifest, first_parts]
    assert downloads[3:] == [[".qk_sniffer/model.json"]]  # its push: the same check, nothing new to pull
    # main got its README once; the second commit adds only the new parts and commits plus card and metadata
    assert len(fake.commit_ops("main")) == 1
    second_commit = fake.commit_ops(BRANCH)[1]
    own_parts = sorted(f for f in files_with_bytes(second) if f.startswith("l01") and f.endswith(".parquet"))
    own_commits = sorted(
        f
        for f in files_with_bytes(second)
        if f.startswith(".qk_sniffer/commits/") and f not in first_manifest
    )
    assert own_commits and second_commit == [
        ("add", f) for f in sorted([*own_parts, *own_commits, CARD, METADATA])
    ]
    remote = fake.tree(REPO, BRANCH)
    assert set(first_parts) | set(own_parts) <= set(remote)
    matter = card_matter(remote[CARD].decode())
    assert {c["config_name"][:3] for c in matter["configs"]} == {"l00", "l01"}
    # the second dir now holds both and loads both
    for name in ("l00h00q", "l01h00q"):
        assert load_dataset(str(second), name, split="train").num_rows > 0


def test_stale_files_are_deleted_in_the_same_commit_and_not_pulled_back(fake, tmp_path, capsys, monkeypatch):
    out = tmp_path / "capture"
    run_capture(out, "capture.layers=[0]", *push_overrides())
    removed = sorted(out.glob("l00h01q/*.parquet"))
    Store(out).take_over("another-recipe", ["l00h01q"])  # what output.mode=replace does to a config's parts
    publish_cli([f"output.dir={out}", f"output.hub.repo_id={REPO}"], monkeypatch)
    last = fake.commit_ops(BRANCH)[-1]
    stale = [f"l00h01q/{p.name}" for p in removed]
    assert [op for op in last if op[0] == "delete"] == [("delete", f) for f in stale]
    assert not set(stale) & set(fake.tree(REPO, BRANCH))
    assert not (out / "l00h01q").exists()
    assert "l00h01q" not in [
        c["config_name"] for c in card_matter(fake.tree(REPO, BRANCH)[CARD].decode())["configs"]
    ]
    assert f"qk_sniffer: pushed {out} to {REPO}@{BRANCH}: " in capsys.readouterr().out


def test_branch_holding_another_model_is_refused_and_the_dir_untouched(fake, tmp_path):
    other = tmp_path / "other"
    run_capture(other, "capture.layers=[0]", "model.seed=1", *push_overrides())
    out = tmp_path / "capture"
    run_capture(out, "capture.layers=[0]")
    before = files_with_bytes(out)
    commits = len(fake.commit_ops(BRANCH))
    with pytest.raises(
        hub.PushError, match=f"output.hub.branch='{BRANCH}' of {REPO} holds a capture of a different"
    ):
        publish.publish_dir(publish.parse([f"output.dir={out}", f"output.hub.repo_id={REPO}"]))
    assert files_with_bytes(out) == before
    assert len(fake.commit_ops(BRANCH)) == commits


def test_failed_push_keeps_data_and_prints_the_retry_command(fake, tmp_path, capsys, monkeypatch):
    out = tmp_path / "my capture"
    fake.fail["create_commit"] = http_error(HfHubHTTPError, 500, "500 Server Error: Internal Server Error")
    with pytest.raises(hub.PushError) as err:
        run_capture(out, "capture.layers=[0]", *push_overrides())
    quoted_dir = "'output.dir='\"'\"'" + str(out) + "'\"'\"''"  # Hydra quotes inside shell quotes
    retry = f"python -m qk_sniffer.publish {quoted_dir} output.hub.repo_id={REPO} output.hub.branch={BRANCH}"
    message = str(err.value)
    assert message.splitlines()[-1] == f"  {retry}"
    assert "failed: the Hub answered HTTP 500 (500 Server Error: Internal Server Error)." in message
    kept = files_with_bytes(out)
    assert any(f.endswith(".parquet") for f in kept) and CARD in kept and not (out / HUB_PULL).exists()
    # the CLI shows it as one message and exits non-zero
    with pytest.raises(SystemExit) as exit_info:
        publish_cli(shlex.split(retry)[3:], monkeypatch)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().endswith(retry)
    # the printed command, run as printed, pushes once the Hub works again
    del fake.fail["create_commit"]
    publish_cli(shlex.split(retry)[3:], monkeypatch)
    remote = fake.tree(REPO, BRANCH)
    assert {f: remote[f] for f in kept if not f.startswith(".")} == {
        f: b for f, b in kept.items() if not f.startswith(".")
    }


def publish_cli(argv: list[str], monkeypatch) -> None:
    """``python -m qk_sniffer.publish ARGV`` in this process (so the stand-in Hub is used)."""
    monkeypatch.setattr(sys, "argv", ["qk_sniffer.publish", *argv])
    publish.main()


def test_publish_cli_rejects_bad_arguments(fake, tmp_path, capsys, monkeypatch):
    for argv, message, code in [
        ([f"output.hub.repo_id={REPO}"], "output.dir is required", 2),
        ([f"output.dir={tmp_path}"], "output.hub.repo_id is required", 2),
        # Hydra's own compose errors name the key (exit 2, a user error, as for the main app)
        ([f"output.dir={tmp_path}", f"output.hub.repo_id={REPO}", "output.hub.nope=1"], "output.hub.nope", 2),
        (["model.name=x"], "model.name", 2),
        ([f"output.dir={tmp_path / 'missing'}", f"output.hub.repo_id={REPO}"], "does not exist", 2),
        ([f"output.dir={tmp_path}", f"output.hub.repo_id={REPO}"], "holds no qk-sniffer capture", 2),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            publish_cli(argv, monkeypatch)
        assert exit_info.value.code == code, argv
        assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ token


def test_token_never_appears_in_output_logs_card_metadata_or_config(
    fake, tmp_path, monkeypatch, capsys, caplog
):
    caplog.set_level("DEBUG")
    seen: list[str] = []
    real_tracker = runner.make_tracker

    def spy(cfg, metadata):
        seen.append(OmegaConf.to_yaml(cfg) + json.dumps(metadata, default=str))
        return real_tracker(cfg, metadata)

    monkeypatch.setattr(runner, "make_tracker", spy)
    out = tmp_path / "capture"
    run_capture(out, "capture.layers=[0]", *push_overrides())
    fake.fail["create_commit"] = http_error(HfHubHTTPError, 403, f"403 Forbidden: token {SECRET} lacks write")
    with pytest.raises(hub.PushError) as err:
        run_capture(out, "capture.layers=[1]", *push_overrides())
    assert "<token>" in str(err.value)
    texts = [str(err.value), caplog.text, *capsys.readouterr(), *seen]
    texts += [p.read_bytes().decode("utf-8", "replace") for p in out.rglob("*") if p.is_file()]
    texts += [data.decode("utf-8", "replace") for tree in fake.commits.values() for data in tree.values()]
    texts += [str(call) for call in fake.calls]
    assert len(seen) == 2 and fake.tokens and set(fake.tokens) == {SECRET}
    for text in texts:
        assert SECRET not in text
