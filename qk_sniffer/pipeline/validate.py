"""Whole-config checks run before any weight is loaded; every problem is reported at once.

Two stages: :func:`config_problems` needs nothing but the config (it runs before any network call, even
the one that fetches the model's config), and :func:`validate` with a layout and position limit adds what
depends on the model's shape.
"""

from __future__ import annotations

import os
from typing import Any

from ..capture.heads import check_ranges, select_heads
from ..capture.layout import ModelLayout
from ..capture.positions import PositionLimit
from ..capture.samplers import INT32_MAX, SAMPLERS, parameter_problems
from ..core.config import DTYPES, Config, setting, unknown_keys
from ..core.errors import UserError
from ..hub.gitref import branch_problem
from ..inputs.sources import LOCAL_BUILDERS
from ..tracking.wandb_run import choose_mode

OUTPUT_MODES = ("append", "replace")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
# Seeds feed numpy's and torch's generators; 32 bits is what every generator and tool accepts as-is.
SEED_MAX = 2**32 - 1


def _count(key: str, value: int | None, nullable: bool = False) -> list[str]:
    """A count or size: an integer in 1..INT32_MAX (positions and buckets are stored as int32)."""
    if value is None and nullable:
        return []
    if value is None or value < 1:
        return [f"{key} must be >= 1{' or null' if nullable else ''}, got {value}"]
    if value > INT32_MAX:
        return [f"{key} must be <= {INT32_MAX}, got {value}"]
    return []


def _seed(key: str, value: int) -> list[str]:
    return [] if 0 <= value <= SEED_MAX else [f"{key} must be in 0..{SEED_MAX}, got {value}"]


def capture_problems(capture: Any) -> list[str]:
    """The ``capture`` group's own checks; the Python API (:func:`qk_sniffer.attach`) runs them too."""
    problems = _count("capture.head_sampling.count", capture.head_sampling.count, nullable=True)
    problems += _seed("capture.head_sampling.seed", capture.head_sampling.seed)
    if not (setting(capture, "queries") or setting(capture, "keys")):
        problems.append("capture.queries and capture.keys are both false: nothing to capture")
    return problems


def config_problems(cfg: Config) -> list[str]:
    problems = unknown_keys(cfg)
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
    problems += _seed("model.seed", cfg.model.seed)
    problems += _count("inference.batch_size", cfg.inference.batch_size)
    problems += _count("inference.token_chunk", cfg.inference.token_chunk, nullable=True)
    budget = cfg.inference.memory_budget_gb
    if budget is not None and not budget > 0:
        problems.append(
            f"inference.memory_budget_gb must be > 0 or null (the device's free memory), got {budget}"
        )
    problems += _count("tokenizer.max_length", cfg.tokenizer.max_length, nullable=True)
    problems += _sampler_problems(cfg.sampler)
    data = cfg.dataset
    if data.path in LOCAL_BUILDERS and not data.data_files:
        # datasets would read every file of the working directory instead.
        problems.append(
            f"dataset.path={data.path!r} reads local files: set dataset.data_files (e.g. "
            "dataset.data_files=/path/to/docs.jsonl)"
        )
    problems += _count("dataset.max_samples", data.max_samples, nullable=True)
    problems += _count("dataset.num_shards", data.num_shards)
    if 1 <= data.num_shards <= INT32_MAX and not 0 <= data.shard_index < data.num_shards:
        problems.append(f"dataset.shard_index must be in 0..{data.num_shards - 1}, got {data.shard_index}")
    if data.path == "synthetic":
        problems += _count("dataset.seq_len", data.seq_len) + _count(
            "dataset.num_examples", data.num_examples
        )
        problems += _seed("dataset.seed", data.seed)
    problems += capture_problems(cfg.capture)
    out = cfg.output
    if out.mode not in OUTPUT_MODES:
        problems.append(f"output.mode={out.mode!r} is unknown; choose one of {', '.join(OUTPUT_MODES)}")
    problems += _count("output.flush_every_examples", out.flush_every_examples)
    problems += _count("output.max_buffer_mb", out.max_buffer_mb)
    if out.hub.push and not out.hub.repo_id:
        problems.append("output.hub.push=true needs output.hub.repo_id (e.g. your-name/qk-captures)")
    if out.hub.branch:
        problem = branch_problem(out.hub.branch)
        if problem:
            problems.append(f"output.hub.branch={out.hub.branch!r} is not a valid branch name: {problem}")
    try:  # the tracker starts after the checks; its mode (wandb.mode or $WANDB_MODE) is checked with them
        choose_mode(cfg.wandb.mode, os.environ)
    except UserError as exc:
        problems.append(str(exc))
    return problems


def _sampler_problems(sampler: Any) -> list[str]:
    name = sampler.get("name")
    if name not in SAMPLERS:
        return [f"sampler={name!r} is unknown; choose one of {', '.join(SAMPLERS.names())}"]
    return parameter_problems(sampler)


def model_problems(cfg: Config, layout: ModelLayout, limit: PositionLimit | None) -> list[str]:
    """What the config asks of this particular model that it cannot give: layers, heads, positions."""
    problems = check_ranges(cfg.capture, layout)
    if not problems:  # the head selection's own refusals (a head_sampling.count above what the filters allow)
        try:
            select_heads(cfg.capture, layout)
        except UserError as exc:
            problems.append(str(exc))
    if limit is not None:
        lengths = [("tokenizer.max_length", cfg.tokenizer.max_length)]
        if cfg.dataset.path == "synthetic":
            lengths = [("dataset.seq_len", cfg.dataset.seq_len)]
        for key, length in lengths:
            if length is not None and length > limit.positions:
                problems.append(
                    f"{key}={length} exceeds the {limit.positions} positions the model was built for "
                    f"({limit.source}); lower it, or set model.config_overrides to extend the model "
                    "(e.g. a rope_scaling) if that is the model you mean to study"
                )
    return problems


def validate(cfg: Config, layout: ModelLayout | None = None, limit: PositionLimit | None = None) -> None:
    """Raise one UserError listing every problem (the model's ranges too, when its layout is known)."""
    problems = config_problems(cfg)
    if layout is not None:
        problems += model_problems(cfg, layout, limit)
    if problems:
        raise UserError("invalid configuration:\n  - " + "\n  - ".join(problems))
