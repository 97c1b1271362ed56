"""W&B tracking: an offline run's own log file (run-*.wandb) is read back and checked against the Parquet
the same run exported; multirun grouping; and runs without W&B (disabled, not installed) still capture."""

from __future__ import annotations

import io
import json
import logging
import re
import struct
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch
from helpers import compose_cfg, read_configs, run_cli

from qk_sniffer.capture.rows import Block, RowKeys
from qk_sniffer.capture.stats import CaptureStats
from qk_sniffer.core.child import Helper
from qk_sniffer.core.errors import UserError
from qk_sniffer.inputs.data import Batch, Example
from qk_sniffer.pipeline.runner import run
from qk_sniffer.tracking import progress, wandb_run
from qk_sniffer.tracking.wandb_process import WandbReplay

SECRET = "hf_" + "qkSnifferTestSecret0123456789abcdef"


# ---------------------------------------------------------------------------------- reading a .wandb log


@dataclass
class WandbLog:
    name: str = ""
    group: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def leveldb_records(data: bytes):
    """wandb's transaction log is a LevelDB log (7-byte file header, 32 KiB blocks, 7-byte record headers:
    crc32, length, type FULL=1/FIRST=2/MIDDLE=3/LAST=4). wandb 0.31 ships no Python reader, so here is one."""
    assert data[:4] == b":W&B", "not a wandb transaction log"
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block trailer too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""
        elif kind == 0 and length == 0:  # zero-filled remainder of a block
            pos += left - 7


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_wandb_log(path: Path) -> WandbLog:
    from wandb.proto import wandb_internal_pb2 as pb

    out = WandbLog()
    for raw in leveldb_records(path.read_bytes()):
        record = pb.Record()
        record.ParseFromString(raw)
        which = record.WhichOneof("record_type")
        if which == "run":
            out.name, out.group = record.run.display_name, record.run.run_group
            out.config.update({_key(u): json.loads(u.value_json) for u in record.run.config.update})
        elif which == "config":
            out.config.update({_key(u): json.loads(u.value_json) for u in record.config.update})
        elif which == "history":
            out.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif which == "summary":
            out.summary.update({_key(u): json.loads(u.value_json) for u in record.summary.update})
    return out


def read_table(log_path: Path, point: dict[str, Any], key: str) -> dict[str, Any]:
    """A wandb.Table logged under ``key``: the JSON file its history entry points to."""
    assert point[f"{key}/_type"] == "table-file"
    return json.loads((log_path.parent / "files" / point[f"{key}/path"]).read_text())


def wandb_logs(root: Path) -> list[Path]:
    return sorted(root.rglob("offline-run-*/run-*.wandb"))


# ---------------------------------------------------------------------------------- what the Parquet holds


