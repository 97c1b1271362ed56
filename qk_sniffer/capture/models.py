"""Loading a model (real weights or a random-weight architecture) and reading its attention layout."""

from __future__ import annotations

import importlib.util
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any, cast

import torch
from omegaconf import OmegaConf
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    PretrainedConfig,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING,
)

from ..core.config import DTYPES, ModelConfig
from ..core.errors import UserError
from . import backend_facts
from . import support as families
from .alibi import alibi_slopes
from .decoder_layers import layer_list
from .layout import ModelLayout

if TYPE_CHECKING:
    # transformers.modeling_utils alone costs a second to import: a dry run reads configs, never models.
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

ROPE_KEYS = ("rope_scaling", "rope_parameters")


def text_config(config: PretrainedConfig) -> PretrainedConfig:
    """The decoder's config, one level down for vision-language wrappers."""
    getter = getattr(config, "get_text_config", None)
    return getter() if getter is not None else config


def is_wrapper(config: PretrainedConfig) -> bool:
    """A vision-language (or other multimodal) config whose text decoder has its own sub-config."""
    return text_config(config) is not config


def layout_from_config(config: PretrainedConfig, *, check: bool = True) -> ModelLayout:
    """The head layout, windows and RoPE of ``config``'s text decoder.

    Raises a UserError, before any weight is loaded, for a family that cannot be captured exactly (the
    family sweep, which measures exactly that, reads layouts with ``check=False``).
    """
    if check:
        check_family(config)
    cfg = text_config(config)
    n_layers = int(cfg.num_hidden_layers)
    n_q = int(cfg.num_attention_heads)
    n_kv = families.kv_heads(cfg, n_q)
    per_layer = _per_layer_head_dims(cfg, n_layers)
    head_dim = (
        Counter(per_layer).most_common(1)[0][0]
        if per_layer
        else int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_q)
    )
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    by_type = {k: dict(v) for k, v in rope.items() if isinstance(v, dict)}
    main = by_type.get("full_attention") or (next(iter(by_type.values())) if by_type else rope)
    theta = main.get("rope_theta", getattr(cfg, "rope_theta", None))
    partial = main.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", None))
    return ModelLayout(
        model_type=cfg.model_type,
        num_layers=n_layers,
        num_q_heads=n_q,
        num_kv_heads=n_kv,
        head_dim=head_dim,
        head_dims=per_layer if len(set(per_layer)) > 1 else (),
        sliding_windows=_sliding_windows(cfg, n_layers),
        rope=rope,
        rope_type=main.get("rope_type", main.get("type")) if (main or theta) else None,
        rope_theta=float(theta) if theta is not None else None,
        rope_scaling={k: v for k, v in main.items() if k not in _ROPE_BASICS},
        rope_by_layer_type=by_type,
        partial_rotary_factor=float(partial) if partial is not None else 1.0,
        nope_layers=families.nope_layers(cfg),
        cross_attention_layers=families.cross_attention_layers(cfg),
        linear_attention_layers=families.linear_attention_layers(cfg),
        position_encoding=families.position_encoding(cfg),
        alibi_slopes=alibi_slopes(cfg, n_q),
        query_prescale=families.query_prescale(cfg, head_dim),
    )


def _per_layer_head_dims(cfg: PretrainedConfig, n_layers: int) -> tuple[int, ...]:
    """head_dim per layer for families that vary it (Gemma 4: wider full-attention layers); else ()."""
    if "head_dim" not in (getattr(cfg, "per_layer_attributes", None) or ()):
        return ()
    return tuple(int(cfg.per_layer_config[i].head_dim) for i in range(n_layers))


# Keys that describe the rotation itself rather than its scaling (``type`` is the legacy spelling).
_ROPE_BASICS = ("rope_type", "type", "rope_theta", "partial_rotary_factor")


def _sliding_windows(cfg: PretrainedConfig, n_layers: int) -> tuple[int | None, ...]:
    window = getattr(cfg, "sliding_window", None)
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types:
        return tuple(window if (window and "sliding" in str(t)) else None for t in layer_types[:n_layers])
    if getattr(cfg, "attention_layers", None) and getattr(cfg, "window_size", None):
        # GPT-Neo spells it its own way: "local" layers attend to the last `window_size` tokens.
        kinds = cfg.attention_layers[:n_layers]
        return tuple(int(cfg.window_size) if kind == "local" else None for kind in kinds)
    if window and getattr(cfg, "use_sliding_window", True):
        return tuple(window for _ in range(n_layers))
    return tuple(None for _ in range(n_layers))


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
    assert name in DTYPES, name  # model.dtype is checked with the rest of the config (validate)
    return getattr(torch, name)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# What a model class can run, in the order of model.attn_implementation's documented choices.
