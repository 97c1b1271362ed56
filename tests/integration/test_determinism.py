"""The same example yields the same rows whatever the batch size, order, neighbours or process."""

from __future__ import annotations

import numpy as np
from helpers import compose_cfg, read_configs, save_checkpoint, write_jsonl

from qk_sniffer.pipeline.runner import run

DOCS = [
    {"id": "alpha", "text": "The harbour smells of diesel, salt and coffee at dawn, before the boats leave."},
    {"id": "beta", "text": "Counting looks like the simplest thing a person can do."},
    {"id": "gamma", "text": "Plan for the vegetable beds this year: early potatoes, then leeks in July."},
    {"id": "delta", "text": "A short note."},
]


def rows_by_example(out):
    """{config: {example_id: [(position, bucket, vector bytes)]}}"""
    result = {}
    for name, table in read_configs(out).items():
        per = {}
        vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
        for i, (ex, pos, b) in enumerate(
            zip(
                table.column("example_id").to_pylist(),
                table.column("position").to_pylist(),
                table.column("bucket").to_pylist(),
                strict=True,
            )
        ):
            per.setdefault(ex, []).append((pos, b, vectors[i]))
        result[name] = {ex: sorted(v, key=lambda r: r[0]) for ex, v in per.items()}
    return result


def capture(tmp_path, name, docs, batch_size, ckpt):
    data = write_jsonl(tmp_path / f"{name}.jsonl", docs)
    out = tmp_path / name
    run(
        compose_cfg(
            [
                f"model.name={ckpt}",
                "dataset=local",
                f"dataset.data_files={data}",
                "dataset.id_column=id",
                "sampler=log_bucket",
                "sampler.base_rate=2.0",
                f"inference.batch_size={batch_size}",
                f"output.dir={out}",
            ]
        )
    )
    return rows_by_example(out)


def assert_same_rows(a, b, examples):
    for config in a:
        for ex in examples:
            ra, rb = a[config].get(ex, []), b[config].get(ex, [])
            assert [(p, bk) for p, bk, _ in ra] == [(p, bk) for p, bk, _ in rb], (config, ex)
            for (_, _, va), (_, _, vb) in zip(ra, rb, strict=True):
                np.testing.assert_allclose(va, vb, atol=1e-5)


def test_batch_size_order_and_neighbours_do_not_change_rows(tmp_path):
    from qk_sniffer.inputs.data import stable_id

    ckpt = save_checkpoint(tmp_path, "qwen3")
    base = capture(tmp_path, "base", DOCS, 1, ckpt)
    ids = [stable_id(d["id"]) for d in DOCS]
    assert_same_rows(base, capture(tmp_path, "batched", DOCS, 3, ckpt), ids)
    assert_same_rows(base, capture(tmp_path, "reversed", DOCS[::-1], 2, ckpt), ids)
    subset = capture(tmp_path, "subset", [DOCS[2], DOCS[0]], 2, ckpt)
    assert_same_rows(base, subset, [ids[0], ids[2]])
    # Sampling really drops positions (base_rate 2 keeps all of buckets 0-1, then about 2 per bucket).
    lengths = {ex: max(p for p, _, _ in rows) + 1 for ex, rows in base["l00h00q"].items()}
    assert sum(len(r) for r in base["l00h00q"].values()) < sum(lengths.values())


def test_heads_of_one_layer_and_kind_share_the_mask(tmp_path):
    ckpt = save_checkpoint(tmp_path, "qwen3")
    rows = capture(tmp_path, "heads", DOCS, 2, ckpt)
    positions = {name: {ex: [p for p, _, _ in r] for ex, r in per.items()} for name, per in rows.items()}
    assert positions["l01h00q"] == positions["l01h03q"]
    assert positions["l01h00k"] == positions["l01h01k"]
    assert positions["l01h00q"] != positions["l01h00k"]
    assert positions["l01h00q"] != positions["l02h00q"]
