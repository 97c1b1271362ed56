"""Config overrides (e.g. YaRN) are applied before loading, keeping what they do not name."""

from __future__ import annotations

from transformers import AutoConfig

from qk_sniffer.capture.models import apply_config_overrides, build_config
from qk_sniffer.core.config import ModelConfig


def test_rope_scaling_override_merges_into_rope_parameters():
    config = AutoConfig.for_model("qwen3", rope_theta=1_000_000.0, max_position_embeddings=40960)
    apply_config_overrides(
        config,
        {
            "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
            "max_position_embeddings": 131072,
        },
    )
    assert config.rope_parameters["rope_type"] == "yarn"
    assert config.rope_parameters["factor"] == 4.0
    assert config.rope_parameters["rope_theta"] == 1_000_000.0
    assert config.max_position_embeddings == 131072


def test_overrides_reach_a_local_checkpoint_config(tmp_path):
    AutoConfig.for_model("llama", num_hidden_layers=2, hidden_size=32, num_attention_heads=2).save_pretrained(
        tmp_path
    )
    cfg = ModelConfig(
        name=str(tmp_path), config_overrides={"rope_scaling": {"rope_type": "linear", "factor": 2.0}}
    )
    config = build_config(cfg)
    assert config.rope_parameters["rope_type"] == "linear"
    assert config.rope_parameters["factor"] == 2.0
    assert config.num_hidden_layers == 2