_BACKEND_FLAGS = (
    ("sdpa", "_supports_sdpa"),
    ("flash_attention_2", "_supports_flash_attn"),
    ("flash_attention_3", "_supports_flash_attn"),
    ("flex_attention", "_supports_flex_attn"),
)


def model_class_for(config: PretrainedConfig) -> type[PreTrainedModel] | None:
    """The transformers class that loads this config with its LM head; None for remote-code models.

    Multimodal wrappers (Mistral 3, Mllama, Gemma 3 4B+) are loaded as the image-text-to-text model their
    checkpoint was saved as, so their weights map one to one; their text decoder is found one level down.
    """
    if getattr(config, "auto_map", None):
        return None
    causal, image_text = MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING
    for mapping in (image_text, causal) if is_wrapper(config) else (causal, image_text):
        if type(config) in mapping:
            return cast("type[PreTrainedModel]", mapping[type(config)])
    return None


def check_family(config: PretrainedConfig) -> None:
    """Refuse, before any weight loads, a family whose attention we could not see."""
    if getattr(config, "auto_map", None):
        return  # remote code: checked on the loaded model (check_capturable)
    entry = families.matrix_entry(config.model_type)
    if entry is not None:  # measured by the family sweep: its verdict decides
        if entry["status"] != "exact":
            cls = model_class_for(config)
            raise families.matrix_refusal(config.model_type, cls.__name__ if cls else "no class", entry)
        return  # without importing the modeling code: a dry run never loads it
    cls = model_class_for(config)
    # A family the matrix does not know (a newer transformers): the class's own flag, then the load-time
    # self-check against eager (load_model) decide.
    if cls is None:
        raise families.unsupported_family_error(
            config.model_type, type(config).__name__, "transformers has no causal-LM class for it"
        )
    from .compat import routes_attention  # loads modeling code: only for a family no matrix lists

    if not routes_attention(cls):
        raise families.unsupported_family_error(
            config.model_type,
            cls.__name__,
            "its attention does not go through the AttentionInterface registry",
        )


def backends_of(model_class: type[PreTrainedModel]) -> tuple[str, ...]:
    return ("eager",) + tuple(name for name, flag in _BACKEND_FLAGS if getattr(model_class, flag, False))


def choose_attn_implementation(
    requested: str | None, config: PretrainedConfig, device: torch.device
) -> str | None:
    """The backend to load with: ``requested`` if the family can run it, else an error naming what it can.

    With nothing requested: flash_attention_2 when flash_attn is installed and the device is CUDA, else sdpa,
    else eager (Gemma 2's softcapping and GPT-OSS's sinks have no sdpa path). A family the sweep measured as
    exact on eager only (its other paths compute something else, PaliGemma) can run eager only. A backend the
    installed release declares but runs wrong for the family (:mod:`.backend_facts`) is never picked, and a
    request for it is refused naming the release.
    """
    cls = model_class_for(config)
    if cls is None:  # remote code declares its own support; let transformers decide
        return requested
    can = ("eager",) if families.eager_only(config.model_type) else backends_of(cls)
    wrong = backend_facts.wrong_backends(config.model_type)
    flash_installed = importlib.util.find_spec("flash_attn") is not None
    if requested is None:
        usable = [name for name in can if name not in wrong]
        if device.type == "cuda" and flash_installed and "flash_attention_2" in usable:
            return "flash_attention_2"
        return "sdpa" if "sdpa" in usable else "eager"
    refused = backend_facts.refusal(config.model_type, requested, "model.attn_implementation")
    if refused is not None:
        raise refused
    if requested not in can:
        raise UserError(
            f"model.attn_implementation={requested!r}: {cls.__name__} ({config.model_type}) cannot run it; "
            f"it can run: {', '.join(can)} (or null to pick the best of them)"
        )
    if requested == "flash_attention_2" and not flash_installed:
        raise UserError(
            "model.attn_implementation='flash_attention_2' needs the flash_attn package, which is not "
            "installed; install it or use null (best available)"
        )
    return requested


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
        arch = _plain(cfg.architecture)
        model_type = arch.pop("model_type", None)
        if model_type is None:
            raise UserError("model.architecture needs a model_type (e.g. qwen3)")
        try:
            config = AutoConfig.for_model(model_type, **arch)
        except ValueError as exc:
            raise UserError(f"model.architecture.model_type={model_type!r}: {exc}") from None
    apply_config_overrides(config, _plain(cfg.config_overrides or {}))
    return config


