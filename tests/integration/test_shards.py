"""Scale-out: Hydra multirun shards into one dir equal the single-process run; cluster launchers compose."""

from __future__ import annotations

import json

import yaml
from helpers import REPO, compose_cfg, read_configs, rows, run_cli

from qk_sniffer.pipeline.runner import run
from qk_sniffer.store.layout import METADATA

# batch_size=1: an example's forward is then the same computation in every process, so vectors match bit
# for bit (with larger batches, other padding widths change kernel shapes and the last bits).
# report.enabled=true: the card embeds the figures drawn by the last shard from every shard's rows.
COMMON = [
    "capture.layers=[0,3]",
    "output.flush_every_examples=2",
    "inference.batch_size=1",
    "report.enabled=true",
]


def test_shard_union_equals_the_single_process_run(tmp_path):
    sharded, single = tmp_path / "sharded", tmp_path / "single"
    result = run_cli(
        [
            "-m",
            f"output.dir={sharded}",
            "dataset.num_shards=3",
            "dataset.shard_index=0,1,2",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            *COMMON,
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    run(compose_cfg([f"output.dir={single}", *COMMON]))
    assert rows(sharded) == rows(single)
    # Each shard wrote its own files (part-<shard>-<run>-<seq>), none overwritten.
    prefixes = {p.name[:8] for p in sharded.glob("l00h00q/*.parquet")}
    assert prefixes == {"part-000", "part-001", "part-002"}
    # The card and metadata written by the last shard cover every shard.
    meta, ref = json.loads((sharded / METADATA).read_text()), json.loads((single / METADATA).read_text())
    assert (meta["examples"], meta["tokens"]) == (ref["examples"], ref["tokens"])
    # The same card, but for the part files each lists (the sharded dir has one per shard and flush).
    card = (sharded / "README.md").read_text().replace(str(sharded), "<dir>").split("\n---\n", 1)
    ref_card = (single / "README.md").read_text().replace(str(single), "<dir>").split("\n---\n", 1)
    assert card[1] == ref_card[1]
    listed = {c["config_name"]: c["data_files"][0]["path"] for c in yaml.safe_load(card[0][4:])["configs"]}
    assert set(listed) == {c["config_name"] for c in yaml.safe_load(ref_card[0][4:])["configs"]}
    assert all(
        sorted(p.name for p in (sharded / c).glob("*")) == [f.split("/")[1] for f in fs]
        for c, fs in listed.items()
    )
    assert set(read_configs(sharded)) == set(read_configs(single))
    assert "(figures/logit_vs_distance.png)" in card[1]


def test_slurm_launchers_compose():
    for launcher, expected in (
        ("submitit_slurm", "gpus_per_node: null"),
        ("slurm_one_gpu", "gpus_per_node: 1"),
    ):
        result = run_cli([f"hydra/launcher={launcher}", "--cfg", "hydra"], cwd=REPO)
        assert result.returncode == 0, result.stderr
        assert "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in result.stdout
        assert expected in result.stdout
