"""Remembered dry runs (qk_sniffer.pipeline.dry_run_cache): the same local inputs answer with the same plan
and without importing torch; any change of an input is a new plan; nothing that depends on the Hub or on
the machine's free memory is remembered; a damaged entry is ignored."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
from helpers import cli_env, compose_cfg, run_cli, save_checkpoint

from qk_sniffer.pipeline import dry_run_cache, user_cache
from qk_sniffer.pipeline.dry_run import dry_run_plan

ASK_TWICE = """
import sys
sys.argv = ["qk_sniffer", "dry_run=true", *sys.argv[1:]]
from qk_sniffer.commands.capture import main
main()
print("torch imported:", "torch" in sys.modules)
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    where = tmp_path / "cache"
    monkeypatch.setenv("QK_SNIFFER_CACHE", str(where))
    return where / "dry_run"


def _ask(tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", ASK_TWICE, *overrides],
        cwd=tmp_path,
        env=cli_env(None),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_same_dry_run_again_is_the_same_plan_without_torch(tmp_path, cache):
    first = _ask(tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.endswith("torch imported: True\n")
    assert len(list(cache.glob("*.json"))) == 1
    again = _ask(tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.endswith("torch imported: False\n")
    assert again.stdout.replace("False", "True") == first.stdout
    # Another capture key is another plan, computed (and then remembered too).
    other = _ask(tmp_path, "capture.layers=[0]")
    assert other.stdout.endswith("torch imported: True\n")
    assert json.loads(other.stdout.splitlines()[-2])["layers"] == [0]
    assert len(list(cache.glob("*.json"))) == 2


def test_a_damaged_entry_is_ignored_and_written_again(tmp_path, cache):
    cfg = compose_cfg(["dry_run=true"])
    key = dry_run_cache.cache_key(cfg)
    cache.mkdir(parents=True)
    (cache / f"{key}.json").write_text('{"plan": ')
    assert dry_run_cache.recall(cfg) is None
    proc = run_cli(["dry_run=true"], cwd=tmp_path, env={"QK_SNIFFER_CACHE": str(cache.parent)})
    assert proc.returncode == 0, proc.stderr
    assert dry_run_cache.recall(cfg) == json.loads(proc.stdout.strip().splitlines()[-1])


def test_what_a_dry_run_logged_is_logged_again(cache, caplog):
    cfg = compose_cfg(["dry_run=true"])
    record = {"logger": "qk_sniffer.pipeline.plan", "level": logging.WARNING, "message": "a note"}
    dry_run_cache.remember(cfg, {"layers": [0]}, [record])
    with caplog.at_level(logging.INFO, logger="qk_sniffer"):
        assert dry_run_cache.recall(cfg) == {"layers": [0]}
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("qk_sniffer.pipeline.plan", logging.WARNING, "a note")
    ]


def test_a_local_checkpoints_files_are_part_of_the_key(tmp_path, cache):
    ckpt = save_checkpoint(tmp_path, "llama")
    cfg = compose_cfg([f"model.name={ckpt}", "dry_run=true"])
    before = dry_run_cache.cache_key(cfg)
    assert before is not None
    config = json.loads((ckpt / "config.json").read_text())
    config["num_attention_heads"] = config["num_attention_heads"] // 2
    (ckpt / "config.json").write_text(json.dumps(config))
    assert dry_run_cache.cache_key(cfg) not in (None, before)


def test_nothing_is_remembered_that_depends_on_the_hub_or_the_machine(tmp_path, cache):
    hub_model = compose_cfg(["model.name=Qwen/Qwen3-8B", "model.random_init=false", "dry_run=true"])
    assert dry_run_cache.cache_key(hub_model) is None
    data = tmp_path / "texts.jsonl"
    data.write_text('{"text": "a"}\n')
    local_data = compose_cfg(["dataset=local", f"dataset.data_files={data}", "dry_run=true"])
    assert dry_run_cache.cache_key(local_data) is None
    # A memory plan read off this machine's free memory changes from one minute to the next.
    free_memory = compose_cfg(["dataset=synthetic", "dry_run=true"])
    plan = dry_run_plan(free_memory)
    assert plan["memory"]["budget_source"] != "inference.memory_budget_gb"
    dry_run_cache.remember(free_memory, plan, [])
    assert dry_run_cache.recall(free_memory) is None
    stated = compose_cfg(
        ["dataset=synthetic", "inference.memory_budget_gb=4", "model.device=cpu", "dry_run=true"]
    )
    dry_run_cache.remember(stated, dry_run_plan(stated), [])
    assert dry_run_cache.recall(stated) is not None


def test_off_remembers_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("QK_SNIFFER_CACHE", "off")
    cfg = compose_cfg(["dry_run=true"])
    dry_run_cache.remember(cfg, {"layers": [0]}, [])
    assert dry_run_cache.recall(cfg) is None


def test_the_package_files_are_part_of_the_key(cache, monkeypatch):
    cfg = compose_cfg(["dry_run=true"])
    before = dry_run_cache.cache_key(cfg)
    files = user_cache.package_files()
    assert any(path.endswith("pipeline/runner.py") for path, _, _ in files)
    assert any(path.endswith(".yaml") and "/conf/" in path for path, _, _ in files)
    edited = [(path, size + 1, mtime) for path, size, mtime in files]
    monkeypatch.setattr(user_cache, "package_files", lambda: edited)
    assert dry_run_cache.cache_key(cfg) != before
