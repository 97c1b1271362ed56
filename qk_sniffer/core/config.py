"""Typed configuration: one dataclass per Hydra group, registered in Hydra's ConfigStore.

Every YAML file under ``conf/`` names its schema in its defaults list, so an unknown key or a value of the
wrong type fails when Hydra composes the config, naming the key. Cross-field checks that a type cannot
express live in :mod:`qk_sniffer.pipeline.validate`.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

# conf/ sits next to the package in the repository (installs are editable, see the Makefile).
CONF_DIR = (Path(__file__).resolve().parent.parent.parent / "conf").resolve()

DTYPES = ("float32", "float16", "bfloat16")


def setting(node: Any, key: str) -> Any:
    """``node.<key>`` of a config node or a schema object. A composed node is a DictConfig, whose methods
    win over keys of the same name (``capture.keys`` is DictConfig.keys, a bound method: always true), so
    it is read by item; a dataclass by attribute."""
    return node[key] if isinstance(node, Mapping) else getattr(node, key)


@dataclass
class ModelConfig:
    # Hub id or local directory. When set (and random_init is false) it always means from_pretrained.
    name: str | None = None
    revision: str | None = None
    # A short name used in branch names and run names; defaults to the last part of ``name``.
    slug: str | None = None
    dtype: str = "float32"
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    # Applied to the model config before the weights load (e.g. a YaRN rope_scaling).
    config_overrides: dict[str, Any] = field(default_factory=dict)
    # The architecture as a transformers config dict (model_type + shape). Used when ``name`` is null or
    # ``random_init`` is true: it builds the same shape with random weights, offline.
    architecture: dict[str, Any] | None = None
    random_init: bool = False
    seed: int = 0
    # "auto" = cuda when available, else cpu. ``device_map`` (e.g. "auto") hands placement to accelerate.
    device: str = "auto"
    device_map: str | None = None


@dataclass
class TokenizerConfig:
    name: str | None = None
    # Texts longer than this many tokens are truncated. Null: no truncation.
    max_length: int | None = None


@dataclass
class DatasetConfig:
    # "embedded" (the corpus shipped in the package), "synthetic" (random token ids), "json"/"csv"/"parquet"
    # with data_files, or a Hub dataset id.
    path: str = "embedded"
    name: str | None = None
    data_files: Any = None
    split: str = "train"
    text_column: str = "text"
    id_column: str | None = None
    max_samples: int | None = None
    streaming: bool = False
    # A slug for branch names; defaults to the last part of ``path``.
    slug: str | None = None
    # Deterministic split by example for sharded runs: this process handles examples i with
    # i % num_shards == shard_index (i = position in the dataset).
    num_shards: int = 1
    shard_index: int = 0
    # Only for path=synthetic.
    seq_len: int = 512
    num_examples: int = 4
    seed: int = 0


@dataclass
class InferenceConfig:
    batch_size: int = 1
    # Tokens per slice for the token-wise parts of each layer (MLP, norms, rotation); attention still sees the
    # whole sequence. Null: one pass when the capture fits memory_budget_gb, else the largest chunk that does.
    token_chunk: int | None = None
    # GB (10^9 bytes) the capture may use on its device, weights included. Null: its free memory at the start.
    memory_budget_gb: float | None = None


@dataclass
class SamplerConfig:
    name: str = MISSING


@dataclass
class LogBucketSamplerConfig(SamplerConfig):
    name: str = "log_bucket"
    base_rate: float = 1.0
    min_bucket_size: int = 1


@dataclass
class UniformSamplerConfig(SamplerConfig):
    name: str = "uniform"
    base_rate: float = 1.0
    bucket_size: int = 1024


@dataclass
class AllSamplerConfig(SamplerConfig):
    name: str = "all"
    bucket_size: int = 1


@dataclass
class HeadSamplingConfig:
    # Number of query heads to sample across all allowed layers. Null: every allowed head.
    count: int | None = None
    seed: int = 0


@dataclass
class CaptureConfig:
    layers: list[int] | None = None
    heads: list[int] | None = None
    head_sampling: HeadSamplingConfig = field(default_factory=HeadSamplingConfig)
    full_attention_only: bool = False
    pre_rope: bool = False
    queries: bool = True
    keys: bool = True
    token_strings: bool = False


@dataclass
class HubConfig:
    # A dataset repo, e.g. "your-name/qk-captures"; created on the first push. Its main branch only explains
    # the layout: every (model, dataset) capture lives on its own branch.
    repo_id: str | None = None
    # Null: derived from the model and dataset slugs, e.g. "qwen3-8b-longbench-pro-128k-plus".
    branch: str | None = None
    # Visibility of the repo when the push creates it (an existing repo keeps its own).
    private: bool = False
    # Push output.dir after the capture (the token comes from HF_TOKEN or a .env file, never from here).
    push: bool = False


@dataclass
class OutputConfig:
    # Null: "capture" inside the Hydra run directory (a new dir per run: pass a dir to resume or merge).
    dir: str | None = None
    # Configs that already hold rows of another capture recipe (e.g. another sampler): "append" refuses,
    # "replace" swaps their files for this run's once its rows are complete. Same recipe: both resume/extend.
    mode: str = "append"
    # Commit (flush to Parquet and record in the manifest) at least every this many completed examples.
    flush_every_examples: int = 64
    # Host buffer cap; past it the buffer is flushed. Peak memory is about twice this above a small run.
    max_buffer_mb: int = 512
    # Merge each config's part files into one at the end (also: python -m qk_sniffer.compact output.dir=...).
    compact: bool = False
    hub: HubConfig = field(default_factory=HubConfig)


@dataclass
class WandbConfig:
    # online / offline / disabled. Null: $WANDB_MODE, else online with a key and offline without one.
    mode: str | None = None
    project: str = "qk-sniffer"
    entity: str | None = None
    name: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    progress: bool = True


@dataclass
class ReportConfig:
    # Render the figures (figures/*.png, linked from the card) at the end of a run.
    enabled: bool = True


@dataclass
class Config:
    model: ModelConfig = MISSING
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    dataset: DatasetConfig = MISSING
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    # Typed by the option chosen in the sampler group (each option has its own schema).
    sampler: Any = MISSING
    capture: CaptureConfig = MISSING
    output: OutputConfig = MISSING
    wandb: WandbConfig = MISSING
    # Print what would be captured and its expected size, loading no weights and writing nothing.
    dry_run: bool = False
    # Draw the figures at the end of a run (python -m qk_sniffer.report draws them on demand).
    report: ReportConfig = field(default_factory=ReportConfig)


@dataclass
class BenchConfig:
    """Settings only the benchmark reads (``python -m qk_sniffer.bench``)."""

    # Timed (plain, capture) pairs, after ``warmup`` untimed ones; medians are reported.
    repeats: int = 5
    warmup: int = 1
    # false: run every layer even when capturing, to see the tap's own cost without the early stop.
    early_stop: bool = True
    # "overhead": plain forwards interleaved with capture forwards. "first_minute": make run, --help, dry_run
    # and the figures of figure_rows rows, each as a newcomer meets them. "long_context": one capture per
    # length in bench.lengths and arm in bench.arms, each in a fresh process, reporting tokens/s and the
    # process's peak memory. Arms: "budget" (inference.token_chunk, or what memory_budget_gb picks),
    # "one_pass" (no chunks).
    mode: str = "overhead"
    lengths: list[int] = field(default_factory=lambda: [8192, 32768, 131072])
    arms: list[str] = field(default_factory=lambda: ["budget", "one_pass"])
    # long_context: build only this many decoder layers and hold the others' weights as one allocation, so
    # memory is the whole model's and time is per layer (the full forward's time is extrapolated, labelled).
    layers_built: int | None = None
    # long_context on CUDA: act as a device of this many GB (torch.cuda.set_per_process_memory_fraction).
    device_gb: float | None = None
    # first_minute: rows of the capture whose figures are timed.
    figure_rows: int = 1_000_000
    # first_minute: the Python that runs the nnsight peer (peer_nnsight.py); null: this one. Skipped when
    # that Python cannot import nnsight (no dependency of qk_sniffer).
    nnsight_python: str | None = None


@dataclass
class BenchAppConfig(Config):
    bench: BenchConfig = field(default_factory=BenchConfig)


@dataclass
class DirConfig:
    # The capture directory to work on (required).
    dir: str | None = None


@dataclass
class CompactAppConfig:
    """``python -m qk_sniffer.compact``: merge each config's part files into one."""

    output: DirConfig = field(default_factory=DirConfig)


