"""A rerun into a dir never keeps rows that describe something else: an edited text, other weights at the
same path. Each refusal goes through the real command line, names what changed, and leaves the dataset as
it was; what a run does accept gives exactly the rows of a fresh run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers import compose_cfg, embedded_tokenizer, rows, run_cli, save_checkpoint, write_jsonl

from qk_sniffer.core.errors import UserError
from qk_sniffer.pipeline.runner import run
from qk_sniffer.pipeline.weights import file_digest
from qk_sniffer.store.layout import METADATA
from qk_sniffer.store.manifest import Manifest

TEXTS = [
    "attention keys and queries meet at every layer",
    "rotary position drift along a long context",
    "the sink token gathers the attention of every head",
    "a vector per token per head per layer",
]


def one_message(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("qk_sniffer: error:")]
    return line


def state(out: Path) -> tuple[list, list[str]]:
    """The rows on disk and the commits that hold them: what a refused run must leave unchanged."""
    return rows(out), sorted(p.name for p in out.glob(".qk_sniffer/commits/*/*.json"))


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in TEXTS])


def local(data: Path, out: Path, *extra: str) -> list[str]:
    return ["dataset=local", f"dataset.data_files={data}", f"output.dir={out}", "sampler=all", *extra]


def test_a_text_edited_at_the_same_token_count_is_refused_naming_it(tmp_path, corpus):
    out = tmp_path / "out"
    run(compose_cfg(local(corpus, out, "capture.layers=[0]")))
    before = state(out)
    # One word for another of as many tokens: the same count, other token ids.
    edited = TEXTS.copy()
    edited[2] = TEXTS[2].replace("every head", "every layer")
    encode = embedded_tokenizer()
    assert len(encode(edited[2])["input_ids"]) == len(encode(TEXTS[2])["input_ids"])
    write_jsonl(corpus, [{"text": t} for t in edited])

    proc = run_cli(local(corpus, out, "capture.layers=[0]", "wandb=disabled"), cwd=tmp_path)
    message = one_message(proc)
    assert f"output.dir='{out}': example 2 of the dataset is not the text whose rows the dir holds" in message
    assert "its token ids changed (token-id hash" in message and "another output.dir" in message
    assert state(out) == before

    # Another recipe over the same texts (another sampler, other layers) is refused too: its rows of
    # example 2 would sit beside the old text's rows of layer 0 under one example_id.
    with pytest.raises(UserError, match="example 2 of the dataset is not the text"):
        run(compose_cfg(local(corpus, out, "capture.layers=[1]", "sampler=log_bucket")))
    assert state(out) == before

    # Restored, the same command resumes: nothing to write, the rows untouched.
    write_jsonl(corpus, [{"text": t} for t in TEXTS])
    assert run(compose_cfg(local(corpus, out, "capture.layers=[0]"))).rows == 0
    assert state(out) == before


def test_commits_record_each_examples_token_hash(tmp_path, corpus):
    from qk_sniffer.inputs.data import token_hash
    from qk_sniffer.inputs.tokenization import encoder, load_tokenizer

    out = tmp_path / "out"
    cfg = compose_cfg(local(corpus, out, "capture.layers=[0]"))
    run(cfg)
    encode = encoder(load_tokenizer(cfg.tokenizer, cfg.model))
    recorded = Manifest(out).done(Manifest(out).commits[0].recipe)
    assert {i: d.token_hash for i, d in recorded.items()} == {
        i: token_hash(encode(t)) for i, t in enumerate(TEXTS)
    }


def test_cache_off_hashes_the_weights_and_writes_no_cache(tmp_path, corpus, monkeypatch):
    # "off" is a switch, never a dir: it once made an "off/" dir in the working dir.
    monkeypatch.setenv("QK_SNIFFER_CACHE", "off")
    monkeypatch.chdir(tmp_path)
    ckpt = save_checkpoint(tmp_path, "qwen3")
    out = tmp_path / "out"
    there = set(tmp_path.iterdir())
    run(compose_cfg([f"model.name={ckpt}", *local(corpus, out, "capture.layers=[0]")]))
    recorded = json.loads((out / METADATA).read_text())["weights"]
    assert recorded["files"]["model.safetensors"] == file_digest(ckpt / "model.safetensors")
    assert set(tmp_path.iterdir()) - there == {out}


def test_new_weights_at_the_same_local_path_are_refused(tmp_path, corpus, monkeypatch):
    monkeypatch.setenv("QK_SNIFFER_CACHE", str(tmp_path / "cache"))
    ckpt = save_checkpoint(tmp_path, "qwen3")
    out = tmp_path / "out"
    args = [f"model.name={ckpt}", *local(corpus, out, "capture.layers=[0]")]
    run(compose_cfg(args))
    recorded = json.loads((out / METADATA).read_text())["weights"]
    assert set(recorded["files"]) == {"config.json", "model.safetensors"} and recorded["sampled"] == []
    assert (tmp_path / "cache" / "checkpoint_digests.json").is_file()
    # The same weights, hashed from the cache this time: the rerun resumes.
    assert run(compose_cfg(args)).rows == 0
    before = state(out)

    save_checkpoint(tmp_path, "qwen3", seed=1)  # other weights, same shape, same path
    proc = run_cli([*args, "wandb=disabled"], cwd=tmp_path, env={"QK_SNIFFER_CACHE": str(tmp_path / "cache")})
    message = one_message(proc)
    assert f"holds vectors of other weights than model.name='{ckpt}' holds now" in message
    assert f"content sha256 {recorded['sha256']}" in message and "another output.dir" in message
    assert state(out) == before
