"""The dataset card, rendered from part files committed through the store, read back with load_dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from datasets import load_dataset

from qk_sniffer.core.arrow import schema, vector_array
from qk_sniffer.core.config import HubConfig
from qk_sniffer.inputs.data import token_hash
from qk_sniffer.publish import card
from qk_sniffer.publish.branches import branch_for_metadata
from qk_sniffer.store import RunInfo, Store
from qk_sniffer.store.layout import CARD
from qk_sniffer.store.layout import METADATA as METADATA_FILE
from qk_sniffer.store.manifest import model_identity
from qk_sniffer.store.writer import PartWriter

HEAD_DIM = 4
METADATA = {
    "model": {
        "name": "Qwen/Qwen3-8B",
        "revision": "abc123",
        "slug": "qwen3-8b",
        "dtype": "bfloat16",
        "random_init": False,
        "seed": 0,
        "config_overrides": {},
    },
    "attn_implementation": "sdpa",
    "layout": {
        "model_type": "qwen3",
        "num_layers": 4,
        "num_q_heads": 4,
        "num_kv_heads": 2,
        "head_dim": HEAD_DIM,
        "sliding_windows": [None, 4096, None, 4096],
        "rope": {"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 4.0},
        "nope_layers": [2, 3],
        "cross_attention_layers": [],
    },
    "dataset": {
        "path": "viktoroo/longbench-pro-128k-plus",
        "name": None,
        "split": "test",
        "text_column": "text",
        "id_column": "id",
        "slug": "longbench-pro-128k-plus",
        "max_samples": None,
        "num_shards": 1,
    },
    "tokenizer": {"name": None, "max_length": 131072},
    "max_length": 131072,
    "sampler": {"name": "log_bucket", "base_rate": 2.0, "min_bucket_size": 4},
    "capture": {
        "layers": [0, 1],
        "heads": None,
        "head_sampling": {"count": 3, "seed": 7},
        "full_attention_only": False,
        "pre_rope": False,
        "queries": True,
        "keys": True,
        "token_strings": False,
    },
    "examples": 2,
    "tokens": 300,
    "skipped_empty": 0,
    "notes": ["Layers 2-3 apply no rotation (NoPE): pre- and post-RoPE vectors are equal there."],
}
# config -> buckets of its rows (one row per bucket entry)
PARTS = {
    "l00h00q": [0, 1, 1, 2],
    "l00h01q": [0, 1],
    "l00h00k": [0, 1, 2],
    "l01h02q": [2, 2],
    "l01h01k": [0],
}


def vectors_for(name: str, n: int) -> np.ndarray:
    seed = sum(map(ord, name))
    return np.random.default_rng(seed).standard_normal((n, HEAD_DIM)).astype(np.float32)


def table_of(buckets: list[int], vectors: np.ndarray, positions: np.ndarray) -> pa.Table:
    n = len(buckets)
    return pa.Table.from_arrays(
        [
            pa.array(buckets, pa.int32()),
            pa.array(np.arange(n) // 2, pa.int64()),
            pa.array(positions, pa.int32()),
            vector_array(vectors),
            pa.array([None] * n, pa.int32()),
        ],
        schema=schema(HEAD_DIM, token_strings=False),
    )


def commit_tables(root: Path, tables: dict[str, pa.Table], metadata: dict, run: str) -> Store:
    """Write ``tables`` as one committed flush of run ``run``, as a capture run would."""
    store = Store(root)
    info = RunInfo(run, "0" * 16, (0, 1), sorted(tables))
    with store.registered(info, {}, model_identity(metadata), "append"):
        writer = PartWriter(root, "000", run, store.committer(info.recipe, run, "000"))
        example = (int(run, 16) % 97, 0, 10, token_hash(list(range(10))), tuple(sorted(tables)))
        writer.submit(lambda: list(tables.items()), [example])
        writer.close()
    (root / METADATA_FILE).write_text(json.dumps(metadata))
    return store


def write_capture(root: Path, metadata: dict = METADATA) -> Store:
    tables = {
        name: table_of(buckets, vectors_for(name, len(buckets)), np.arange(len(buckets)) * 3)
        for name, buckets in PARTS.items()
    }
    return commit_tables(root, tables, metadata, "0123456789ab")


def split_card(text: str) -> tuple[dict, list[str]]:
    assert text.startswith("---\n")
    matter, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(matter), body.splitlines()


@pytest.fixture
def capture(tmp_path):
    return write_capture(tmp_path / "capture")


def test_front_matter_lists_every_config_and_the_model(capture):
    matter, _ = split_card(card.render(capture))
    assert matter["configs"] == [
        {
            "config_name": name,
            "data_files": [{"split": "train", "path": [f"{name}/part-000-0123456789ab-00000.parquet"]}],
        }
        for name in sorted(PARTS)
    ]
    assert matter["models"] == [{"name": "Qwen/Qwen3-8B", "revision": "abc123"}]
    assert matter["source_datasets"] == ["viktoroo/longbench-pro-128k-plus"]


def test_body_describes_model_source_sampler_layout_and_notes(capture):
    _, body = split_card(card.render(capture))
    expected = [
        "# Query/key vectors of Qwen/Qwen3-8B",
        "- Name: `Qwen/Qwen3-8B`",
        "- Revision: `abc123`",
        "- dtype: bfloat16, attention backend: sdpa",
        "- Dataset: `viktoroo/longbench-pro-128k-plus`, split `test`, text column `text`, ids from `id`",
        "- Tokenizer: the model's own (`Qwen/Qwen3-8B`), max_length 131072",
        "- Captured: 2 examples, 300 tokens",
        "- Vectors: queries and keys at capture point `post_rope` (as the attention sees them, after the "
        "rotation), float32",
        "- Sampler: `log_bucket` with base_rate=2.0, min_bucket_size=4",
        "- Head sampling: 3 query heads sampled with seed 7 (their key heads kept)",
        "- Layers requested: 0-1; query heads requested: all",
        # every layout field, including ones the core layout does not define
        "- Model type: qwen3",
        "- Num layers: 4",
        "- Query heads: 4",
        "- Key/value heads: 2",
        "- Head dim: 4",
        "- Sliding windows: full attention: layers 0, 2; 4096: layers 1, 3",
        "- RoPE parameters as configured: rope_type=yarn, rope_theta=1000000.0, factor=4.0",
        "- Layers without rotation (pre-RoPE == post-RoPE): layers 2-3",
        "- Cross-attention layers (not captured): none",
        "- Layers 2-3 apply no rotation (NoPE): pre- and post-RoPE vectors are equal there.",
    ]
    for line in expected:
        assert line in body, line
    layout = body.index("## Layer layout")
    assert body[layout + 2 : layout + 4] == ["- Model type: qwen3", "- Num layers: 4"]
    assert "- Random weights (seed 0)" not in body


def test_rows_per_bucket_and_coverage_tables_count_what_is_on_disk(capture):
    _, body = split_card(card.render(capture))
    rows = body.index("## Rows per bucket (12 rows in 5 configs)")
    assert body[rows + 2 : rows + 7] == [
        "| bucket | query rows | key rows |",
        "|---|---|---|",
        "| 0 | 2 | 2 |",  # l00h00q, l00h01q | l00h00k, l01h01k
        "| 1 | 3 | 1 |",
        "| 2 | 3 | 1 |",
    ]
    coverage = body.index("## Coverage")
    assert body[coverage + 2 : coverage + 8] == [
        "2 of 4 layers captured.",
        "",
        "| layer | query heads | key heads |",
        "|---|---|---|",
        "| 0 | 0-1 | 0 |",
        "| 1 | 2 | 1 |",
    ]


def test_loading_snippet_names_repo_and_derived_branch_or_the_local_dir(capture):
    derived = branch_for_metadata(HubConfig(repo_id="me/qk-captures"), METADATA)
    assert derived == "qwen3-8b-longbench-pro-128k-plus"
    _, with_repo = split_card(card.render(capture, "me/qk-captures", derived))
    assert (
        'ds = load_dataset("me/qk-captures", "l00h00k", revision="qwen3-8b-longbench-pro-128k-plus", '
        'split="train")' in with_repo
    )
    _, explicit = split_card(card.render(capture, "me/qk-captures", "my-branch"))
    assert 'ds = load_dataset("me/qk-captures", "l00h00k", revision="my-branch", split="train")' in explicit
    _, local = split_card(card.render(capture))
    assert f'ds = load_dataset("{capture.root.resolve()}", "l00h00k", split="train")' in local


def test_written_card_loads_every_config_with_datasets(capture):
    card.write_card(capture, "me/qk-captures")
    assert not list(capture.root.glob("*.tmp"))
    for name, buckets in PARTS.items():
        ds = load_dataset(str(capture.root), name, split="train")
        assert ds["bucket"] == buckets
        np.testing.assert_array_equal(
            np.array(ds["vector"], dtype=np.float32), vectors_for(name, len(buckets))
        )


def test_card_is_regenerated_from_the_commits_and_lists_no_other_file(capture):
    card.write_card(capture)
    # A part file no commit names (a killed run's leftover) is never part of the dataset.
    stray = pq_copy = capture.root / "l00h00q" / "part-000-ffffffffffff-00000.parquet"
    pq_copy.write_bytes((capture.root / "l00h00q" / "part-000-0123456789ab-00000.parquet").read_bytes())
    one = {"l03h03q": table_of([5], np.ones((1, HEAD_DIM), np.float32), np.array([40]))}
    commit_tables(capture.root, one, METADATA, "abcdef012345")
    card.write_card(capture)
    matter, body = split_card((capture.root / CARD).read_text())
    assert [c["config_name"] for c in matter["configs"]] == sorted([*PARTS, "l03h03q"])
    assert "| 3 | 3 | - |" in body and "3 of 4 layers captured." in body
    assert load_dataset(str(capture.root), "l03h03q", split="train")["position"] == [40]
    assert stray.exists() and load_dataset(str(capture.root), "l00h00q", split="train")["bucket"] == [
        0,
        1,
        1,
        2,
    ]


def test_random_weight_model_without_notes(tmp_path):
    meta = {
        **METADATA,
        "layout": {**METADATA["layout"], "sliding_windows": [None] * 4},
        "model": {"name": None, "slug": "embedded-qwen3-tiny", "seed": 3, "dtype": "float32"},
        "dataset": {"path": "embedded", "split": "train", "text_column": "text"},
        "notes": [],
    }
    matter, body = split_card(card.render(write_capture(tmp_path, meta)))
    assert matter["models"] == [{"name": "embedded-qwen3-tiny"}]  # no revision invented
    assert not any("Revision" in line for line in body)  # random weights come from no repository
    assert "source_datasets" not in matter
    assert "- Random weights (seed 3)" in body
    assert "- Sliding windows: none" in body
    assert "## Notes" not in body
    # What the embedded default really uses, not "the model's own" (it has none) or "none" for head dims.
    tokenizer = (
        "- Tokenizer: the small tokenizer shipped with qk_sniffer (`qk_sniffer/resources/tokenizer.json`)"
    )
    assert any(line.startswith(tokenizer) for line in body)


@pytest.mark.parametrize(
    ("head_dims", "shown"),
    [
        ([], "- Head dim per layer: 4 in every layer"),
        ([4, 8, 4, 8], "- Head dim per layer (0: no attention): 4: layers 0, 2; 8: layers 1, 3"),
    ],
)
def test_head_dims_say_what_every_layer_has(tmp_path, head_dims, shown):
    meta = {**METADATA, "layout": {**METADATA["layout"], "head_dims": head_dims}}
    _, body = split_card(card.render(write_capture(tmp_path, meta)))
    assert shown in body
    assert not any(line.startswith("- Head dims") for line in body)


def test_a_synthetic_dataset_names_no_tokenizer(tmp_path):
    meta = {**METADATA, "dataset": {"path": "synthetic", "split": "train", "text_column": "text"}}
    _, body = split_card(card.render(write_capture(tmp_path, meta)))
    assert any(line.startswith("- Tokenizer: none (random token ids, dataset=synthetic)") for line in body)


def test_unpinned_revision_and_no_max_length_are_said_plainly(tmp_path):
    meta = {**METADATA, "model": {**METADATA["model"], "revision": None}, "max_length": None}
    matter, lines = split_card(card.render(write_capture(tmp_path, meta)))
    body = "\n".join(lines)
    assert matter["models"] == [{"name": METADATA["model"]["name"]}]
    assert "- Revision: not pinned (the repository's default branch)" in body
    assert "Revision: `main`" not in body
    assert "texts not truncated" in body and "max_length None" not in body
    assert "presets reproduce the original runs' settings and heads, not their rows" in body


def test_the_layout_says_only_what_applies_to_the_models_position_encoding(tmp_path):
    """GPT-2 (learned positions) has no RoPE settings and no ALiBi slopes to list; BLOOM's slopes are shown
    per query head, and OPT's query prescale where it has one."""
    absolute = {
        **METADATA["layout"],
        "position_encoding": "absolute",
        "alibi_slopes": [],
        "query_prescale": None,
    }
    gpt2 = {**METADATA, "layout": absolute, "notes": []}
    _, body = split_card(card.render(write_capture(tmp_path / "gpt2", gpt2)))
    layout = body[body.index("## Layer layout") : body.index("## Columns")]
    assert "- Position encoding: absolute" in layout
    assert not [line for line in layout if "RoPE" in line or "rotation" in line or "ALiBi" in line]
    assert not [line for line in layout if "Factor already in the captured query" in line]

    alibi = {**absolute, "position_encoding": "alibi", "alibi_slopes": [0.5, 0.25, 0.125, 0.0625]}
    prescaled = {**alibi, "query_prescale": 0.25}
    bloom = {**METADATA, "layout": prescaled, "notes": []}
    _, body = split_card(card.render(write_capture(tmp_path / "bloom", bloom)))
    assert any(line.startswith("- ALiBi slope per query head") and "0.0625" in line for line in body)
    assert "- Factor already in the captured query (its attention then scales q.k by 1): 0.25" in body
    assert not [line for line in body if line.startswith("- RoPE")]
