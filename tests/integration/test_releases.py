"""A capture on the installed transformers release: the matrix it reads, the probe where that release was
never measured, the versions it records, and a resumed capture into a dir another release wrote.

Each test pretends to run on a release (``backend_facts.installed_release``) so that it means the same
whatever transformers is installed; ``make test-compat`` runs this file on each supported release too.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from helpers import TEXTS, compose_cfg, embedded_tokenizer
from packaging.version import Version
from tiny_models import EMBEDDED_VOCAB, TINY, tiny_model
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

import qk_sniffer
from qk_sniffer.capture import backend_facts, matrices, probe, support
from qk_sniffer.capture.backend_facts import BackendFact
from qk_sniffer.core.errors import UserError
from qk_sniffer.pipeline import runner
from qk_sniffer.store.layout import CARD, METADATA

# A tiny synthetic capture of the embedded random qwen3: seconds, no tokenizer, no download.
SMALL = ["dataset=synthetic", "dataset.num_examples=2", "dataset.seq_len=48", "sampler=all"]
# The embedded shape as a Gemma 2 (a family whose backends differ between releases).
GEMMA2 = ["model.architecture.model_type=gemma2", "+model.architecture.sliding_window=6"]


@pytest.fixture
def on_release(monkeypatch):
    """Run as if ``release`` were the installed transformers (the matrix, the facts, the metadata)."""

    def pretend(release: str) -> None:
        monkeypatch.setattr(backend_facts, "installed_release", lambda: release)
        monkeypatch.setattr(probe, "_passed", set())

    return pretend


def _capture(out, *extra):
    runner.run(compose_cfg([*SMALL, f"output.dir={out}", *extra]))
    return json.loads((out / METADATA).read_text()), (out / CARD).read_text()


def test_a_release_never_measured_probes_the_family_before_loading_and_says_so(tmp_path, on_release):
    newest = max(matrices.measured_releases(), key=Version)
    on_release("5.99.0")
    meta, card = _capture(tmp_path / "out")
    assert meta["support_matrix"] == {"measured_on": newest, "installed": "5.99.0", "check": "probe"}
    assert meta["versions"]["transformers"] == "5.99.0"
    assert meta["versions"]["torch"] == torch.__version__
    assert (meta["backend_facts"], meta["attn_implementation"]) == (
        {"model_type": "qwen3", "in_force": []},
        "sdpa",
    )
    assert probe._passed == {("qwen3", "sdpa", "cpu")}
    assert (
        f"- Captured with transformers 5.99.0, torch {torch.__version__}, tokenizers "
        f"{meta['versions']['tokenizers']}; the nearest support matrix is transformers {newest}'s, so the "
        "family passed an exactness probe on this release before its weights loaded"
    ) in card.splitlines()


def test_a_measured_release_reads_its_matrix_and_probes_nothing(tmp_path, on_release):
    measured = min(matrices.measured_releases(), key=Version)
    on_release(measured)
    meta, card = _capture(tmp_path / "out")
    assert meta["support_matrix"] == {"measured_on": measured, "installed": measured, "check": "matrix"}
    assert probe._passed == set()
    assert "the family was measured exact on this release (the support matrix)" in card


def test_a_family_failing_its_probe_is_refused_before_its_weights_load(tmp_path, on_release, monkeypatch):
    """Flint's first layer rotates where its config says it does not (the matrix says layout_mismatch); a
    matrix of another release that called it exact must not let it through on this one."""
    if "flint" not in CONFIG_MAPPING:
        pytest.skip("this transformers release has no Flint")
    on_release("5.99.0")
    real = support.support_matrix()
    entry = {**real["families"]["flint"], "status": "exact", "reason": ""}
    monkeypatch.setattr(support, "support_matrix", lambda: {**real, "families": {"flint": entry}})
    ckpt = tmp_path / "tiny-flint"
    AutoConfig.for_model("flint", **entry["tiny_config"]).save_pretrained(ckpt)  # a config, no weights
    out = tmp_path / "out"
    with pytest.raises(UserError) as err:
        runner.run(
            compose_cfg(
                [*SMALL, f"model.name={ckpt}", "model.attn_implementation=eager", f"output.dir={out}"]
            )
        )
    assert str(err.value) == (
        f"model family 'flint' was measured exact on transformers {real['transformers']}, not on the "
        "installed 5.99.0, and its exactness probe on 5.99.0 (a tiny model of the family, eager backend, "
        "against its own eager attention) failed: l0: the config says a rotation, the model did the "
        f"opposite; install transformers {real['transformers']}, or measure 5.99.0 with `make sweep`"
    )
    assert not out.exists()


def test_a_capture_resumed_on_another_release_says_so_and_records_both(tmp_path, on_release, caplog):
    out = tmp_path / "out"
    on_release("5.10.4")
    _capture(out)
    on_release("5.17.0")
    with caplog.at_level(logging.WARNING, logger="qk_sniffer.pipeline.runner"):
        meta, card = _capture(out)
    assert caplog.messages == [
        f"output.dir={str(out)!r} holds rows captured with transformers 5.10.4; this run uses 5.17.0 (the "
        "backend facts of model family 'qwen3' are the same on both)"
    ]
    assert (meta["versions"]["transformers"], meta["earlier_transformers"]) == ("5.17.0", ["5.10.4"])
    assert "- Earlier runs into this dataset used transformers 5.10.4" in card.splitlines()


def test_a_capture_resumed_where_the_familys_backends_differ_is_refused(tmp_path, on_release):
    out = tmp_path / "out"
    on_release("5.10.4")  # Gemma 2's sdpa drops its softcap here: the project ran eager
    meta, card = _capture(out, *GEMMA2)
    assert meta["attn_implementation"] == "eager"
    assert meta["backend_facts"]["in_force"] == [
        "sdpa is wrong before transformers 5.21.0: sdpa drops its attention logit softcapping, so every "
        "vector after the first layer is wrong; use eager"
    ]
    assert "- On this release: sdpa is wrong before transformers 5.21.0" in card
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    on_release("5.21.0")
    with pytest.raises(UserError) as err:
        _capture(out, *GEMMA2)
    assert str(err.value) == (
        f"output.dir={str(out)!r} holds rows captured with transformers 5.10.4 and this run uses 5.21.0, but "
        "the backends of model family 'gemma2' differ between the two (sdpa is wrong before transformers "
        "5.21.0: sdpa drops its attention logit softcapping, so every vector after the first layer is wrong; "
        "use eager); resume it with transformers 5.10.4, or use another output.dir"
    )
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


@pytest.fixture
def sdpa_wrong_for_llama(monkeypatch):
    fact = BackendFact(("llama",), ("sdpa",), fixed_in="99.0.0", why="a test fact", use="eager")
    monkeypatch.setattr(backend_facts, "FACTS", (fact,))


def test_the_api_refuses_a_model_loaded_with_a_backend_its_release_runs_wrong(sdpa_wrong_for_llama):
    with pytest.raises(UserError) as err:
        qk_sniffer.attach(tiny_model("llama"))  # loaded with sdpa
    message = str(err.value)
    assert message.startswith("attn_implementation='sdpa': model family 'llama' on transformers ")
    assert message.endswith("a test fact; use attn_implementation='eager', or transformers 99.0.0 or later")
    config = AutoConfig.for_model("llama", **TINY["llama"])
    eager = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    assert qk_sniffer.attach(eager).layout.model_type == "llama"  # the right backend: attached


def test_the_api_writing_into_a_dir_of_another_release_is_refused_where_the_backends_differ(
    tmp_path, on_release
):
    config = AutoConfig.for_model(
        "gemma2", **{**TINY["llama"], "vocab_size": EMBEDDED_VOCAB, "sliding_window": 6}
    )
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    out = tmp_path / "out"
    on_release("5.10.4")
    with qk_sniffer.attach(model, embedded_tokenizer(), sampler="all") as cap:
        cap.run(TEXTS[:1])
    cap.write(out)
    on_release("5.21.0")
    with qk_sniffer.attach(model, embedded_tokenizer(), sampler="all") as cap:
        cap.run(TEXTS[1:2])
    with pytest.raises(
        UserError, match="holds rows captured with transformers 5.10.4 and this run uses 5.21.0"
    ):
        cap.write(out)
