"""Every captured vector equals Q/K computed by hand in float64 from the weights (tests/hand_reference.py):
every layer, every head, pre and post RoPE, for Llama and Qwen3, with default, Llama 3 and YaRN rotations.
Captures run batched and padded; the reference runs each example alone."""

from __future__ import annotations

import numpy as np
import pytest
from hand_reference import hand_qk
from helpers import (
    TEXTS,
    compose_cfg,
    embedded_tokenizer,
    every_row_overrides,
    read_configs,
    save_checkpoint,
    write_jsonl,
)
from transformers import AutoModelForCausalLM

from qk_sniffer.pipeline.runner import run

TOLERANCE = 1e-4  # float32 capture against float64 arithmetic, absolute, per component
ROPES = {
    "default": None,
    "llama3": {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    },
    "yarn": {
        "rope_type": "yarn",
        "rope_theta": 1000000.0,
        "factor": 4.0,
        "original_max_position_embeddings": 16,
    },
}


@pytest.mark.parametrize(
    "model_type, rope", [("llama", "default"), ("llama", "llama3"), ("qwen3", "default"), ("qwen3", "yarn")]
)
@pytest.mark.parametrize("pre_rope", [False, True])
def test_capture_equals_q_and_k_computed_by_hand(tmp_path, model_type, rope, pre_rope):
    extra = {"rope_parameters": ROPES[rope]} if ROPES[rope] else {}
    ckpt = save_checkpoint(tmp_path, model_type, **extra)
    data = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in TEXTS[:3]])
    out = tmp_path / "out"
    run(compose_cfg(every_row_overrides(ckpt, data, out, pre_rope)))

    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype="float32").eval()
    if ROPES[rope]:
        assert model.config.rope_parameters["rope_type"] == rope
    tok = embedded_tokenizer()
    ids = {i: tok(t)["input_ids"] for i, t in enumerate(TEXTS[:3])}
    assert max(len(x) for x in ids.values()) > 16  # past the scaled ropes' original context
    hand = {i: hand_qk(model, x) for i, x in ids.items()}
    tables = read_configs(out)
    n_layers = model.config.num_hidden_layers
    heads = {"q": model.config.num_attention_heads, "k": model.config.num_key_value_heads}
    checked = 0
    for layer in range(n_layers):
        for kind, n_heads in heads.items():
            for head in range(n_heads):
                table = tables[f"l{layer:02d}h{head:02d}{kind}"]
                vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float64)
                for row, (ex, pos) in enumerate(
                    zip(
                        table.column("example_id").to_pylist(),
                        table.column("position").to_pylist(),
                        strict=True,
                    )
                ):
                    ref = hand[ex][layer]
                    source = {
                        "q": ref.q_pre if pre_rope else ref.q_post,
                        "k": ref.k_pre if pre_rope else ref.k_post,
                    }
                    err = float(np.abs(vectors[row] - source[kind][head, pos].numpy()).max())
                    assert err <= TOLERANCE, f"{kind} l{layer} h{head} ex{ex} pos{pos}: error {err}"
                    checked += 1
    assert checked == sum(len(x) for x in ids.values()) * n_layers * sum(heads.values())
