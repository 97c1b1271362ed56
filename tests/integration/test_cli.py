"""The real command line: default run, --help, --cfg job, multirun, and every bad input's message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import load_dataset
from helpers import run_cli, write_jsonl

from qk_sniffer.store.layout import METADATA


def parquet_files(root: Path) -> list[Path]:
    return list(root.rglob("*.parquet"))


def test_default_run_works_offline_and_says_where(tmp_path):
    proc = run_cli([], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    wrote = next(line for line in proc.stdout.splitlines() if line.startswith("qk_sniffer: wrote "))
    out_dir = Path(wrote.rsplit(" to ", 1)[1])
    assert out_dir.is_relative_to(tmp_path / "outputs")
    # The end summary: what the dataset holds, the card and figures, and what to run next.
    assert f"card:    {out_dir / 'README.md'}" in proc.stdout
    assert f"figures: {out_dir / 'figures'}/ (" in proc.stdout
    assert f"python -m qk_sniffer.publish output.dir={out_dir} " in proc.stdout
    ds = load_dataset(str(out_dir), "l00h00q", split="train")
    assert ds.num_rows > 0
    assert set(ds.column_names) == {"bucket", "example_id", "position", "vector", "sliding_window"}
    assert len(ds[0]["vector"]) == 16


def test_help_and_cfg_job(tmp_path):
    helped = run_cli(["--help"], cwd=tmp_path)
    assert helped.returncode == 0
    for group in ("model:", "sampler: all, log_bucket, uniform, uniform_8192", "dataset:", "capture:"):
        assert group in helped.stdout
    # The presets only, never the schemas they extend; and where every key is explained.
    assert "_schema" not in helped.stdout and "docs/configuration.md" in helped.stdout
    shown = run_cli(["--cfg", "job", "sampler=uniform", "sampler.bucket_size=64"], cwd=tmp_path)
    assert shown.returncode == 0
    assert "bucket_size: 64" in shown.stdout and "name: uniform" in shown.stdout
    assert not parquet_files(tmp_path)


def test_multirun_sweeps_samplers(tmp_path):
    proc = run_cli(
        [
            "-m",
            "sampler=log_bucket,uniform",
            "sampler.base_rate=2.0",
            "dataset.max_samples=2",
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    cards = sorted((tmp_path / "sweep").glob("*/capture/README.md"))
    assert len(cards) == 2
    assert "`log_bucket`" in cards[0].read_text() and "`uniform`" in cards[1].read_text()


def test_multirun_into_one_output_dir_gives_each_recipe_its_subdir_and_one_summary(tmp_path):
    out = tmp_path / "out"
    # A dir the uniform jobs cannot use: they are refused, the others still run, the summary lists all.
    (out / "sampler=uniform").mkdir(parents=True)
    (out / "sampler=uniform" / "notes.txt").write_text("mine")
    proc = run_cli(
        [
            "-m",
            "sampler=log_bucket,uniform",
            "dataset.num_shards=2",
            "dataset.shard_index=0,1",
            "dataset.max_samples=4",
            f"output.dir={out}",
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "output.mode=replace" not in proc.stdout + proc.stderr
    # The two shards of one recipe merge into one subdir: every example once.
    merged = out / "sampler=log_bucket"
    assert json.loads((merged / METADATA).read_text())["examples"] == 4
    assert load_dataset(str(merged), "l00h00q", split="train").num_rows > 0
    assert (out / "sampler=uniform" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (out / "sampler=uniform").iterdir()) == ["notes.txt"]
    summary = proc.stdout[proc.stdout.index("qk_sniffer: sweep of 4 jobs:") :].splitlines()
    assert summary[1].startswith("  job 0 [sampler=log_bucket dataset.shard_index=0]: ")
    assert summary[1].endswith(f" in {merged}") and summary[2].endswith(f" in {merged}")
    for line in summary[3:5]:
        assert "[sampler=uniform dataset.shard_index=" in line
        assert "failed: output.dir=" in line and "is not empty and holds no qk-sniffer capture" in line
    assert "qk_sniffer: error: 2 of 4 jobs failed" in proc.stderr


def test_an_unreachable_hub_is_one_message_that_names_offline_mode(tmp_path):
    offline = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"}
    # A fresh process: huggingface_hub and datasets read HF_ENDPOINT and the offline flags when imported.
    proc = run_cli(
        ["dataset.path=nobody/no-such-dataset", f"output.dir={tmp_path}/out"],
        cwd=tmp_path,
        env=offline,
        process=True,
    )
    assert proc.returncode == 2, proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("qk_sniffer: error:")]
    assert "the Hugging Face Hub (http://127.0.0.1:9) cannot be reached" in line
    assert "run offline with HF_HUB_OFFLINE=1" in line
    assert "Retrying" not in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture
def docs(tmp_path):
    return write_jsonl(
        tmp_path / "docs.jsonl", [{"body": "some text here", "doc": "a"}, {"body": "more", "doc": "b"}]
    )


# Every user error exits 2: Hydra's own (an unknown key, group option or a wrong type) as the project's.
BAD = {
    "unknown key": (["capture.colour=red"], 2, ["capture.colour"]),
    "unknown group option": (["sampler=logbucket"], 2, ["sampler/logbucket", "log_bucket", "uniform", "all"]),
    "wrong type": (["inference.batch_size=many"], 2, ["inference.batch_size", "many"]),
    # Hydra suggests `+` for a key it does not know; a key the schema does not know is still refused.
    "unknown key added with +": (
        ["+capture.layer=[0]"],
        2,
        ["capture.layer is not a key of the config (did you mean capture.layers?)"],
    ),
    "nothing to capture": (
        ["capture.queries=false", "capture.keys=false"],
        2,
        ["capture.queries and capture.keys are both false: nothing to capture"],
    ),
    # datasets would read every file of the working directory.
    "local dataset without files": (
        ["dataset=local"],
        2,
        ["dataset.path='json' reads local files: set dataset.data_files"],
    ),
    "layer out of range": (["capture.layers=[0,7]"], 2, ["capture.layers: layer 7 is out of range", "0..3"]),
    "head out of range": (["capture.heads=[4]"], 2, ["capture.heads: head 4 is out of range", "0..3"]),
    "unknown dtype": (["model.dtype=float64"], 2, ["model.dtype='float64'", "float32, float16, bfloat16"]),
    "batch size": (["inference.batch_size=0"], 2, ["inference.batch_size must be >= 1"]),
    "zero base rate": (["sampler.base_rate=0"], 2, ["sampler.base_rate must be > 0"]),
    "negative base rate": (["sampler=uniform", "sampler.base_rate=-1"], 2, ["sampler.base_rate must be > 0"]),
    # Tests run with HF_HUB_OFFLINE=1 (conftest): a Hub dataset cannot be reached.
    "unreachable dataset": (
        ["dataset.path=nobody/no-such-dataset"],
        2,
        ["dataset.path='nobody/no-such-dataset'"],
    ),
    "missing data files": (
        ["dataset=local", "dataset.data_files=/nonexistent/docs.jsonl"],
        2,
        ["dataset.data_files", "/nonexistent/docs.jsonl"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_clear_message(tmp_path, case):
    args, code, needles = BAD[case]
    proc = run_cli([*args, f"output.dir={tmp_path}/out"], cwd=tmp_path)
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    text = proc.stdout + proc.stderr
    for needle in needles:
        assert needle in text, (needle, text)
    assert "Traceback" not in text
    assert not parquet_files(tmp_path)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "column_args, needles",
    [
        (["dataset.text_column=text"], ["dataset.text_column='text'", "body, doc"]),
        (["dataset.text_column=body", "dataset.id_column=id"], ["dataset.id_column='id'", "body, doc"]),
    ],
)
def test_missing_column_lists_the_columns(tmp_path, docs, column_args, needles):
    proc = run_cli(
        ["dataset=local", f"dataset.data_files={docs}", *column_args, f"output.dir={tmp_path}/out"],
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    for needle in needles:
        assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not parquet_files(tmp_path)


def test_local_files_with_id_column_token_strings_and_no_keys(tmp_path, docs):
    out = tmp_path / "out"
    proc = run_cli(
        [
            "dataset=local",
            f"dataset.data_files={docs}",
            "dataset.text_column=body",
            "dataset.id_column=doc",
            "capture.token_strings=true",
            "capture.keys=false",
            "sampler=all",
            f"output.dir={out}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    # capture.keys=false is read as the key, not as DictConfig.keys (a method, always true).
    configs = sorted(p.name for p in out.glob("l*"))
    assert configs and all(c.endswith("q") for c in configs)
    card = (out / "README.md").read_text()
    assert "config_name: l00h00q" in card and "config_name: l00h00k" not in card
    # With output.dir set, the run leaves nothing else: no outputs/<date>/<time>, no .hydra, no log file.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl", "out"]
    ds = load_dataset(str(out), "l01h01q", split="train")
    from helpers import embedded_tokenizer

    from qk_sniffer.inputs.data import stable_id

    tok = embedded_tokenizer()
    ids = tok("some text here")["input_ids"]
    rows = [r for r in ds if r["example_id"] == stable_id("a")]
    assert [r["position"] for r in rows] == list(range(len(ids)))
    assert [r["token_str"] for r in rows] == tok.convert_ids_to_tokens(ids)


def test_checkpoint_without_weights_is_one_message(tmp_path):
    from helpers import embedded_tokenizer
    from transformers import AutoConfig

    ckpt = tmp_path / "no-weights"
    config = AutoConfig.for_model(
        "llama", num_hidden_layers=2, hidden_size=32, num_attention_heads=2, vocab_size=512
    )
    config.save_pretrained(ckpt)
    embedded_tokenizer().save_pretrained(ckpt)
    proc = run_cli([f"model.name={ckpt}", f"output.dir={tmp_path}/out"], cwd=tmp_path)
    assert proc.returncode == 2
    assert f"qk_sniffer: error: model.name='{ckpt}': cannot load its weights" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not parquet_files(tmp_path)