@dataclass
class PublishOutputConfig:
    # The capture directory to push (required) and where to push it (output.hub.repo_id required).
    dir: str | None = None
    hub: HubConfig = field(default_factory=HubConfig)


@dataclass
class PublishAppConfig:
    """``python -m qk_sniffer.publish``: push a capture already on disk to its Hub branch."""

    output: PublishOutputConfig = field(default_factory=PublishOutputConfig)


@dataclass
class VerifyAppConfig:
    """``python -m qk_sniffer.verify``: report what a dir holds and any damage; ``repair=true`` drops the
    damaged commits (their examples are captured again by the next run) and removes unneeded files."""

    output: DirConfig = field(default_factory=DirConfig)
    repair: bool = False
    # Trust the digest cache (.qk_sniffer/verified.json) for files whose size and times are unchanged,
    # instead of hashing every committed file; the report says how many files were not read.
    fast: bool = False


def unknown_keys(node: Any, prefix: str = "") -> list[str]:
    """One problem per key of a composed config that its schema does not have: a key added with ``+``
    (``+capture.layer=[0]``, as Hydra suggests for a typo) would otherwise be accepted and never read.
    Each names the nearest known key. Dict-typed keys (``model.config_overrides``) take any key."""
    schema = OmegaConf.get_type(node)
    if not (isinstance(node, DictConfig) and dataclasses.is_dataclass(schema)):
        return []
    known = [f.name for f in dataclasses.fields(schema)]
    problems = []
    for key, value in node.items_ex(resolve=False):
        name = f"{prefix}{key!s}"
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1, cutoff=0.5)
            hint = f"did you mean {prefix}{near[0]}?" if near else f"the keys here are: {', '.join(known)}"
            problems.append(f"{name} is not a key of the config ({hint})")
        else:
            problems += unknown_keys(value, f"{name}.")
    return problems