def exported(out_dir: Path) -> dict[str, Any]:
    """Rows, rows per (layer, kind) and per (kind, bucket), and mean vector norms, from the Parquet files."""
    rows_per_lk: dict[str, int] = defaultdict(int)
    rows_per_bucket: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    norms: dict[str, dict[int, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    total = 0
    for name, table in read_configs(out_dir).items():
        lk = name[:3] + name[-1]  # l00h01q -> l00q
        vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float64)
        buckets = np.asarray(table.column("bucket").to_pylist())
        total += table.num_rows
        rows_per_lk[lk] += table.num_rows
        for bucket in np.unique(buckets):
            rows_per_bucket[name[-1]][str(bucket)] += int((buckets == bucket).sum())
            norms[lk][int(bucket)].append(np.linalg.norm(vectors[buckets == bucket], axis=1))
    mean_norm = {
        lk: {str(b): float(np.concatenate(v).mean()) for b, v in per.items()} for lk, per in norms.items()
    }
    return {
        "rows": total,
        "rows_per_layer_kind": dict(rows_per_lk),
        "mean_norm": mean_norm,
        "rows_per_bucket": {k: dict(v) for k, v in rows_per_bucket.items()},
    }


def _nonzero(per_kind: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {kind: {b: n for b, n in buckets.items() if n} for kind, buckets in per_kind.items()}


# ---------------------------------------------------------------------------------- through the real CLI


def test_offline_run_log_holds_config_one_point_per_batch_and_the_exported_rows(tmp_path):
    run_dir, out_dir = tmp_path / "run", tmp_path / "out"
    proc = run_cli(
        [
            "wandb.mode=offline",
            f"hydra.run.dir={run_dir}",
            f"output.dir={out_dir}",
            "dataset.max_samples=5",
            "inference.batch_size=2",
        ],
        cwd=tmp_path,
        env={"HF_TOKEN": SECRET},
        process=True,  # wandb's log file is complete once its process has exited
    )
    assert proc.returncode == 0, proc.stderr
    [log_path] = wandb_logs(tmp_path)
    assert log_path.is_relative_to(run_dir / "wandb"), "W&B files belong in the Hydra run dir"
    assert SECRET.encode() not in log_path.read_bytes()
    wb = read_wandb_log(log_path)
    meta = json.loads((out_dir / "qk_sniffer.json").read_text())
    disk = exported(out_dir)

    assert wb.name == "embedded-qwen3-tiny-log_bucket-embedded"
    assert wb.group == ""
    assert wb.config["model"]["slug"] == "embedded-qwen3-tiny"
    assert wb.config["sampler"] == {"name": "log_bucket", "base_rate": 1.0, "min_bucket_size": 1}
    assert wb.config["dataset"]["max_samples"] == 5
    assert wb.config["captured_heads"] == {"q": 16, "k": 8}

    # 5 examples in batches of 2: three batches, three history points, each a whole batch.
    assert len(wb.history) == 3
    assert [p["_step"] for p in wb.history] == [0, 1, 2]
    assert all(p["tokens_per_s"] > 0 and p["examples_per_s"] > 0 for p in wb.history)
    assert [p["examples/cumulative"] for p in wb.history] == [2, 4, 5]
    assert wb.history[-1]["tokens/cumulative"] == meta["tokens"]
    assert sum(p["rows/batch"] for p in wb.history) == disk["rows"]
    assert all(p["rows/batch"] == p["rows/q"] + p["rows/k"] for p in wb.history)
    assert wb.history[-1]["rows/cumulative"] == disk["rows"]
    assert all(p["time/forward_s"] > 0 for p in wb.history)
    # The hook runs inside the forward, and planning inside the hook.
    assert all(0 < p["time/capture_hook_s"] <= p["time/forward_s"] for p in wb.history)
    assert all(p["time/capture_plan_s"] <= p["time/capture_hook_s"] for p in wb.history)

    assert wb.summary["rows"] == disk["rows"] > 0
    assert wb.summary["examples"] == 5
    assert wb.summary["bytes_written"] == sum(p.stat().st_size for p in out_dir.rglob("*.parquet"))
    assert wb.summary["output_dir"] == str(out_dir)
    assert {"phase/load_s", "phase/capture_s", "phase/export_s", "phase/push_s", "phase/total_s"} <= set(
        wb.summary
    )
    assert wb.summary["rows_per_layer_kind"] == disk["rows_per_layer_kind"]
    assert _nonzero(wb.summary["rows_per_bucket"]) == disk["rows_per_bucket"]
    # The on-the-fly norms equal the norms of the exported vectors, for every (layer, kind, bucket).
    assert wb.summary["mean_norm"].keys() == disk["mean_norm"].keys()
    for lk, per_bucket in disk["mean_norm"].items():
        assert wb.summary["mean_norm"][lk].keys() == per_bucket.keys()
        for bucket, value in per_bucket.items():
            assert wb.summary["mean_norm"][lk][bucket] == pytest.approx(value, rel=1e-5)
    # The chart and its tables ride on the last batch's point (no extra history point).
    assert (
        wb.config["_wandb/visualize/charts/rows_per_bucket"]["panel_config"]["panelDefId"] == "wandb/bar/v0"
    )
    chart = read_table(log_path, wb.history[-1], "charts/rows_per_bucket_table")
    assert chart["columns"] == ["bucket", "rows", "q_rows", "k_rows"]
    assert {row[0]: row[1:] for row in chart["data"] if row[1]} == {
        b: [
            disk["rows_per_bucket"]["q"].get(b, 0) + disk["rows_per_bucket"]["k"].get(b, 0),
            disk["rows_per_bucket"]["q"].get(b, 0),
            disk["rows_per_bucket"]["k"].get(b, 0),
        ]
        for b in {*disk["rows_per_bucket"]["q"], *disk["rows_per_bucket"]["k"]}
    }
    # The report's figures, as the card embeds them, ride on the same point.
    drawn = json.loads((out_dir / "figures" / "figures.json").read_text())["figures"]
    assert len(drawn) == 5
    for name in drawn:
        assert wb.history[-1][f"figures/{name}/_type"] == "image-file"
        logged = log_path.parent / "files" / wb.history[-1][f"figures/{name}/path"]
        assert logged.stat().st_size > 0
    heatmap = read_table(log_path, wb.history[-1], "tables/mean_norm_heatmap")
    buckets = heatmap["columns"][2:]
    assert heatmap["columns"][:2] == ["layer_kind", "rows"]
    assert [row[0] for row in heatmap["data"]] == sorted(disk["mean_norm"])
    for lk, rows, *values in heatmap["data"]:
        assert rows == disk["rows_per_layer_kind"][lk]
        assert {b: v for b, v in zip(buckets, values, strict=True) if v is not None} == pytest.approx(
            disk["mean_norm"][lk], rel=1e-5
        )


def test_a_two_value_multirun_gives_two_runs_in_one_group(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            "sampler=log_bucket,uniform",
            "wandb.mode=offline",
            f"hydra.sweep.dir={sweep}",
            f"output.dir={tmp_path}/out_${{hydra:job.num}}",
            "dataset.max_samples=2",
        ],
        cwd=tmp_path,
        process=True,  # wandb's log files are complete once its process has exited
    )
    assert proc.returncode == 0, proc.stderr
    logs = {int(p.relative_to(sweep).parts[0]): read_wandb_log(p) for p in wandb_logs(sweep)}
    assert sorted(logs) == [0, 1], "one run per job, inside its job dir"
    assert logs[0].group == logs[1].group == "sweep"  # the sweep dir, relative to the working dir
    assert [logs[n].config["sampler"]["name"] for n in (0, 1)] == ["log_bucket", "uniform"]
    for num, wb in logs.items():
        assert wb.summary["rows"] == exported(tmp_path / f"out_{num}")["rows"] > 0
        assert len(wb.history) == 2


# ---------------------------------------------------------------------------------- without W&B


def _small_run(tmp_path, monkeypatch, *overrides: str):
    tmp_path.mkdir(exist_ok=True)
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg([f"output.dir={tmp_path / 'out'}", "dataset.max_samples=2", *overrides])
    result = run(cfg)
    assert result.rows == exported(tmp_path / "out")["rows"] > 0
    return result


def test_disabled_mode_captures_and_writes_no_wandb_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")  # wandb.mode=disabled wins over the environment
    _small_run(tmp_path, monkeypatch, "wandb.mode=disabled")
    assert not list(tmp_path.rglob("*.wandb"))
    assert not (tmp_path / "wandb").exists()


def test_wandb_not_installed_captures_with_a_note(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with caplog.at_level(logging.WARNING, logger="qk_sniffer.tracking"):
        _small_run(tmp_path, monkeypatch, "wandb.mode=offline")
    assert "wandb is not installed: W&B tracking is off for this run (pip install wandb)" in caplog.messages


def test_no_key_means_offline_with_a_one_line_note(tmp_path, monkeypatch, caplog):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    (tmp_path / "wb").mkdir()
    with caplog.at_level(logging.WARNING, logger="qk_sniffer.tracking"):
        result = _small_run(tmp_path, monkeypatch, "wandb.mode=null")
    assert caplog.messages == [
        "no W&B API key (WANDB_API_KEY or ~/.netrc): logging offline; upload later with `wandb sync`"
    ]
    [log_path] = wandb_logs(tmp_path / "wb")
    assert read_wandb_log(log_path).summary["rows"] == result.rows


def test_an_unknown_mode_is_a_user_error_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg([f"output.dir={tmp_path / 'out'}", "wandb.mode=onlin"])
    with pytest.raises(UserError) as err:
        run(cfg)
    # Listed with every other config problem, before the dataset, the output dir or the Hub are touched.
    assert str(err.value) == (
        "invalid configuration:\n  - wandb.mode='onlin' is unknown; choose one of online, offline, disabled "
        "(or null)"
    )
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------- the pieces


def test_mode_choice(tmp_path):
    no_netrc = {"NETRC": str(tmp_path / "missing")}
    note = "no W&B API key (WANDB_API_KEY or ~/.netrc): logging offline; upload later with `wandb sync`"
    assert wandb_run.choose_mode("disabled", {"WANDB_MODE": "online"}) == ("disabled", None)
    assert wandb_run.choose_mode(None, {**no_netrc, "WANDB_MODE": "disabled"}) == ("disabled", None)
    assert wandb_run.choose_mode(None, {**no_netrc, "WANDB_MODE": "dryrun"}) == ("offline", None)
    assert wandb_run.choose_mode(None, no_netrc) == ("offline", note)
    assert wandb_run.choose_mode("online", no_netrc) == ("offline", note)
    assert wandb_run.choose_mode(None, {**no_netrc, "WANDB_API_KEY": "x" * 40}) == ("online", None)
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc_file.chmod(0o600)
    assert wandb_run.choose_mode(None, {"NETRC": str(netrc_file)}) == ("online", None)
    assert wandb_run.choose_mode(
        None, {"NETRC": str(netrc_file), "WANDB_BASE_URL": "https://wb.example"}
    ) == (
        "offline",
        note,
    )
    with pytest.raises(UserError, match=r"^WANDB_MODE='sometimes' is unknown; choose one of online, offline"):
        wandb_run.choose_mode(None, {"WANDB_MODE": "sometimes"})


def test_secrets_never_reach_the_logged_config():
    config = {
        "output": {"hub": {"repo_id": "me/qk", "token": SECRET, "private": False}},
        "tokenizer": {"name": "Qwen/Qwen3-8B", "max_length": None},
        "capture": {"token_strings": True},
        "extra": [{"api_token": "a" * 40, "token_budget": "123"}],
    }
    assert wandb_run.strip_secrets(config) == {
        "output": {"hub": {"repo_id": "me/qk", "private": False}},
        "tokenizer": {"name": "Qwen/Qwen3-8B", "max_length": None},
        "capture": {"token_strings": True},
        "extra": [{"token_budget": "123"}],
    }


def _block(layer: int, kind: str, vectors: np.ndarray, buckets: list[int]) -> Block:
    n = len(buckets)
    zeros = np.zeros(n, dtype=np.int64)
    plan = RowKeys(zeros, np.arange(n), np.asarray(buckets, dtype=np.int32), zeros, zeros)
    return Block(layer, kind, tuple(range(vectors.shape[0])), vectors.astype(np.float32), plan, None)


def test_norm_statistics_accumulate_exactly_across_batches():
    stats = CaptureStats()
    # Two heads, rows in buckets 0, 2, 2: norms 5 and 1 (bucket 0), 2 and 0 and 3 and 4 (bucket 2).
    first = np.array([[[3, 4], [2, 0], [0, 0]], [[1, 0], [0, 3], [4, 0]]])
    assert stats.add([_block(1, "q", first, [0, 2, 2])]) == {"q": 6, "k": 0}
    # A later batch reaching a higher bucket: the arrays grow.
    assert stats.add(
        [_block(1, "q", np.array([[[0, 6]]]), [3]), _block(0, "k", np.array([[[1, 1]]]), [0])]
    ) == {"q": 1, "k": 1}
    assert stats.rows_per_layer_kind() == {"l00k": 1, "l01q": 7}
    assert stats.rows_per_bucket() == {
        "k": {"0": 1, "1": 0, "2": 0, "3": 0},
        "q": {"0": 2, "1": 0, "2": 4, "3": 1},
    }
    assert stats.mean_norms() == {
        "l00k": {"0": pytest.approx(2**0.5)},
        "l01q": {"0": 3.0, "2": 2.25, "3": 6.0},
    }


def test_many_buckets_fold_into_at_most_64_ranges():
    stats = CaptureStats()
    buckets = list(range(130))  # 130 buckets -> width 3 -> 44 ranges
    stats.add([_block(0, "q", np.ones((1, 130, 2)), buckets)])
    width, labels = stats.bucket_groups()
    assert (width, len(labels), labels[0], labels[-1]) == (3, 44, "0-2", "129-131")
    assert stats.rows_per_bucket()["q"]["129-131"] == 1
    assert sum(stats.rows_per_bucket()["q"].values()) == 130


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _tiny_batches(n: int) -> list[Batch]:
    return [Batch([Example(i, i, [1] * 100)], torch.ones(1, 100, dtype=torch.long)) for i in range(n)]


def test_progress_bar_shows_tokens_per_second_and_eta_on_a_terminal(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = progress.ProgressBar(True, total_examples=4)
    for batch in _tiny_batches(3):
        bar.update(batch, wall_s=0.5)
    bar.close()
    last = terminal.getvalue().split("\r")[-1]
    # 3 of 4 examples, an ETA ("<" remaining), the tokens so far and their rate: 300 in at least 0.5 s.
    assert re.search(
        r"capture:\s+75%.*\| 3/4 \[\d\d:\d\d<\d\d:\d\d, .*ex/s, 300 tok, ([\d,]+) tok/s\]", last
    ), last
    rate = int(re.search(r"([\d,]+) tok/s", last).group(1).replace(",", ""))
    assert 0 < rate <= 600


def test_progress_bar_is_silent_when_stderr_is_not_a_terminal(capsys):
    bar = progress.ProgressBar(True, total_examples=4)
    for batch in _tiny_batches(4):
        bar.update(batch, wall_s=0.1)
    bar.close()
    assert capsys.readouterr().err == ""


class _BrokenRun:
    """A W&B run whose logging fails (a full disk, a dead service process)."""

    def __init__(self) -> None:
        self.finished_with: list[int] = []

    def log(self, data, step=None):
        raise RuntimeError("wandb-core went away")

    def finish(self, exit_code=0):
        self.finished_with.append(exit_code)


def _stand_in(run=None, error: Exception | None = None) -> SimpleNamespace:
    """wandb as the W&B process uses it, with ``init`` giving ``run`` (or raising ``error``)."""
    import wandb

    def init(**settings):
        if error is not None:
            raise error
        return run

    return SimpleNamespace(
        init=init, Settings=wandb.Settings, Table=wandb.Table, plot=wandb.plot, Image=wandb.Image
    )


def _warning(text: str) -> dict[str, Any]:
    return {"logger": "qk_sniffer.tracking.wandb_run", "level": logging.WARNING, "message": text}


def test_wandb_failures_are_reported_and_drop_wandb_for_the_rest_of_the_run():
    broken = _BrokenRun()
    replay = WandbReplay(_stand_in(broken))
    assert replay.handle({"init": {"mode": "offline"}}) == []
    assert replay.handle({"log": {"rows/batch": 3}, "step": 0}) == [
        _warning("W&B logging failed (wandb-core went away); the capture goes on without W&B")
    ]
    assert broken.finished_with == [1]  # marked failed in W&B, once
    assert replay.handle({"log": {"rows/batch": 3}, "step": 1}) == []
    assert replay.handle({"finish": 0}) == [{"finished": True}]
    assert broken.finished_with == [1]

    refused = WandbReplay(_stand_in(error=RuntimeError("no service")))
    assert refused.handle({"init": {"mode": "offline"}}) == [
        _warning("could not start W&B (no service); the capture goes on without it")
    ]
    assert refused.handle({"summary": {"rows": 1}}) == []
    assert refused.handle({"finish": 0}) == [{"finished": True}]


def test_the_run_logs_what_its_wandb_process_reports(caplog):
    """Across the process boundary: wandb itself refuses the settings in the helper, and the run logs the
    helper's warning under its own logger, once the run finishes."""
    sink = wandb_run.WandbSink(Helper(wandb_run.WANDB_PROCESS))
    sink._send({"init": {"mode": "sometimes", "project": "qk"}})  # wandb.init raises on this mode
    sink.batch({"tokens_per_s": 1.0}, {"q": 1, "k": 1})
    with caplog.at_level(logging.WARNING, logger="qk_sniffer.tracking"):
        sink.finish(failed=False)
    [message] = caplog.messages
    assert message.startswith("could not start W&B (") and "sometimes" in message


class _RecordingRun:
    """A W&B run that records what it is given, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.summary = self

    def log(self, data, step=None):
        self.calls.append(("log", step, sorted(data)))

    def update(self, summary):
        self.calls.append(("summary", summary["rows"]))

    def finish(self, exit_code=0):
        self.calls.append(("finish", exit_code))


def test_the_wandb_process_applies_what_it_is_sent_in_order(tmp_path):
    recorded = _RecordingRun()
    replay = WandbReplay(_stand_in(recorded))
    figure = tmp_path / "coverage.png"
    PIL.Image.new("RGB", (4, 4)).save(figure)
    charts = {
        "rows_per_bucket": {"columns": ["bucket", "rows", "q_rows", "k_rows"], "data": [["0", 2, 1, 1]]},
        "mean_norm": {"columns": ["layer", "kind", "bucket", "mean_norm"], "data": [[0, "q", "0", 1.5]]},
        "mean_norm_heatmap": {"columns": ["layer_kind", "rows", "0"], "data": [["l00q", 1, 1.5]]},
        "figures": [str(figure)],
    }
    messages = [
        {"init": {"mode": "offline"}},
        {"log": {"rows/batch": 2}, "step": 0},
        {"log": {"rows/batch": 3}, "step": 1},
        {"charts": charts, "step": 1},
        {"summary": {"rows": 5}},
        {"finish": 0},
    ]
    assert [replay.handle(m) for m in messages] == [[], [], [], [], [], [{"finished": True}]]
    assert recorded.calls == [
        ("log", 0, ["rows/batch"]),
        ("log", 1, ["rows/batch"]),
        (  # the charts and the figures ride on the last batch's step
            "log",
            1,
            [
                "charts/rows_per_bucket",
                "figures/coverage",
                "tables/mean_norm",
                "tables/mean_norm_heatmap",
                "tables/rows_per_bucket",
            ],
        ),
        ("summary", 5),
        ("finish", 0),
    ]


def test_a_run_whose_main_process_goes_away_is_marked_failed():
    """stdin ends without a finish (the main process crashed or was killed): the W&B run failed."""
    recorded = _RecordingRun()
    replay = WandbReplay(_stand_in(recorded))
    replay.handle({"init": {"mode": "offline"}})
    replay.handle({"log": {"rows/batch": 2}, "step": 0})
    assert replay.end() == []
    assert recorded.calls[-1] == ("finish", 1)
    assert WandbReplay(_stand_in(recorded)).end() == []  # never started: nothing to mark
