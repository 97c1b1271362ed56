"""Bad data and out-of-range settings through the real command line: one message naming the key (and the
file, row or value), exit 2, no traceback, and nothing written, before any weight loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import load_dataset
from helpers import embedded_tokenizer, read_configs, run_cli, save_checkpoint, write_jsonl


def assert_refused(proc, tmp_path: Path, *needles: str) -> str:
    """Exit 2 with one error line (plus its listed problems), every needle in it, and no output dir."""
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("qk_sniffer: error:")]
    assert len(errors) == 1, proc.stderr
    message = proc.stderr[proc.stderr.index(errors[0]) :]
    for needle in needles:
        assert needle in message, (needle, message)
    assert not list(tmp_path.rglob("*.parquet"))
    assert not (tmp_path / "out").exists(), "a refused run must leave no output dir (nor .qk_sniffer/)"
    return message


def cli(tmp_path: Path, *args: str):
    return run_cli([*args, f"output.dir={tmp_path}/out"], cwd=tmp_path)


def local(data: Path, *args: str) -> list[str]:
    return ["dataset=local", f"dataset.data_files={data}", *args]


# ---------------------------------------------------------------------------------------------- data files


def test_the_embedded_corpus_is_read_as_datasets_reads_it_and_a_wrong_column_is_named(tmp_path):
    """The shipped corpus is read without ``datasets`` (a first run's start-up): the same rows, in order."""
    from qk_sniffer.core.config import DatasetConfig
    from qk_sniffer.inputs.data import EMBEDDED_CORPUS
    from qk_sniffer.inputs.sources import load_rows

    cfg = DatasetConfig(path="embedded", text_column="text", id_column="id")
    expected = load_dataset("json", data_files=str(EMBEDDED_CORPUS), split="train", cache_dir=str(tmp_path))
    assert list(load_rows(cfg)) == list(expected)
    proc = cli(tmp_path, "dataset.text_column=body")
    assert_refused(proc, tmp_path, "dataset.text_column='body'", "its columns are: id, text")


@pytest.mark.parametrize("streaming", [False, True])
def test_empty_data_file(tmp_path, streaming):
    data = tmp_path / "docs.jsonl"
    data.write_text("\n  \n")
    proc = cli(tmp_path, *local(data, f"dataset.streaming={str(streaming).lower()}"))
    assert_refused(proc, tmp_path, f"dataset.data_files: {data} is empty")


@pytest.mark.parametrize("streaming", [False, True])
def test_malformed_json_line_names_file_and_line(tmp_path, streaming):
    data = tmp_path / "docs.jsonl"
    data.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": oops}\n')
    proc = cli(
        tmp_path, *local(data, f"dataset.streaming={str(streaming).lower()}", "inference.batch_size=4")
    )
    assert_refused(proc, tmp_path, f"dataset.data_files: {data} line 3 is not valid JSON")


def test_a_file_that_is_not_utf8_names_file_line_and_byte(tmp_path):
    """Loaded whole, every string is checked before the weights load (streamed: the next test)."""
    data = tmp_path / "docs.jsonl"
    data.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9 au lait"}\n{"text": "more"}\n')
    proc = cli(tmp_path, *local(data))
    assert_refused(
        proc,
        tmp_path,
        f"dataset.data_files: {data} line 2 is not UTF-8 text (byte 0xe9 at column 14)",
        "save the file as UTF-8",
    )


def test_a_line_that_is_not_utf8_late_in_a_stream_leaves_a_card_of_what_was_committed(tmp_path):
    """Past the first batch a stream fails where it reads the bad line; the dir it claimed keeps a card
    listing exactly the committed files (a claimed dir never goes without its card)."""
    from qk_sniffer.commands.verify import inspect
    from qk_sniffer.store import Store

    lines = [json.dumps({"text": f"text number {i} with a few words"}).encode() for i in range(6)]
    lines.insert(4, b'{"text": "caf\xe9"}')
    data = tmp_path / "docs.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    proc = cli(tmp_path, *local(data, "dataset.streaming=true", "output.flush_every_examples=1"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"dataset.data_files: {data} line 5 is not UTF-8 text" in proc.stderr
    state = inspect(Store(tmp_path / "out"))
    assert state["ok"] and state["damage"] == [], state
    assert 0 < state["examples"] <= 4 and state["rows"] > 0  # those before the bad line, at most


def test_glob_matching_nothing(tmp_path):
    pattern = f"{tmp_path}/nothing-*.jsonl"
    proc = cli(tmp_path, *local(Path(pattern)))
    assert_refused(proc, tmp_path, f"dataset.data_files: no file matches '{pattern}'")


# ---------------------------------------------------------------------------------------------- ids, texts


@pytest.fixture
def docs(tmp_path):
    def make(rows: list[dict]) -> Path:
        return write_jsonl(tmp_path / "docs.jsonl", rows)

    return make


@pytest.mark.parametrize("streaming", [False, True])
def test_duplicate_ids_are_refused_naming_one(tmp_path, docs, streaming):
    data = docs([{"text": "a b", "id": "x"}, {"text": "c d", "id": "y"}, {"text": "e f", "id": "x"}])
    proc = cli(
        tmp_path,
        *local(data, "dataset.id_column=id", f"dataset.streaming={str(streaming).lower()}"),
        "inference.batch_size=3",  # the repeat is in the first batch: found before the weights load
    )
    assert_refused(
        proc,
        tmp_path,
        "dataset.id_column='id': id 'x' appears more than once (rows 0 and 2)",
        "dataset.id_column=null",
    )


def test_duplicate_found_late_in_a_stream_keeps_what_was_committed(tmp_path, docs):
    """Past the first batch a stream fails at the repeat: committed examples stay valid, each row once, and
    the same command resumes once the data is fixed, ending with the rows of a clean run."""
    ckpt = save_checkpoint(tmp_path, "llama")
    rows = [{"text": f"text number {i} " + "word " * (3 + i), "id": 10 + i} for i in range(6)]
    data = write_jsonl(tmp_path / "docs.jsonl", [*rows[:4], {"text": "again", "id": 11}, *rows[4:]])
    args = [
        f"model.name={ckpt}",
        "sampler=all",
        "capture.layers=[0]",
        "capture.heads=[0]",
        *local(data, "dataset.id_column=id", "dataset.streaming=true"),
        "inference.batch_size=1",
        "output.flush_every_examples=1",
    ]
    proc = cli(tmp_path, *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "id 11 appears more than once (rows 1 and 4)" in proc.stderr
    assert "examples before it that were already committed stay valid" in proc.stderr
    out = tmp_path / "out"
    for table in read_configs(out).values():  # every part file on disk, committed or not
        keys = list(zip(table["example_id"].to_pylist(), table["position"].to_pylist(), strict=True))
        assert len(keys) == len(set(keys))
        assert set(table["example_id"].to_pylist()) <= {10, 11, 12, 13}

    write_jsonl(data, rows)  # fixed: the same command resumes
    assert cli(tmp_path, *args).returncode == 0
    clean = run_cli([*args, f"output.dir={tmp_path}/clean"], cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr
    for config in ("l00h00q", "l00h00k"):
        resumed = load_dataset(str(out), config, split="train").sort(["example_id", "position"])
        expected = load_dataset(str(tmp_path / "clean"), config, split="train").sort(
            ["example_id", "position"]
        )
        assert resumed.num_rows == expected.num_rows > 0
        assert resumed["example_id"] == expected["example_id"]
        assert resumed["position"] == expected["position"]
        assert resumed["vector"] == expected["vector"]


def test_an_id_beyond_int64_is_blamed_on_its_own_row(tmp_path, docs):
    # JSON's reader holds the whole column as floats for that one id: row 0's id 1 reads as 1.0.
    data = docs([{"text": "a b", "id": 1}, {"text": "c d", "id": 2}, {"text": "e f", "id": 10**20 - 1}])
    proc = cli(tmp_path, *local(data, "dataset.id_column=id"))
    assert_refused(
        proc,
        tmp_path,
        "dataset.id_column='id': row 2 has the id 1e+20 (as the reader holds it), beyond the 64-bit integers",
        "give ids as strings",
    )


@pytest.mark.parametrize(
    "value, needle",
    [
        (None, "dataset.id_column='id': row 0 has a null id"),
        (1.5, "dataset.id_column='id': row 0 has an id of type float (1.5); ids must be integers or strings"),
        ([1, 2], "dataset.id_column='id': row 0 has an id of type list ([1, 2])"),
    ],
)
def test_null_or_unusable_ids_are_refused(tmp_path, docs, value, needle):
    data = docs([{"text": "a b", "id": value}, {"text": "c d", "id": 7}])
    proc = cli(tmp_path, *local(data, "dataset.id_column=id"))
    assert_refused(proc, tmp_path, needle, "dataset.id_column=null")


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize(
    "value, needle",
    [
        ([1, 2], "row 1 holds a value of type list ([1, 2]), not a string"),
        ({"a": 1}, "row 1 holds a value of type dict ({'a': 1}), not a string"),
        (42, "row 1 holds a value of type int (42), not a string"),
    ],
)
def test_non_string_texts_are_refused(tmp_path, docs, value, needle, streaming):
    data = docs([{"text": "a fine text"}, {"text": value}])
    proc = cli(
        tmp_path, *local(data, f"dataset.streaming={str(streaming).lower()}", "inference.batch_size=2")
    )
    assert_refused(proc, tmp_path, f"dataset.text_column='text': {needle}")


# ------------------------------------------------------------------------------------------- text lengths


@pytest.fixture
def short_model(tmp_path):
    """A checkpoint built for 16 positions, and a text three times that long."""
    ckpt = save_checkpoint(tmp_path, "llama", max_position_embeddings=16)
    text = " ".join(["attention keys queries rotary position"] * 6)
    assert len(embedded_tokenizer()(text)["input_ids"]) > 40
    return ckpt, write_jsonl(tmp_path / "long.jsonl", [{"text": text}, {"text": "short one"}])


def test_max_length_past_the_model_is_refused(tmp_path, short_model):
    ckpt, data = short_model
    proc = cli(tmp_path, f"model.name={ckpt}", *local(data), "tokenizer.max_length=17")
    assert_refused(
        proc,
        tmp_path,
        "tokenizer.max_length=17 exceeds the 16 positions the model was built for",
        "(max_position_embeddings=16)",
    )


def test_without_max_length_texts_are_cut_to_the_model(tmp_path, short_model):
    """Cut and counted, with one warning line; the rows are those of an explicit max_length equal to it."""
    ckpt, data = short_model
    common = [f"model.name={ckpt}", "sampler=all", *local(data), "inference.batch_size=2"]
    cut = run_cli([*common, f"output.dir={tmp_path}/cut"], cwd=tmp_path)
    assert cut.returncode == 0, cut.stderr
    logged = cut.stdout + cut.stderr  # Hydra's log handler writes to stdout
    assert logged.count("more than the 16 positions the model was built for: cut to 16") == 1
    assert "cut 1 texts to the model's positions" in logged
    explicit = run_cli([*common, "tokenizer.max_length=16", f"output.dir={tmp_path}/explicit"], cwd=tmp_path)
    assert explicit.returncode == 0, explicit.stderr
    for config in ("l00h00q", "l01h01k"):
        a = load_dataset(str(tmp_path / "cut"), config, split="train").sort(["example_id", "position"])
        b = load_dataset(str(tmp_path / "explicit"), config, split="train").sort(["example_id", "position"])
        assert max(a["position"]) == 15
        assert [p for e, p in zip(a["example_id"], a["position"], strict=True) if e == 0] == list(range(16))
        assert a["vector"] == b["vector"] and a["position"] == b["position"]


# ------------------------------------------------------------------------------------------ config values


def test_every_config_problem_at_once(tmp_path):
    proc = cli(
        tmp_path,
        "sampler=uniform",
        "sampler.bucket_size=99999999999999999999",
        "sampler.base_rate=inf",
        "model.seed=-1",
        "capture.head_sampling.seed=4294967296",
        "inference.batch_size=0",
        "tokenizer.max_length=0",
        "dataset.max_samples=0",
        "output.flush_every_examples=0",
        "output.max_buffer_mb=3000000000",
        "output.hub.branch=a//b",
        "wandb.mode=loud",
    )
    message = assert_refused(
        proc,
        tmp_path,
        "sampler.bucket_size must be <= 2147483647, got 99999999999999999999",
        "sampler.base_rate must be finite, got inf",
        "model.seed must be in 0..4294967295, got -1",
        "capture.head_sampling.seed must be in 0..4294967295, got 4294967296",
        "inference.batch_size must be >= 1, got 0",
        "tokenizer.max_length must be >= 1 or null, got 0",
        "dataset.max_samples must be >= 1 or null, got 0",
        "output.flush_every_examples must be >= 1, got 0",
        "output.max_buffer_mb must be <= 2147483647, got 3000000000",
        "output.hub.branch='a//b' is not a valid branch name",
        "wandb.mode='loud' is unknown",
    )
    assert message.count("\n  - ") == 11


@pytest.mark.parametrize(
    "branch, why",
    [
        ("a//b", "contain '//'"),
        ("a/.hidden", "may start with '.' (got '.hidden')"),
        ("x.lock/y", "may end with '.lock' (got 'x.lock')"),
        ("a..b", "cannot contain '..'"),
        ("end.", "cannot end with '.'"),
        ("-x", "cannot start with '-'"),
        ("a@{b", "use only letters, digits and . _ - /"),
    ],
)
def test_branch_names_git_rejects(tmp_path, branch, why):
    proc = cli(tmp_path, f"output.hub.branch='{branch}'")
    assert_refused(proc, tmp_path, f"output.hub.branch='{branch}' is not a valid branch name", why)


def test_problems_with_the_model_are_listed_together(tmp_path):
    """Those that need the model's config (its heads, its positions) still come in one message."""
    proc = cli(tmp_path, "capture.head_sampling.count=100", "tokenizer.max_length=5000")
    message = assert_refused(
        proc,
        tmp_path,
        "capture.head_sampling.count=100 exceeds the 16 query heads allowed",
        "tokenizer.max_length=5000 exceeds the 4096 positions the model was built for",
    )
    assert message.count("\n  - ") == 2
