"""The family sweep: every decoder family transformers ships, built tiny, captured, compared with itself.

For each model type of transformers' causal-LM and image-text-to-text mappings, the sweep shrinks the
family's own default config (:func:`tiny_config`), builds a random model from it, captures every head of
every layer pre- and post-RoPE on one right-padded batch of unequal lengths (each longer than any window),
and compares each vector with the model's own eager computation
(:mod:`qk_sniffer.capture.selfcheck`). A family is ``exact`` only when every vector matched; otherwise it
gets the refusal class of the first thing that was measured to fail, with the measurement as its reason.
Nothing here knows a family by name.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import transformers
from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
)

from ..capture.models import (
    _auto_class,
    attention_backend,
    backbone_of,
    choose_attn_implementation,
    model_class_for,
    text_config,
)
from ..capture.selfcheck import TOLERANCE, Comparison, NoEagerPath, RepeatedLayer, check_against_eager
from ..capture.shapes import AttentionShapeError, measured_layout
from ..capture.support import NON_SOFTMAX_WORDS
from ..capture.tap import attention_modules
from ..core.errors import UserError

# Refusal classes, each with what it means; the matrix, the docs and the runtime refusal use these words.
STATUSES = {
    "exact": "every captured vector matched the model's own eager computation, pre- and post-RoPE",
    "config_unbuildable": "the family's config or model could not be built small (the reason says why)",
    "encoder_decoder": "an encoder-decoder (seq2seq) model: no single causal decoder stack to capture",
    "absolute_positions": "absolute position embeddings, no rotation: 'pre-/post-RoPE' means nothing here",
    "no_decoder_stack": "no text decoder stack (a module with `layers` and `embed_tokens`) to tap",
    "no_softmax_attention": "no attention module the tap can reach (an `*Attention` module with a "
    "`layer_idx`): state-space or recurrent mixers, or attention written outside the registry",
    "not_registry": "attention modules exist but do not go through the AttentionInterface registry",
    "layout_mismatch": "the layout read from the config is not the one the model ran",
    "mismatch": "captured vectors differ from the model's own eager computation",
    "capture_error": "the capture raised an error",
}

# Quirks a family showed, each exercised by its exactness check.
QUIRKS = {
    "sliding_window": "some layers attend to a window (6 tokens here; every text is longer)",
    "chunked_attention": "attention within fixed chunks (Llama 4)",
    "nope_layers": "layers without rotation: pre-RoPE == post-RoPE there",
    "partial_rotary": "only part of head_dim is rotated; the rest passes through",
    "mla_rotated_slice": "multi-head latent attention: pre-RoPE is the whole vector, rope slice unrotated",
    "per_layer_head_dim": "head_dim differs between layers (Gemma 4); each vector has its layer's length",
    "softcapping": "attention logit softcapping",
    "attention_sinks": "learned attention sinks",
    "cross_attention_layers": "cross-attention layers (image features) are skipped and listed",
    "linear_attention_layers": "hybrid: linear-attention or state-space layers have no Q/K; skipped, listed",
    "gqa": "grouped-query attention: one key head per group of query heads",
    "vision_language_wrapper": "the text decoder sits one level down in a vision-language model",
}
WINDOW = 6  # sliding/chunked windows of the tiny models; every text below outruns it
LENGTHS = (23, 14, 31)  # one batch of unequal lengths, right-padded
VOCAB = 512  # the embedded tokenizer's ids fit, so a tiny checkpoint works with the real CLI
MAX_PARAMS = 30_000_000  # a "tiny" model above this was not shrunk by the generic rules

# Generic shrinking: a key the family's default config has is set to this value when its default is larger.
SMALL: dict[str, int] = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "head_dim": 16,
    "max_position_embeddings": 256,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "num_experts_per_token": 2,
    "num_expert_group": 1,
    "n_shared_experts": 1,
    "n_group": 1,
    "topk_group": 1,
    "first_k_dense_replace": 1,
    "kv_lora_rank": 16,
    "q_lora_rank": 32,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 16,
    "global_head_dim": 32,
    "num_global_key_value_heads": 1,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "linear_num_heads": 4,
    "linear_head_dim": 16,
    "image_size": 32,
    "patch_size": 16,
    "num_channels": 3,
    "vision_output_dim": 64,
    "projection_dim": 64,
    "hidden_size_per_layer_input": 16,
    "vocab_size_per_layer_input": VOCAB,
    "mamba_d_state": 8,
    "mamba_n_heads": 4,
    "mamba_d_head": 32,  # mamba_n_heads * mamba_d_head = mamba_expand (2) * hidden_size
    "mamba_n_groups": 1,
    "n_groups": 1,
    "moe_shared_expert_intermediate_size": 32,
    "ssm_state_size": 8,
    "mamba_dt_rank": 8,
    "mamba_num_heads": 4,
    "mamba_head_dim": 32,
    # Jamba: one attention layer in every two, the second, so three layers hold one.
    "attn_layer_period": 2,
    "attn_layer_offset": 1,
    "rotary_dim": 8,
    # GPT-2 / encoder-decoder spellings, so such families build small enough to be classified by measure.
    "n_embd": 64,
    "n_layer": 2,
    "n_head": 4,
    "n_inner": 64,
    "n_positions": 256,
    "n_ctx": 256,
    "d_model": 64,
    "d_ff": 64,
    "ffn_dim": 64,
    "num_layers": 2,
    "num_heads": 4,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
}
WINDOW_KEYS = ("sliding_window", "attention_chunk_size")
TOKEN_ID_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id")


_NO_TAPPABLE = "no `*Attention` module with a layer_idx and a config (what the tap hooks)"


def candidates() -> list[str]:
    """Every model type with a causal-LM class, plus the vision-language wrappers (image-text-to-text)."""
    return sorted(set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) | set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES))


def _shrunk(defaults: dict[str, Any]) -> dict[str, Any]:
    """The overrides that make one (sub-)config small, from its defaults (a ``to_dict()``)."""
    out: dict[str, Any] = {}
    for key, small in SMALL.items():
        value = defaults.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > small:
            out[key] = small
    if "head_dim" in defaults and defaults["head_dim"] is None and "num_attention_heads" in defaults:
        out["head_dim"] = SMALL["head_dim"]  # a null default some families (Ministral) cannot build with
    if defaults.get("head_dim") and defaults.get("head_dim") == defaults.get("qk_rope_head_dim"):
        out["head_dim"] = out["qk_rope_head_dim"]  # MLA families rotate head_dim = qk_rope_head_dim dims
    if "num_experts_per_tok" in defaults and defaults["num_experts_per_tok"] is None:
        out["num_experts_per_tok"] = 2  # DeepSeek V2's default leaves routing unset
    heads, kv = defaults.get("num_attention_heads"), defaults.get("num_key_value_heads")
    if isinstance(heads, int) and isinstance(kv, int) and kv:
        out["num_key_value_heads"] = 2 if kv < heads else out.get("num_attention_heads", heads)
    for key in WINDOW_KEYS:
        if isinstance(defaults.get(key), int):
            out[key] = WINDOW
    for key in TOKEN_ID_KEYS:
        value = defaults.get(key)
        if isinstance(value, int) and value >= VOCAB:
            out[key] = TOKEN_ID_KEYS.index(key)
    n_default = defaults.get("num_hidden_layers")
    n_layers = out.get("num_hidden_layers", n_default)
    if isinstance(n_default, int) and isinstance(n_layers, int):
        per_layer = {
            key: value
            for key, value in defaults.items()
            if isinstance(value, list)
            and len(value) == n_default
            and all(isinstance(v, (str, int)) for v in value)
        }
        for kinds in per_layer.values():
            if len(set(kinds)) <= 4:
                # The shortest prefix that still has every kind of layer (Gemma 3: five sliding, one full;
                # SmolLM3: NoPE every 4th layer), so each kind is measured.
                n_layers = max(n_layers, max(kinds.index(kind) for kind in set(kinds)) + 1)
        if n_layers != n_default:
            out["num_hidden_layers"] = n_layers
            for key, value in per_layer.items():
                out[key] = value[:n_layers]
    out.update(_one_softmax_layer(defaults, out))
    for key, value in defaults.items():  # sub-configs (a wrapper's text and vision models)
        if isinstance(value, dict) and "model_type" in value:
            out[key] = {"model_type": value["model_type"], **_shrunk(value)}
    return out


def _one_softmax_layer(defaults: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """A hybrid whose default config places no softmax layer (Bamba, Granite-4 hybrid: the checkpoints say
    where) gets one, layer 1, so its attention is measured; any other family is left as it is."""
    if "attn_layer_indices" in defaults and not defaults["attn_layer_indices"]:
        return {"attn_layer_indices": [1]}
    kinds = out.get("layer_types", defaults.get("layer_types"))
    softmax = [not any(word in str(kind) for word in NON_SOFTMAX_WORDS) for kind in kinds or ()]
    if isinstance(kinds, list) and len(kinds) > 1 and not any(softmax):
        return {"layer_types": [kinds[0], "full_attention", *kinds[2:]]}
    return {}


def tiny_config(model_type: str) -> dict[str, Any]:
    """Config kwargs for a tiny random model: ``AutoConfig.for_model(model_type, **tiny_config(...))``."""
    defaults = CONFIG_MAPPING[model_type]().to_dict()
    return {**_shrunk(defaults), "tie_word_embeddings": False}


def _entry(status: str, reason: str, tiny: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"status": status, "reason": reason, "tiny_config": tiny, **extra}


def _texts(vocab_size: int) -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [rng.integers(3, min(vocab_size, VOCAB), size=n).tolist() for n in LENGTHS]


def _absolute_positions(model: torch.nn.Module) -> bool:
    names = ("wpe", "embed_positions", "position_embeddings", "pos_emb", "embed_pos")
    has_table = any(
        isinstance(m, torch.nn.Embedding) and name.rsplit(".", 1)[-1] in names
        for name, m in model.named_modules()
    )
    has_rotary = any("Rotary" in type(m).__name__ for m in model.modules())
    return has_table and not has_rotary


def quirks_of(model: torch.nn.Module, config: PretrainedConfig, layout: Any, mla: bool) -> list[str]:
    """The quirks a family showed in the sweep (each one exercised by the exactness check)."""
    cfg = text_config(config)
    found = []
    if any(layout.sliding_windows):
        found.append("sliding_window")
    if getattr(cfg, "attention_chunk_size", None):
        found.append("chunked_attention")
    if layout.nope_layers:
        found.append("nope_layers")
    if layout.head_dims:
        found.append("per_layer_head_dim")
    if layout.partial_rotary_factor < 1.0:
        found.append("partial_rotary")
    if mla:
        found.append("mla_rotated_slice")
    if getattr(cfg, "attn_logit_softcapping", None):
        found.append("softcapping")
    modules = attention_modules(backbone_of(model))  # type: ignore[arg-type]
    if any(getattr(m, "sinks", None) is not None for m in modules):
        found.append("attention_sinks")
    if layout.cross_attention_layers:
        found.append("cross_attention_layers")
    if layout.linear_attention_layers:
        found.append("linear_attention_layers")
    if layout.num_kv_heads < layout.num_q_heads:
        found.append("gqa")
    if config is not cfg:
        found.append("vision_language_wrapper")
    return found


def measure(model_type: str, tiny: dict[str, Any] | None = None) -> dict[str, Any]:
    """One family's matrix entry, measured (never raises for a family's own failure)."""
    t0 = time.perf_counter()
    try:
        tiny = tiny_config(model_type) if tiny is None else tiny
        entry = _measure(model_type, tiny)
    except Exception as exc:  # a family that breaks in an unforeseen place is classified, not fatal
        entry = _entry("capture_error", f"{type(exc).__name__}: {_short(exc)}", tiny or {})
    entry["seconds"] = round(time.perf_counter() - t0, 2)
    return entry


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300]


def _measure(model_type: str, tiny: dict[str, Any]) -> dict[str, Any]:
    try:
        config = AutoConfig.for_model(model_type, **tiny)
    except Exception as exc:
        return _entry("config_unbuildable", f"config: {type(exc).__name__}: {_short(exc)}", tiny)
    cls = model_class_for(config)
    if cls is None:
        return _entry("no_decoder_stack", "transformers has no causal-LM or image-text-to-text class", tiny)
    if getattr(config, "is_encoder_decoder", False):
        return _entry("encoder_decoder", f"{cls.__name__} is an encoder-decoder model", tiny)
    try:
        with torch.device("meta"):
            n_params = sum(p.numel() for p in cls(config).parameters())
    except Exception as exc:
        return _entry("config_unbuildable", f"model: {type(exc).__name__}: {_short(exc)}", tiny)
    if n_params > MAX_PARAMS:
        return _entry("config_unbuildable", f"shrunk, still {n_params / 1e6:.0f}M parameters", tiny)
    backend = choose_attn_implementation(None, config, torch.device("cpu"))
    torch.manual_seed(0)
    try:
        model = (
            _auto_class(config, False)
            .from_config(config, dtype=torch.float32, attn_implementation=backend)
            .eval()
        )
    except Exception as exc:
        return _entry("config_unbuildable", f"model: {type(exc).__name__}: {_short(exc)}", tiny)
    backend = attention_backend(model)
    if _absolute_positions(model):
        return _entry("absolute_positions", "the model adds a learned/absolute position table", tiny)
    if not attention_modules(model):
        return _entry("no_softmax_attention", _NO_TAPPABLE, tiny)
    try:
        backbone = backbone_of(model)
    except UserError:
        return _entry("no_decoder_stack", "no module with `layers` and `embed_tokens` to tap", tiny)
    if not attention_modules(backbone):
        return _entry("no_softmax_attention", "no `*Attention` module with a layer_idx in the decoder", tiny)
    try:
        layout = measured_layout(config, check=False)
    except AttentionShapeError as exc:
        return _entry("layout_mismatch", str(exc), tiny, backend=backend)
    try:
        with torch.inference_mode():
            result = check_against_eager(model, _texts(int(text_config(config).vocab_size)), layout)
    except NoEagerPath as exc:
        return _entry("not_registry", str(exc), tiny, backend=backend)
    except RepeatedLayer as exc:
        return _entry("layout_mismatch", str(exc), tiny, backend=backend)
    return _classify(result, model, config, layout, tiny, backend)


def _classify(
    result: Comparison, model: Any, config: PretrainedConfig, layout: Any, tiny: dict[str, Any], backend: str
) -> dict[str, Any]:
    extra = {"backend": backend, "worst_error": float(f"{result.worst:.3g}"), "vectors": result.checked}
    if result.exact:
        mla = _rotates_a_slice(model, layout)
        return _entry("exact", "", tiny, quirks=quirks_of(model, config, layout, mla), **extra)
    problem = result.problems[0] if result.problems else "no vector was captured"
    if "tap captured layers []" in problem:
        return _entry("not_registry", "the registered attention function was never called", tiny, **extra)
    if "layers" in problem or "shape" in problem or "config says" in problem:
        return _entry("layout_mismatch", problem, tiny, **extra)
    return _entry("mismatch", problem, tiny, **extra)


def _rotates_a_slice(model: Any, layout: Any) -> bool:
    """Whether the family's queries carry more dims than it rotates through a rotary slice (MLA)."""
    cfg = text_config(model.config)
    rope_dim, head = getattr(cfg, "qk_rope_head_dim", None), getattr(cfg, "qk_head_dim", None)
    return bool(rope_dim and head and rope_dim < head)


def sweep(model_types: list[str] | None = None, log: Any = None) -> dict[str, Any]:
    """The support matrix measured on the installed transformers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is faster and steadier on a shared CPU
    families: dict[str, Any] = {}
    try:
        for model_type in model_types or candidates():
            families[model_type] = measure(model_type)
            if log is not None:
                e = families[model_type]
                log(f"{model_type:32s} {e['status']:20s} {e['seconds']:6.2f}s {e['reason'][:90]}")
    finally:
        torch.set_num_threads(threads)
    return {"transformers": transformers.__version__, "tolerance": TOLERANCE, "families": families}