def _plain(mapping: Any) -> dict[str, Any]:
    """A plain nested dict: transformers' strict configs refuse OmegaConf nodes (a wrapper's text_config)."""
    if OmegaConf.is_config(mapping):
        container = OmegaConf.to_container(mapping, resolve=True)
        assert isinstance(container, dict)
        return {str(k): v for k, v in container.items()}
    return dict(mapping)


def load_model(cfg: ModelConfig, config: PretrainedConfig) -> PreTrainedModel:
    """Real weights when ``model.name`` is set (and random_init is off), else random weights (fixed seed)."""
    dtype = torch_dtype(cfg.dtype)
    device = resolve_device(cfg.device)
    check_family(config)
    attn = choose_attn_implementation(cfg.attn_implementation, config, device)
    auto = _auto_class(config, cfg.trust_remote_code)
    if cfg.trust_remote_code:
        log.warning("model.trust_remote_code=true: running code from %s", cfg.name)
    try:
        if cfg.name and not cfg.random_init:
            model = auto.from_pretrained(
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
                model = auto.from_config(
                    config, dtype=dtype, attn_implementation=attn, trust_remote_code=cfg.trust_remote_code
                )
    except (ValueError, ImportError) as exc:
        if "attn" in str(exc) or "attention" in str(exc):
            raise UserError(f"model.attn_implementation={attn!r}: {exc}") from None
        raise
    except OSError as exc:  # weights missing from the dir, unreachable Hub, unknown revision
        raise UserError(f"model.name={cfg.name!r}: cannot load its weights ({exc})") from None
    model.eval()
    model.requires_grad_(False)
    check_capturable(model)
    return model


def _auto_class(config: PretrainedConfig, trust_remote_code: bool) -> Any:
    cls = model_class_for(config)
    if (
        cls is not None
        and type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING
        and (type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING or is_wrapper(config))
    ):
        return AutoModelForImageTextToText
    return AutoModelForCausalLM


def check_capturable(model: PreTrainedModel) -> None:
    """After loading, before any forward: a family the sweep never measured must route its attention through
    the registry (the layers and heads its attention calls see are checked by ``shapes.check_loaded``)."""
    measured = families.matrix_entry(model.config.model_type) is not None  # the sweep saw its attention calls
    from .compat import routes_attention  # loads modeling code, which a dry run never needs

    if not measured and not routes_attention(type(model)):
        raise families.unsupported_family_error(
            text_config(model.config).model_type,
            type(model).__name__,
            "its attention does not go through the AttentionInterface registry",
        )


def backbone_of(model: PreTrainedModel) -> torch.nn.Module:
    """The text decoder stack (embeddings + layers + norm), without the LM head.

    Vision-language wrappers keep it one level further down (``model.model.language_model``).
    """
    candidates: list[torch.nn.Module] = [model]
    frontier: list[torch.nn.Module] = [model]
    for _ in range(3):  # wrapper -> its language model (Llama 4: a whole causal LM) -> that model's decoder
        frontier = [
            sub
            for c in frontier
            for attr in (*_WRAPPERS, getattr(c, "base_model_prefix", None) or "model")
            if isinstance(sub := getattr(c, attr, None), torch.nn.Module)
        ]
        candidates.extend(frontier)
    for module in reversed(candidates):
        # GPT-NeoX, GPT-J, Falcon, MPT, Nemotron-H: the stack may be `h` or `blocks`, the embeddings
        # `embed_in`, `wte`, `word_embeddings`, `embeddings`, OpenAI GPT's `tokens_embed` or CTRL's `w`.
        has_layers = layer_list(module) is not None
        if has_layers and any(hasattr(module, a) for a in _EMBEDDINGS):
            return module
    raise UserError(
        f"model family {text_config(model.config).model_type!r} ({type(model).__name__}): cannot find its "
        "text decoder (a module with `layers` and `embed_tokens`), so its attention cannot be tapped"
    )


# Where a model keeps its decoder: the usual names, OPT's `model.decoder`, and the class's own
# `base_model_prefix` (BioGPT's `biogpt`), so a family needs no entry here to be found.
_WRAPPERS = ("model", "language_model", "text_model", "transformer", "gpt_neox", "decoder")
_EMBEDDINGS = ("embed_tokens", "embed_in", "wte", "word_embeddings", "embeddings", "tokens_embed", "w")


def attention_backend(model: PreTrainedModel) -> str:
    return str(text_config(model.config)._attn_implementation or "eager")
