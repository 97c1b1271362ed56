"""Loading a model (real weights or a random-weight architecture) and reading its attention layout."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from .config import DTYPES, ModelConfig
from .errors import UserError

log = logging.getLogger(__name__)

ROPE_KEYS = ("rope_scaling", "rope_parameters")


@dataclass(frozen=True)
class ModelLayout:
    """What capture needs to know about a model's attention, read from its (text) config."""

    model_type: str
    num_layers: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    # Window per layer; None for full-attention layers.
    sliding_windows: tuple[int | None, ...]
    rope: dict[str, Any] = field(default_factory=dict)

    @property
    def group_size(self) -> int:
        return self.num_q_heads // self.num_kv_heads

    def is_sliding(self, layer: int) -> bool:
        return self.sliding_windows[layer] is not None

    def kv_head_of(self, q_head: int) -> int:
        return q_head // self.group_size


def text_config(config: PretrainedConfig) -> PretrainedConfig:
    """The decoder's config, one level down for vision-language wrappers."""
    getter = getattr(config, "get_text_config", None)
    return getter() if getter is not None else config


def layout_from_config(config: PretrainedConfig) -> ModelLayout:
    cfg = text_config(config)
    n_layers = int(cfg.num_hidden_layers)
    n_q = int(cfg.num_attention_heads)
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_q)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_q)
    window = getattr(cfg, "sliding_window", None)
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types:
        windows = tuple(window if (window and "sliding" in str(t)) else None for t in layer_types)
    elif window and getattr(cfg, "use_sliding_window", True):
        windows = tuple(window for _ in range(n_layers))
    else:
        windows = tuple(None for _ in range(n_layers))
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    return ModelLayout(cfg.model_type, n_layers, n_q, n_kv, head_dim, windows, rope)


def apply_config_overrides(config: PretrainedConfig, overrides: dict[str, Any]) -> None:
    """Set ``overrides`` on the (text) config. A rope override is merged into the existing rope parameters, so
    e.g. a YaRN factor keeps the checkpoint's rope_theta."""
    target = text_config(config)
    for key, value in overrides.items():
        if key in ROPE_KEYS and hasattr(target, "rope_parameters"):
            merged = dict(target.rope_parameters or {})
            merged.update(dict(value))
            target.rope_parameters = merged
        else:
            setattr(target, key, value)


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"model.dtype={name!r} is not supported; choose one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def default_attn_implementation(device: torch.device) -> str | None:
    """flash_attention_2 when installed on CUDA; otherwise let transformers pick (sdpa, else eager)."""
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return None


def build_config(cfg: ModelConfig) -> PretrainedConfig:
    """The model's config with overrides applied, without loading any weights."""
    if cfg.name and not cfg.random_init:
        try:
            config = AutoConfig.from_pretrained(
                cfg.name, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise UserError(f"model.name={cfg.name!r}: cannot load its config ({exc})") from None
    else:
        if not cfg.architecture:
            raise UserError("model.name is null and model.architecture is empty: nothing to build")
        arch = dict(cfg.architecture)
        model_type = arch.pop("model_type", None)
        if model_type is None:
            raise UserError("model.architecture needs a model_type (e.g. qwen3)")
        try:
            config = AutoConfig.for_model(model_type, **arch)
        except ValueError as exc:
            raise UserError(f"model.architecture.model_type={model_type!r}: {exc}") from None
    apply_config_overrides(config, dict(cfg.config_overrides or {}))
    return config


def load_model(cfg: ModelConfig, config: PretrainedConfig) -> PreTrainedModel:
    """Real weights when ``model.name`` is set (and random_init is off), else random weights (fixed seed)."""
    dtype = torch_dtype(cfg.dtype)
    device = resolve_device(cfg.device)
    attn = cfg.attn_implementation or default_attn_implementation(device)
    if cfg.trust_remote_code:
        log.warning("model.trust_remote_code=true: running code from %s", cfg.name)
    try:
        if cfg.name and not cfg.random_init:
            model = AutoModelForCausalLM.from_pretrained(
                cfg.name,
                config=config,
                revision=cfg.revision,
                dtype=dtype,
                attn_implementation=attn,
                trust_remote_code=cfg.trust_remote_code,
                device_map=cfg.device_map,
            )
            if cfg.device_map is None:
                model.to(device)
        else:
            torch.manual_seed(cfg.seed)
            with torch.device(device):
                model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    except ValueError as exc:
        if "attn_implementation" in str(exc):
            raise UserError(f"model.attn_implementation={attn!r}: {exc}") from None
        raise
    model.eval()
    model.requires_grad_(False)
    return model


def backbone_of(model: PreTrainedModel) -> torch.nn.Module:
    """The text decoder stack (embeddings + layers + norm), without the LM head.

    Vision-language wrappers keep it one level further down (``model.model.language_model``).
    """
    candidates = [model]
    for attr in ("model", "language_model", "text_model"):
        nxt = []
        for c in candidates:
            sub = getattr(c, attr, None)
            if isinstance(sub, torch.nn.Module):
                nxt.append(sub)
        candidates.extend(nxt)
    for module in reversed(candidates):
        if hasattr(module, "layers") and hasattr(module, "embed_tokens"):
            return module
    raise UserError(f"cannot find the text decoder layers of {type(model).__name__}")


def attention_backend(model: PreTrainedModel) -> str:
    return str(text_config(model.config)._attn_implementation or "eager")
