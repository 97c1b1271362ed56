"""Test helpers: texts and corpora, tiny checkpoints on disk, composing the real Hydra config, running the
CLI, reading the output back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from hydra import compose, initialize_config_dir
from tiny_models import EMBEDDED_VOCAB, tiny_model
from transformers import PreTrainedTokenizerFast

from qk_sniffer.core.config import CONF_DIR, register_configs
from qk_sniffer.inputs.data import EMBEDDED_TOKENIZER

register_configs()

REPO = Path(__file__).resolve().parent.parent

# Of unequal lengths (a batch of them is right-padded), each longer than any sliding window in the tests (8).
TEXTS = [
    "The river starts as a thin line of meltwater under a grey ridge, and by the first village it is wide.",
    "Short one, still longer than a window.",
    "A mechanical clock is a negotiation between a falling weight and a stubborn escapement; the pendulum "
    "sets the pace.",
    "Counting looks simple until you try it with both hands.",
]
WORDS = [
    "attention",
    "keys",
    "queries",
    "rotary",
    "position",
    "long",
    "context",
    "sink",
    "head",
    "layer",
    "token",
    "vector",
]


def embedded_tokenizer() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_file=str(EMBEDDED_TOKENIZER), eos_token="<|endoftext|>")


def save_checkpoint(root: Path, model_type: str, **overrides) -> Path:
    """A tiny random model plus the embedded tokenizer, saved as a local checkpoint (save_pretrained)."""
    path = root / f"tiny-{model_type}"
    model = tiny_model(model_type, vocab_size=EMBEDDED_VOCAB, **overrides)
    model.save_pretrained(path)
    embedded_tokenizer().save_pretrained(path)
    return path


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        # Figures take seconds to draw: only the tests that look at them turn report.enabled back on.
        return compose(config_name="config", overrides=["wandb=disabled", "report.enabled=false", *overrides])


def every_row_overrides(ckpt: Path, data: Path, out: Path, pre_rope: bool) -> list[str]:
    """The exactness-test setting: keep every position, batches of 3 texts of unequal lengths."""
    return [
        f"model.name={ckpt}",
        "sampler=all",
        "dataset=local",
        f"dataset.data_files={data}",
        "inference.batch_size=3",
        f"capture.pre_rope={str(pre_rope).lower()}",
        f"output.dir={out}",
    ]


def read_configs(out_dir: Path) -> dict[str, pq.Table]:
    tables = {}
    for directory in sorted(p for p in out_dir.iterdir() if p.is_dir()):
        parts = sorted(directory.glob("*.parquet"))
        if parts:
            tables[directory.name] = pq.ParquetDataset(parts).read()
    return tables


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0", **(env or {})}


def run_cli(
    args: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: int = 300,
    module: str = "qk_sniffer",
    process: bool = False,
) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` to its end, output captured: in this process (seconds of imports saved per
    call), or with ``process=True`` in a fresh one (for what only a process shows: import-time settings,
    exit by signal, a clean interpreter)."""
    if process:
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            env=cli_env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    return run_in_process(args, cwd, env, module)


def run_in_process(
    args: list[str], cwd: Path, env: dict[str, str] | None, module: str
) -> subprocess.CompletedProcess:
    """The command's Hydra app called here as ``python -m`` would call it: its argv, working dir and
    environment, stdout and stderr captured, the exit code from SystemExit (1 with a traceback for an
    escaped exception, as the interpreter does). Hydra's global state, the root logger and the
    environment are put back afterwards, so the next test starts clean."""
    import contextlib
    import importlib
    import io
    import logging
    import traceback

    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    command = "capture" if module == "qk_sniffer" else module.split(".", 1)[1]
    main = importlib.import_module(f"qk_sniffer.commands.{command}").main
    saved_env, saved_argv, saved_cwd = dict(os.environ), sys.argv[:], os.getcwd()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    out, err = io.StringIO(), io.StringIO()
    code = 0
    os.environ.update(cli_env(env))
    sys.argv = [f"{module}/__main__.py", *args]
    os.chdir(cwd)
    GlobalHydra.instance().clear()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if exc.code is not None and not isinstance(exc.code, int):
                    print(exc.code, file=sys.stderr)
            except Exception:  # noqa: BLE001 - what the interpreter would print before exiting 1
                traceback.print_exc()
                code = 1
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None  # type: ignore[assignment]
        for handler in root.handlers:
            if handler not in saved_handlers:
                handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(sys.argv, code, out.getvalue(), err.getvalue())


def start_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    """``python -m qk_sniffer ARGS`` started in the background, to be signalled or raced."""
    return subprocess.Popen(
        [sys.executable, "-m", "qk_sniffer", *args],
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_commits(out_dir: Path, proc: subprocess.Popen, count: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list(out_dir.glob(".qk_sniffer/commits/*/*.json"))) >= count:
            return
        assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.communicate()}"
        time.sleep(0.01)
    raise AssertionError("no commit appeared in time")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def corpus(path: Path, n: int = 160) -> Path:
    """``n`` texts of 8 to 20 words, enough batches and flushes for a run to be interrupted midway."""
    return write_jsonl(
        path,
        [{"text": " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(8 + i % 13))} for i in range(n)],
    )


def cli_args(checkpoint: Path, data: Path, out_dir: Path) -> list[str]:
    """A run of ``corpus`` that commits every few examples: the one the interruption tests stop midway."""
    return [
        f"model.name={checkpoint}",
        "model.dtype=float32",
        "dataset=local",
        f"dataset.data_files={data}",
        "capture.layers=[0,2]",
        "inference.batch_size=2",
        "output.flush_every_examples=4",
        f"output.dir={out_dir}",
    ]


def start_to_interrupt(root: Path, commits: int) -> tuple[subprocess.Popen, list[str]]:
    """The CLI over a 160-text ``corpus`` into ``root/out``, returned still running once ``commits`` commits
    landed, with its arguments (to run the same command again)."""
    args = cli_args(save_checkpoint(root, "qwen3"), corpus(root / "docs.jsonl"), root / "out")
    proc = start_cli(args, root)
    wait_for_commits(root / "out", proc, commits)
    return proc, args


def rows(out_dir: Path) -> list[tuple]:
    """Every row of every config on disk as (config, example_id, position, vector), sorted."""
    out = []
    for name, table in read_configs(out_dir).items():
        data = table.to_pydict()
        out += [
            (name, e, p, tuple(v))
            for e, p, v in zip(data["example_id"], data["position"], data["vector"], strict=True)
        ]
    return sorted(out)


def files_with_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def loaded_rows(out_dir: Path, cache: Path) -> list[tuple]:
    """Every row of every config the card lists, as ``datasets.load_dataset`` returns them (what a user
    gets): (config, example_id, position, vector) sorted, duplicates kept so a doubled row shows."""
    import yaml
    from datasets import load_dataset

    text = (out_dir / "README.md").read_text()
    configs = [c["config_name"] for c in yaml.safe_load(text.split("---", 2)[1])["configs"]]
    out = []
    for i, name in enumerate(configs):
        ds = load_dataset(str(out_dir), name, split="train", cache_dir=str(cache / f"{i}-{name}"))
        out += [
            (name, e, p, tuple(v))
            for e, p, v in zip(ds["example_id"], ds["position"], ds["vector"], strict=True)
        ]
    return sorted(out)
