"""The embedded default model as Python objects: what ``python -m qk_sniffer`` captures offline, for
notebooks and the README's example without a network. A tiny random-weight Qwen3 whose shape and seed are
``conf/model/embedded.yaml`` (the CLI's default model, read from the same file), and the tokenizer shipped
in the package."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from ..capture.models import build_config, load_model
from ..core.config import CONF_DIR, ModelConfig, TokenizerConfig, register_configs
from ..inputs.tokenization import load_tokenizer


def embedded_model(device: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) of the embedded default, on ``device`` (``auto``: CUDA when there is one)."""
    register_configs()  # the preset's slug is a resolver
    preset = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "embedded.yaml"))
    assert isinstance(preset, dict)
    preset.pop("defaults", None)  # the schema it names is merged here by hand
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), preset, {"device": device})
    model = load_model(cfg, build_config(cfg))  # type: ignore[arg-type] # a DictConfig typed by ModelConfig
    return model, load_tokenizer(TokenizerConfig(), cfg)  # type: ignore[arg-type]
