"""The positions a model was built for, from its config: declared, or extended by YaRN/longrope."""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig

from qk_sniffer.capture.positions import position_limit


def config(**kwargs):
    shape = dict(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, vocab_size=64)
    return AutoConfig.for_model(kwargs.pop("model_type", "llama"), **shape, **kwargs)


def test_declared_length():
    limit = position_limit(config(max_position_embeddings=4096))
    assert (limit.positions, limit.source) == (4096, "max_position_embeddings=4096")


def test_mpt_declares_its_length_as_max_seq_len():
    limit = position_limit(AutoConfig.for_model("mpt", d_model=32, n_heads=2, n_layers=1, max_seq_len=300))
    assert (limit.positions, limit.source) == (300, "max_seq_len=300")


def test_yarn_extends_by_its_factor_over_the_original_length():
    rope = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0, "original_max_position_embeddings": 32768}
    limit = position_limit(config(model_type="qwen3", max_position_embeddings=40960, rope_parameters=rope))
    assert limit.positions == 131072
    assert limit.source == "yarn factor 4 x original_max_position_embeddings=32768"


def test_yarn_without_original_length_counts_from_the_declared_one():
    rope = {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}
    assert position_limit(config(max_position_embeddings=1000, rope_parameters=rope)).positions == 2000


def test_llama3_and_linear_factors_do_not_extend():
    """Llama 3.2: factor 32 over 8192 positions, yet a 131072-position model; Gemma 3's linear factor 8 is
    already inside its max_position_embeddings."""
    llama3 = {
        "rope_type": "llama3",
        "rope_theta": 5e5,
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    assert position_limit(config(max_position_embeddings=131072, rope_parameters=llama3)).positions == 131072
    linear = {"rope_type": "linear", "rope_theta": 1e4, "factor": 8.0}
    assert position_limit(config(max_position_embeddings=131072, rope_parameters=linear)).positions == 131072


def test_no_declared_length_means_no_limit():
    assert position_limit(PretrainedConfig()) is None
