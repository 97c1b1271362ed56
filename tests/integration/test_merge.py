"""Output dir as a dataset: runs of one model merge; other recipes and other models are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from helpers import compose_cfg, read_configs, rows

from qk_sniffer import load
from qk_sniffer.commands.compact import compact
from qk_sniffer.core import arrow
from qk_sniffer.core.errors import UserError
from qk_sniffer.pipeline.runner import run
from qk_sniffer.store import Store
from qk_sniffer.store.layout import METADATA
from qk_sniffer.store.manifest import Manifest


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def capture(out_dir: Path, *overrides: str):
    return run(compose_cfg([f"output.dir={out_dir}", "output.flush_every_examples=3", *overrides]))


def test_two_runs_with_different_layers_merge_into_one_loadable_dataset(tmp_path):
    merged, both = tmp_path / "merged", tmp_path / "both"
    capture(merged, "capture.layers=[0]")
    second = capture(merged, "capture.layers=[2]")
    capture(both, "capture.layers=[0,2]")
    # Same rows as one run over both layers, none twice; the second run skipped nothing it had to write.
    assert rows(merged) == rows(both)
    assert second.resumed_examples == 0
    readme = (merged / "README.md").read_text()
    assert "config_name: l00h00q" in readme and "config_name: l02h03q" in readme
    meta = json.loads((merged / METADATA).read_text())
    assert meta["examples"] == json.loads((both / METADATA).read_text())["examples"] > 0
    from datasets import load_dataset

    for name in ("l00h01q", "l02h01k"):
        ds = load_dataset(str(merged), name, split="train")
        assert ds.num_rows == read_configs(merged)[name].num_rows > 0


def test_rerun_with_overlapping_layers_writes_only_the_missing_configs(tmp_path):
    out, ref = tmp_path / "out", tmp_path / "ref"
    capture(out, "capture.layers=[0,1]")
    again = capture(out, "capture.layers=[1,2]")
    capture(ref, "capture.layers=[0,1,2]")
    assert rows(out) == rows(ref)
    assert again.rows == sum(t.num_rows for n, t in read_configs(ref).items() if n.startswith("l02"))


def test_a_different_model_is_refused_and_the_dir_left_untouched(tmp_path):
    out = tmp_path / "out"
    capture(out, "capture.layers=[0]")
    before = tree(out)
    with pytest.raises(
        UserError, match=r"holds a capture of a different model .*seed: 0 -> 1.*another output.dir"
    ):
        capture(out, "capture.layers=[0]", "model.seed=1")
    assert tree(out) == before


def test_a_different_recipe_for_a_config_on_disk_is_refused_naming_what_differs(tmp_path):
    out = tmp_path / "out"
    capture(out, "capture.layers=[0]")
    before = tree(out)
    with pytest.raises(UserError) as err:
        capture(out, "capture.layers=[0]", "sampler.base_rate=0.5")
    assert (
        "configs l00h00k, l00h00q, l00h01k, l00h01q and 2 more already hold rows captured with a different "
        "recipe (on disk -> this run: sampler.base_rate: 1.0 -> 0.5). Use output.mode=replace"
        in str(err.value)
    )
    assert tree(out) == before
    # The same recipe change on configs not yet on disk merges (the card notes the second recipe).
    capture(out, "capture.layers=[1]", "sampler.base_rate=0.5")
    meta = json.loads((out / METADATA).read_text())
    assert len(meta["recipes"]) == 2 and "sampler.base_rate: 1.0 -> 0.5" in meta["notes"][-1]


def test_replace_swaps_the_configs_for_the_new_recipe_and_keeps_the_rest(tmp_path):
    out, ref = tmp_path / "out", tmp_path / "ref"
    capture(out, "capture.layers=[0,1]")
    layer1_before = {k: v for k, v in read_configs(out).items() if k.startswith("l01")}
    capture(out, "capture.layers=[0]", "sampler.base_rate=0.5", "output.mode=replace")
    capture(ref, "capture.layers=[0]", "sampler.base_rate=0.5")
    after = read_configs(out)
    assert {k: v for k, v in after.items() if k.startswith("l00")} == read_configs(ref)
    assert {k: v for k, v in after.items() if k.startswith("l01")} == layer1_before
    manifest = Manifest(out)
    assert all((out / p).exists() for p in manifest.referenced())
    assert {p.relative_to(out).as_posix() for p in out.glob("l*/*.parquet")} == manifest.referenced()


def assert_encoded_as_the_writer_does(out: Path) -> None:
    """Every part: the vector's floats byte-stream-split (no dictionary, which overflows on floats and
    leaves files bigger than the raw vectors), dictionaries for the integer columns."""
    for path in out.glob("l*/*.parquet"):
        meta = pq.ParquetFile(path).metadata.row_group(0)
        encodings = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(meta.num_columns)}
        assert "BYTE_STREAM_SPLIT" in encodings["vector.list.element"], path
        assert "RLE_DICTIONARY" not in encodings["vector.list.element"], path
        assert "RLE_DICTIONARY" in encodings["position"], path


def test_compaction_leaves_one_file_per_config_and_the_same_rows(tmp_path):
    out = tmp_path / "out"
    capture(out, "capture.layers=[0]")
    capture(out, "capture.layers=[1]", "sampler.base_rate=0.5")
    before = rows(out)
    assert len(list((out / "l00h00q").glob("*.parquet"))) > 1
    assert_encoded_as_the_writer_does(out)
    assert compact(Store(out)) == 12
    assert rows(out) == before
    assert all(len(list(d.glob("*.parquet"))) == 1 for d in out.glob("l*"))
    assert_encoded_as_the_writer_does(out)
    # Still resumable after compaction: the same command finds every example durable.
    assert capture(out, "capture.layers=[0]").rows == 0
    assert rows(out) == before


def loaded_rows(out: Path) -> list[tuple]:
    """(example_id, position, vector) of config l00h00q as ``qk_sniffer.load`` reads it, sorted."""
    got = load(out, "l00h00q")
    vectors = [tuple(v) for v in got.vectors.tolist()]
    return sorted(zip(got.example_ids.tolist(), got.positions.tolist(), vectors, strict=True))


def test_parts_with_nullable_vector_floats_resume_compact_and_load_beside_newer_ones(tmp_path, monkeypatch):
    """A dir begun before the vector's floats were declared non-null: the run that continues it writes the
    newer type into the same configs, and every reader, the merge and the compaction take both."""
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    with monkeypatch.context() as before:
        before.setattr(arrow, "vector_type", lambda head_dim: pa.list_(pa.float32(), head_dim))
        capture(out, "dataset.max_samples=2")
    capture(out)
    floats_nullable = {
        pq.ParquetFile(p).schema_arrow.field("vector").type.value_field.nullable
        for p in out.glob("l00h00q/*")
    }
    assert floats_nullable == {True, False}
    capture(fresh)
    assert rows(out) == rows(fresh)
    assert loaded_rows(out) == loaded_rows(fresh)
    loaded = load_dataset(str(out), "l00h00q", split="train", cache_dir=str(tmp_path / "cache"))
    assert sorted(zip(loaded["example_id"], loaded["position"], strict=True)) == [
        r[:2] for r in loaded_rows(fresh)
    ]
    assert compact(Store(out)) == len(list(out.glob("l*")))
    assert rows(out) == rows(fresh)
    assert_encoded_as_the_writer_does(out)
    assert (
        not pq.ParquetFile(next(out.glob("l00h00q/*"))).schema_arrow.field("vector").type.value_field.nullable
    )
