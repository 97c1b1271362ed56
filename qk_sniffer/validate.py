"""Whole-config checks run before any weight is loaded; every problem is reported at once."""

from __future__ import annotations

from typing import Any

from .config import DTYPES, Config
from .errors import UserError
from .heads import check_ranges
from .models import ModelLayout
from .samplers import SAMPLERS, parameter_problems

OUTPUT_MODES = ("append", "replace")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def config_problems(cfg: Config) -> list[str]:
    problems = []
    if cfg.model.dtype not in DTYPES:
        problems.append(
            f"model.dtype={cfg.model.dtype!r} is not supported; choose one of {', '.join(DTYPES)}"
        )
    impl = cfg.model.attn_implementation
    if impl is not None and impl not in ATTN_IMPLEMENTATIONS:
        problems.append(
            f"model.attn_implementation={impl!r} is unknown; choose null (best available) or one of "
            f"{', '.join(ATTN_IMPLEMENTATIONS)}"
        )
    if cfg.inference.batch_size < 1:
        problems.append(f"inference.batch_size must be >= 1, got {cfg.inference.batch_size}")
    if cfg.tokenizer.max_length is not None and cfg.tokenizer.max_length < 1:
        problems.append(f"tokenizer.max_length must be >= 1 or null, got {cfg.tokenizer.max_length}")
    problems += _sampler_problems(cfg.sampler)
    data = cfg.dataset
    if data.max_samples is not None and data.max_samples < 1:
        problems.append(f"dataset.max_samples must be >= 1 or null, got {data.max_samples}")
    if data.num_shards < 1:
        problems.append(f"dataset.num_shards must be >= 1, got {data.num_shards}")
    elif not 0 <= data.shard_index < data.num_shards:
        problems.append(f"dataset.shard_index must be in 0..{data.num_shards - 1}, got {data.shard_index}")
    if data.path == "synthetic" and (data.seq_len < 1 or data.num_examples < 1):
        problems.append("dataset.seq_len and dataset.num_examples must be >= 1 for dataset.path=synthetic")
    count = cfg.capture.head_sampling.count
    if count is not None and count < 1:
        problems.append(f"capture.head_sampling.count must be >= 1 or null, got {count}")
    if not (cfg.capture.queries or cfg.capture.keys):
        problems.append("capture.queries and capture.keys are both false: nothing to capture")
    out = cfg.output
    if out.mode not in OUTPUT_MODES:
        problems.append(f"output.mode={out.mode!r} is unknown; choose one of {', '.join(OUTPUT_MODES)}")
    if out.flush_every_examples < 1:
        problems.append(f"output.flush_every_examples must be >= 1, got {out.flush_every_examples}")
    if out.max_buffer_mb < 1:
        problems.append(f"output.max_buffer_mb must be >= 1, got {out.max_buffer_mb}")
    if out.hub.push and not out.hub.repo_id:
        problems.append("output.hub.push=true needs output.hub.repo_id (e.g. your-name/qk-captures)")
    return problems


def _sampler_problems(sampler: Any) -> list[str]:
    name = sampler.get("name")
    if name not in SAMPLERS:
        return [f"sampler={name!r} is unknown; choose one of {', '.join(SAMPLERS.names())}"]
    return parameter_problems(sampler)


def validate(cfg: Config, layout: ModelLayout | None = None) -> None:
    """Raise one UserError listing every problem (layer/head ranges too, when the layout is known)."""
    problems = config_problems(cfg)
    if layout is not None:
        problems += check_ranges(cfg.capture, layout)
    if problems:
        raise UserError("invalid configuration:\n  - " + "\n  - ".join(problems))
