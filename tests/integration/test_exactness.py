"""Every captured vector equals the model's own eager Q/K at that layer, head and position."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import (
    TEXTS,
    compose_cfg,
    embedded_tokenizer,
    every_row_overrides,
    read_configs,
    save_checkpoint,
    write_jsonl,
)
from reference import check_table, eager_reference
from transformers import AutoModelForCausalLM

from qk_sniffer.core.naming import config_name
from qk_sniffer.pipeline.runner import run


def check_exact(out_dir, model, texts, pre_rope):
    tok = embedded_tokenizer()
    ids = {i: tok(t)["input_ids"] for i, t in enumerate(texts)}
    refs = {i: eager_reference(model, ids[i]) for i in ids}
    tables = read_configs(out_dir)
    assert tables, "no configs written"
    n_layers = model.config.num_hidden_layers
    lengths = {i: len(x) for i, x in ids.items()}
    checked, worst = 0, 0.0
    for layer in range(n_layers):
        for kind, n_heads in (
            ("q", model.config.num_attention_heads),
            ("k", model.config.num_key_value_heads),
        ):
            for head in range(n_heads):
                table = tables[config_name(layer, head, kind)]
                worst = max(worst, check_table(table, refs, lengths, layer, head, kind, pre_rope))
                checked += table.num_rows
    return checked, worst


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "mistral"])
@pytest.mark.parametrize("pre_rope", [False, True])
def test_every_vector_matches_eager(tmp_path, model_type, pre_rope):
    ckpt = save_checkpoint(tmp_path, model_type)
    data = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in TEXTS])
    out = tmp_path / "out"
    cfg = compose_cfg(every_row_overrides(ckpt, data, out, pre_rope))
    result = run(cfg)
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype="float32").eval()
    checked, worst = check_exact(out, model, TEXTS, pre_rope)
    total_tokens = sum(len(embedded_tokenizer()(t)["input_ids"]) for t in TEXTS)
    n_heads = model.config.num_attention_heads + model.config.num_key_value_heads
    assert checked == result.rows == total_tokens * n_heads * model.config.num_hidden_layers
    if model_type == "mistral":  # the texts are longer than the 8-token window: the window must hold
        assert max(len(embedded_tokenizer()(t)["input_ids"]) for t in TEXTS) > 8


def test_pre_and_post_rope_differ_where_rotated(tmp_path):
    ckpt = save_checkpoint(tmp_path, "llama")
    data = write_jsonl(tmp_path / "docs.jsonl", [{"text": TEXTS[0]}])
    outs = {}
    for pre in (False, True):
        out = tmp_path / f"out-{pre}"
        run(
            compose_cfg(
                [
                    f"model.name={ckpt}",
                    "sampler=all",
                    "dataset=local",
                    f"dataset.data_files={data}",
                    f"capture.pre_rope={str(pre).lower()}",
                    f"output.dir={out}",
                    "capture.layers=[0]",
                ]
            )
        )
        outs[pre] = read_configs(out)["l00h00q"]
    post = np.asarray(outs[False].column("vector").to_pylist())
    pre = np.asarray(outs[True].column("vector").to_pylist())
    np.testing.assert_allclose(post[0], pre[0], atol=1e-6)  # position 0: rotation by angle 0
    assert np.abs(post[5:] - pre[5:]).max() > 1e-3
