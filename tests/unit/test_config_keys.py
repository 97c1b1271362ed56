"""Every key of every schema reaches the code as its value: none is shadowed by a DictConfig method (the way
``capture.keys`` once read as ``DictConfig.keys``, always true), none is added unchecked with ``+``, and the
sweep's jobs write where their recipes say."""

from __future__ import annotations

import ast
import dataclasses
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from qk_sniffer.core import config as schemas
from qk_sniffer.core.config import CONF_DIR, hydra_dir, register_configs, setting, unknown_keys
from qk_sniffer.pipeline.sweep import job_output_dir, swept_keys_of

register_configs()
PACKAGE = Path(schemas.__file__).resolve().parents[1]

# Each command's config (conf/<name>.yaml) and its schema.
APPS = {
    "config": schemas.Config,
    "bench": schemas.BenchAppConfig,
    "compact": schemas.CompactAppConfig,
    "verify": schemas.VerifyAppConfig,
    "publish": schemas.PublishAppConfig,
    "families": schemas.FamiliesAppConfig,
    "report": schemas.ReportAppConfig,
}


def flag_and_list_keys(schema: type, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, "bool" | "strings" | "list") for every boolean and list field, nested schemas included."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            yield from flag_and_list_keys(kind, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        elif kind is bool:
            yield f"{prefix}{f.name}", "bool"
        elif "list[str]" in str(kind):
            yield f"{prefix}{f.name}", "strings"
        elif "list" in str(kind):
            yield f"{prefix}{f.name}", "list"


KEYS = sorted((app, key, kind) for app, schema in APPS.items() for key, kind in flag_and_list_keys(schema))


def composed(app: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=app, overrides=overrides)


def test_the_walk_finds_the_keys_that_matter():
    keys = {(app, key) for app, key, _ in KEYS}
    assert {("config", "capture.keys"), ("config", "capture.queries"), ("config", "capture.layers")} <= keys
    assert {("verify", "fast"), ("verify", "repair"), ("families", "only")} <= keys


def other_value(cfg: DictConfig, key: str, kind: str) -> tuple[object, str]:
    """A value for ``key`` other than its default, and how the command line writes it."""
    if kind == "bool":
        value = not OmegaConf.select(cfg, key)
        return value, str(value).lower()
    return (["llama"], "[llama]") if kind == "strings" else ([1], "[1]")


@pytest.mark.parametrize("app", sorted(APPS))
def test_every_flag_and_list_key_reads_back_as_its_value(app):
    keys = [(key, kind) for a, key, kind in KEYS if a == app]
    default = composed(app, [])
    values = {key: other_value(default, key, kind) for key, kind in keys}
    cfg = composed(app, [f"{key}={literal}" for key, (_, literal) in values.items()])
    for key, (value, _) in values.items():
        parent_key, _, name = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        read = setting(parent, name)
        assert read == value and not callable(read), (key, read)


def attribute_reads(name: str) -> list[str]:
    """``x.<name>`` in the package, read as a value (not called): how a config key named like a DictConfig
    method is read wrong."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
        found += [
            f"{path.relative_to(PACKAGE)}:{node.lineno}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr == name and id(node) not in called
        ]
    return found


def test_keys_named_like_a_dictconfig_method_are_never_read_as_attributes():
    shadowed = sorted(
        {key.rpartition(".")[2] for _, key, _ in KEYS if hasattr(DictConfig, key.rpartition(".")[2])}
    )
    assert shadowed == ["keys"]  # a new one would need the same care: setting(node, name)
    for name in shadowed:
        assert attribute_reads(name) == [], f"read {name!r} with qk_sniffer.core.config.setting"


def test_keys_the_schema_does_not_know_are_named_with_the_nearest_known_one():
    cfg = composed(
        "config",
        ["+capture.layer=[0]", "+sampler.colour=red", "+model.config_overrides.rope_theta=10.0", "+foo=1"],
    )
    assert unknown_keys(cfg) == [
        "sampler.colour is not a key of the config (the keys here are: name, base_rate, min_bucket_size)",
        "capture.layer is not a key of the config (did you mean capture.layers?)",
        "foo is not a key of the config (the keys here are: model, tokenizer, dataset, inference, sampler, "
        "capture, output, wandb, dry_run, report)",
    ]
    assert unknown_keys(composed("verify", ["+fats=true"])) == [
        "fats is not a key of the config (did you mean fast?)"
    ]


# ------------------------------------------------------------------------------------ sweeps and Hydra dirs


def test_a_sweep_job_writes_where_its_recipe_keys_say(tmp_path):
    sweep = tmp_path / "sweep"
    master = OmegaConf.create(
        {
            "hydra": {
                "overrides": {
                    "task": ["sampler=log_bucket,uniform", "dataset.shard_index=0,1", "capture.layers=[0]"]
                }
            }
        }
    )
    assert swept_keys_of(master) == {"sampler", "dataset.shard_index"}
    job = OmegaConf.create(
        {
            "sweep": {"dir": str(sweep)},
            "job": {"num": 3},
            "overrides": {"task": ["sampler=uniform", "dataset.shard_index=1", "capture.layers=[0]"]},
        }
    )
    # Without the sweep's own file, each job keeps to itself.
    assert job_output_dir(tmp_path / "out", job) == tmp_path / "out" / "job3"
    sweep.mkdir()
    OmegaConf.save(master, sweep / "multirun.yaml")
    assert job_output_dir(tmp_path / "out", job) == tmp_path / "out" / "sampler=uniform"
    OmegaConf.save(
        OmegaConf.create(
            {"hydra": {"overrides": {"task": ["dataset.shard_index=range(4)", "dataset.num_shards=4"]}}}
        ),
        sweep / "multirun.yaml",
    )
    assert job_output_dir(tmp_path / "out", job) == tmp_path / "out"  # shards of one capture merge
    OmegaConf.save(master, sweep / "multirun.yaml")
    job.overrides.task.append("output.dir=out_${hydra:job.num}")
    assert job_output_dir(tmp_path / "out_3", job) == tmp_path / "out_3"  # a dir per job already


def test_a_single_run_with_output_dir_leaves_no_hydra_dirs():
    assert hydra_dir(None, RunMode.RUN, "outputs/x", ".") == "outputs/x"
    assert hydra_dir("/data/qk", RunMode.RUN, "outputs/x", ".") == "."
    assert hydra_dir("/data/qk", "RUN", ".hydra", None) is None
    # A sweep keeps Hydra's multirun dir (each job's config and log, the sweep's multirun.yaml).
    assert hydra_dir("/data/qk", RunMode.MULTIRUN, ".hydra", None) == ".hydra"