def hydra_dir(output_dir: str | None, mode: Any, kept: Any, otherwise: Any) -> Any:
    """``kept`` (Hydra's run dir, its .hydra/ snapshot, its log file) unless a single run was given
    ``output.dir``: then ``otherwise`` (none of them), so the run leaves nothing outside the dataset. Used
    in conf/config.yaml's ``hydra`` node."""
    multirun = str(mode).rpartition(".")[2] == "MULTIRUN"  # a RunMode, or its name
    return otherwise if output_dir and not multirun else kept


def preset_slug(name: str | None, preset_name: str | None, slug: str) -> str | None:
    """A model preset's slug while ``model.name`` is still the preset's model, else None (the slug is then
    derived from the new name): ``model.name=<dir>`` must not publish under the preset's model slug. Used in
    the presets as ``slug: ${preset_slug:${.name},<their name>,<their slug>}``; an explicit ``model.slug=``
    replaces the whole expression."""
    return slug if name == preset_name else None


def config_groups() -> str:
    """The groups and their presets (under conf/ and in the ConfigStore), one line each, for ``--help``.
    Hydra's own list also shows the ``*_schema`` entries the presets extend, which no user chooses."""
    options: dict[str, set[str]] = {}
    for path in CONF_DIR.rglob("*.yaml"):
        group = path.parent.relative_to(CONF_DIR).as_posix()
        if group != "." and not group.startswith("hydra"):
            options.setdefault(group, set()).add(path.stem)

    def stored(node: dict[str, Any], group: str) -> None:
        for name, child in node.items():
            if isinstance(child, dict):
                stored(child, f"{group}/{name}".lstrip("/"))
            elif group and not group.startswith("hydra") and not name.endswith("_schema.yaml"):
                options.setdefault(group, set()).add(name.removesuffix(".yaml"))

    stored(ConfigStore.instance().repo, "")
    return "\n".join(f"{group}: {', '.join(sorted(names))}" for group, names in sorted(options.items()))


@dataclass
class FamiliesAppConfig:
    """``python -m qk_sniffer.families``: print the support matrix, or measure it (``sweep=true``)."""

    sweep: bool = False
    # Only these model types (null = all); with sweep=false, a filter on the shipped matrix.
    only: list[str] | None = None
    # With sweep=true: rewrite the shipped matrix, docs/families.md and the README's family table.
    write: bool = False


@dataclass
class ReportAppConfig:
    """``python -m qk_sniffer.report``: the output dir whose figures to draw."""

    output: DirConfig = field(default_factory=DirConfig)


def register_configs() -> None:
    """Put every schema in Hydra's ConfigStore, and the presets' resolver in OmegaConf. Idempotent."""
    OmegaConf.register_new_resolver("preset_slug", preset_slug, replace=True)
    OmegaConf.register_new_resolver("qk_sniffer.hydra_dir", hydra_dir, replace=True)
    OmegaConf.register_new_resolver("config_groups", config_groups, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(name="bench_schema", node=BenchAppConfig)
    cs.store(name="compact_schema", node=CompactAppConfig)
    cs.store(name="verify_schema", node=VerifyAppConfig)
    cs.store(name="publish_schema", node=PublishAppConfig)
    cs.store(name="families_schema", node=FamiliesAppConfig)
    cs.store(name="report_schema", node=ReportAppConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="dataset", name="dataset_schema", node=DatasetConfig)
    cs.store(group="capture", name="capture_schema", node=CaptureConfig)
    cs.store(group="output", name="output_schema", node=OutputConfig)
    cs.store(group="wandb", name="wandb_schema", node=WandbConfig)
    cs.store(group="sampler", name="log_bucket_schema", node=LogBucketSamplerConfig)
    cs.store(group="sampler", name="uniform_schema", node=UniformSamplerConfig)
    cs.store(group="sampler", name="all_schema", node=AllSamplerConfig)
    # The benchmark's sampler (the original tool's timing setup): a named option, so `sampler=log_bucket`
    # still composes in the bench without inheriting uniform-only keys.
    cs.store(group="sampler", name="uniform_8192", node=UniformSamplerConfig(base_rate=1.0, bucket_size=8192))


def plain(node: Any) -> Any:
    """A config node (OmegaConf) or a schema dataclass as plain Python containers, interpolations resolved."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else asdict(node)
