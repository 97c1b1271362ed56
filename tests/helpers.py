"""Test helpers: tiny checkpoints on disk, composing the real Hydra config, reading the output back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from conftest import REPO, tiny_model
from hydra import compose, initialize_config_dir
from transformers import PreTrainedTokenizerFast

from qk_sniffer.cli import CONF_DIR
from qk_sniffer.config import register_configs
from qk_sniffer.data import EMBEDDED_TOKENIZER

register_configs()


def embedded_tokenizer() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_file=str(EMBEDDED_TOKENIZER), eos_token="<|endoftext|>")


def save_checkpoint(root: Path, model_type: str, **overrides) -> Path:
    """A tiny random model plus the embedded tokenizer, saved as a local checkpoint (save_pretrained)."""
    path = root / f"tiny-{model_type}"
    model = tiny_model(model_type, vocab_size=512, **overrides)
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


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300):
    full_env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "qk_sniffer", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


__all__ = [
    "REPO",
    "compose_cfg",
    "embedded_tokenizer",
    "loaded_rows",
    "every_row_overrides",
    "read_configs",
    "run_cli",
    "save_checkpoint",
    "write_jsonl",
]


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
