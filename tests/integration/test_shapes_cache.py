"""Remembered weightless shapes (qk_sniffer.pipeline.shapes_cache): a config measured once is answered from
the cache with the same shapes; another config, a damaged entry, remote code or QK_SNIFFER_CACHE=off
measure again; and a wrong remembered answer cannot make a run write other heads than the model computes."""

from __future__ import annotations

import json

import pytest
from helpers import rows, run_cli, save_checkpoint
from tiny_models import SHAPE
from transformers import AutoConfig

from qk_sniffer.capture import shapes as capture_shapes
from qk_sniffer.pipeline import shapes_cache
from qk_sniffer.pipeline.shapes_cache import remembered_shapes


@pytest.fixture
def cache(tmp_path, monkeypatch):
    where = tmp_path / "cache"
    monkeypatch.setenv("QK_SNIFFER_CACHE", str(where))
    return where / "shapes"


@pytest.fixture
def measured(monkeypatch):
    """Counts the weightless forwards that really run."""
    calls: list[str] = []
    real = capture_shapes.weightless_shapes

    def counting(config, trust_remote_code=False):
        calls.append(config.model_type)
        return real(config, trust_remote_code)

    monkeypatch.setattr(shapes_cache, "weightless_shapes", counting)
    return calls


def _config(**overrides):
    return AutoConfig.for_model("llama", **{**SHAPE, **overrides})


def test_a_config_measured_once_is_answered_from_the_cache(cache, measured):
    first = remembered_shapes(_config())
    assert first == {layer: capture_shapes.LayerShape(4, 2, 16) for layer in range(3)}
    assert len(list(cache.glob("*.json"))) == 1
    assert remembered_shapes(_config()) == first
    assert measured == ["llama"]
    # Another config is another key: measured, and its own answer.
    other = remembered_shapes(_config(num_key_value_heads=4))
    assert {s.kv_heads for s in other.values()} == {4}
    assert measured == ["llama", "llama"]


def test_a_damaged_entry_is_measured_again_and_rewritten(cache, measured):
    expected = remembered_shapes(_config())
    (entry,) = cache.glob("*.json")
    damaged = (
        '{"0": [4, 2]}',
        "[1, 2, 3]",
        '{"0": ["four", 2, 8]}',
        '{"0": "428"}',
        '{"x": [4, 2, 16]}',
        "{not",
    )
    for damage in damaged:
        entry.write_text(damage)
        assert remembered_shapes(_config()) == expected
        assert json.loads(entry.read_text()) == {str(layer): [4, 2, 16] for layer in range(3)}
    assert len(measured) == 1 + len(damaged)


def test_remote_code_and_cache_off_remember_nothing(tmp_path, cache, measured, monkeypatch):
    remembered_shapes(_config(), trust_remote_code=True)
    assert not cache.exists()
    monkeypatch.chdir(tmp_path)
    for switch in ("off", "OFF", " Off "):  # a switch in any case, never a dir name
        monkeypatch.setenv("QK_SNIFFER_CACHE", switch)
        remembered_shapes(_config())
    assert measured == ["llama"] * 4
    assert list(tmp_path.iterdir()) == []  # no cache, and no dir named after the switch


def test_a_wrong_remembered_answer_is_refused_by_the_loaded_model(tmp_path):
    """The cache only saves the weightless forward: the run still measures the loaded model's attention
    calls, so a remembered answer with other heads stops the run before anything is written."""
    ckpt = save_checkpoint(tmp_path, "llama")
    env = {"QK_SNIFFER_CACHE": str(tmp_path / "cache")}
    args = [f"model.name={ckpt}", "dataset=synthetic", "dataset.num_examples=1", "wandb=disabled"]
    assert run_cli([*args, "dry_run=true"], cwd=tmp_path, env=env).returncode == 0
    (entry,) = (tmp_path / "cache" / "shapes").glob("*.json")
    remembered = json.loads(entry.read_text())
    entry.write_text(json.dumps({layer: [q, q, d] for layer, (q, _, d) in remembered.items()}))

    out = tmp_path / "out"
    proc = run_cli([*args, f"output.dir={out}"], cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "other heads than" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() or not rows(out)
