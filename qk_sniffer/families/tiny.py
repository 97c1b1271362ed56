"""Tiny configs for the family sweep: each family's own default config, shrunk by generic rules.

A rule names config keys, never a family: a key the defaults have is set small (:data:`SMALL`), windows to
:data:`WINDOW`, per-layer lists to the shortest prefix that still has every kind of layer, a hybrid with no
softmax layer by default gets one, and a multimodal rotary's sections (``mrope_section``) are resized to the
rotary width the tiny model really has (measured on it, built on the meta device).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from ..capture.models import model_class_for
from ..capture.support import NON_SOFTMAX_WORDS

WINDOW = 6  # sliding/chunked windows of the tiny models; every text the sweep captures outruns it
VOCAB = 512  # the embedded tokenizer's ids fit, so a tiny checkpoint works with the real CLI

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
    "top_k_experts": 2,
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
    # Inkling's sliding layers: other heads and head_dim than its full ones (kept different, just smaller)
    "swa_num_attention_heads": 8,
    "swa_num_key_value_heads": 4,
    "swa_head_dim": 32,
    "num_global_key_value_heads": 1,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "linear_num_heads": 4,
    "linear_head_dim": 16,
    "image_size": 32,
    # vision towers of wrappers (Qwen2-VL, GLM-4V): one block, narrow; the merger's output is the text width
    "depth": 1,
    "embed_dim": 64,
    "out_hidden_size": 64,
    # widths other towers must share with the text model (audio codebooks, adapters)
    "codebook_dim": 64,
    "adapter_in_dim": 64,
    "index_num_heads": 2,  # a sparse-attention indexer's heads, at most the query heads of one key head
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
    # GPT-2, MPT, XLM and encoder-decoder spellings, so such families build small enough to be measured.
    "n_embd": 64,
    "n_layer": 2,
    "n_head": 4,
    "n_layers": 2,
    "n_heads": 4,
    "emb_dim": 64,
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
MOE_KEYS = ("num_experts", "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "top_k_experts",
            "moe_intermediate_size")  # fmt: skip
WINDOW_KEYS = ("sliding_window", "attention_chunk_size", "window_size")
# A family whose config validation rejects the generic shrinking: the least it needs to build small.
TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    # GPT-Neo lists its layers' kinds as (pattern, repeats): one global and one local layer.
    "gpt_neo": {"attention_types": [[["global", "local"], 1]]},
    # DBRX's attention reads attn_config.rope_theta, which its default attention config (5.25) leaves out,
    # and clamps q/k/v by clip_qkv, which defaults to None (torch.clamp refuses two Nones); the published
    # checkpoints state both (500000, 8). A tiny MoE and two key heads, as the others shrink to.
    "dbrx": {
        "attn_config": {"rope_theta": 500000.0, "kv_n_heads": 2, "clip_qkv": 8.0},
        "ffn_config": {"ffn_hidden_size": 64, "moe_num_experts": 4, "moe_top_k": 2},
    },
}
TOKEN_ID_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id")


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
    # MoE settings a default leaves null (DeepSeek V2's routing, Dots1's and DiffusionGemma's every one) that
    # the MoE layers are built with anyway.
    for key in MOE_KEYS:
        if key in defaults and defaults[key] is None:
            out[key] = SMALL[key]
    heads, kv = defaults.get("num_attention_heads"), defaults.get("num_key_value_heads")
    if isinstance(heads, int) and isinstance(kv, int) and kv:
        out["num_key_value_heads"] = 2 if kv < heads else out.get("num_attention_heads", heads)
    elif isinstance(heads, int) and "num_key_value_heads" in defaults and kv is None:
        out["num_key_value_heads"] = 2  # a null default the modeling code divides by (Nemotron)
    for key in WINDOW_KEYS:
        if isinstance(defaults.get(key), int):
            out[key] = WINDOW
    for key in TOKEN_ID_KEYS:
        value = defaults.get(key)
        if isinstance(value, int) and value >= VOCAB:
            out[key] = TOKEN_ID_KEYS.index(key)
    out.update(_per_layer(defaults, out))
    out.update(_one_softmax_layer(defaults, out))
    rope = defaults.get("rope_parameters")
    if isinstance(rope, dict) and isinstance(rope.get("mrope_section"), list):
        # The sections add up to a share of the rotated width: scaled with it (checked as the config builds).
        old, new = _rotary_width(defaults), _rotary_width({**defaults, **out})
        if old != new:
            sections = rope["mrope_section"]
            out["rope_parameters"] = {**rope, "mrope_section": _scaled(sections, sum(sections) * new // old)}
    for key, value in defaults.items():  # sub-configs (a wrapper's text and vision models)
        if isinstance(value, dict) and "model_type" in value:
            out[key] = {"model_type": value["model_type"], **_shrunk(value)}
    return out


def _per_layer(defaults: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """Per-layer lists cut to the tiny layer count, and that count: the shortest prefix that still has every
    kind of layer (Gemma 3: five sliding, one full; SmolLM3: NoPE every 4th layer), so each kind is measured,
    twice over where the last layers share the earlier layers' keys and values (Gemma 3n), so both are."""
    n_default = defaults.get("num_hidden_layers")
    n_layers = out.get("num_hidden_layers", n_default)
    if not isinstance(n_default, int) or not isinstance(n_layers, int):
        return {}
    per_layer = {
        key: value
        for key, value in defaults.items()
        if isinstance(value, list)
        and len(value) == n_default
        and all(isinstance(v, (str, int, float)) for v in value)
    }
    for kinds in per_layer.values():
        if all(isinstance(v, (str, int)) for v in kinds) and len(set(kinds)) <= 4:
            n_layers = max(n_layers, max(kinds.index(kind) for kind in set(kinds)) + 1)
    changed: dict[str, Any] = {}
    shared = defaults.get("num_kv_shared_layers")
    if isinstance(shared, int) and shared > 0:
        changed["num_kv_shared_layers"], n_layers = n_layers, 2 * n_layers
    for key, value in per_layer.items():
        cut = [min(v, SMALL[key]) if key in SMALL else v for v in value[:n_layers]]  # per-layer widths
        if cut != value:
            changed[key] = cut
    if n_layers != n_default:
        changed["num_hidden_layers"] = n_layers
    return changed


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
    tiny = {**_shrunk(defaults), "tie_word_embeddings": False, **TINY_OVERRIDES.get(model_type, {})}
    return _fit_rope_sections(model_type, tiny)


def _fit_rope_sections(model_type: str, tiny: dict[str, Any]) -> dict[str, Any]:
    """``tiny`` with each multimodal rotary's ``mrope_section`` resized to that rotary's frequencies.

    The sections split the rotary's frequencies between time, height and width; the modeling code's default
    fits the published head_dim, not the tiny one. Measured on the tiny model built on the meta device (no
    weights): a rotary module whose sections do not add up to its ``inv_freq`` gets them scaled to fit.
    """
    try:
        config = AutoConfig.for_model(model_type, **tiny)
        cls = model_class_for(config)
        if cls is None:
            return tiny
        with torch.device("meta"):
            model = cls(config)
    except Exception:  # a config or model that does not build small is classified by the sweep itself
        return tiny
    for module in model.modules():
        inv_freq = getattr(module, "inv_freq", None)
        if "mrope_section" not in vars(module) or not isinstance(inv_freq, torch.Tensor):
            continue
        # None: the checkpoints name the sections (HunYuan-VL); three (time, height, width) fit any text.
        sections: list[int] = vars(module)["mrope_section"] or [1, 1, 1]
        if sum(sections) == inv_freq.shape[-1]:
            continue
        rotary_config = getattr(module, "config", None)
        owner = _owner_of(tiny, str(getattr(rotary_config, "model_type", "")))
        rope = dict(getattr(rotary_config, "rope_parameters", None) or {})
        owner["rope_parameters"] = {**rope, "mrope_section": _scaled(sections, int(inv_freq.shape[-1]))}
    return tiny


def _owner_of(tiny: dict[str, Any], model_type: str) -> dict[str, Any]:
    """The (sub-)config dict of ``tiny`` for ``model_type`` (a wrapper's text config), else ``tiny``."""
    for value in tiny.values():
        if isinstance(value, dict) and value.get("model_type") == model_type:
            return value
    return tiny


def _rotary_width(cfg: dict[str, Any]) -> int:
    """The rotated width of a (sub-)config's heads: MLA's rope slice, else the head_dim."""
    head = cfg.get("qk_rope_head_dim") or cfg.get("head_dim")
    return int(head or cfg["hidden_size"] // cfg["num_attention_heads"])


def _scaled(sections: list[int], total: int) -> list[int]:
    """``sections`` scaled to add up to ``total``, each at least 1, rounding by largest remainder."""
    exact = [s * total / sum(sections) for s in sections]
    out = [max(1, int(x)) for x in exact]
    order = sorted(range(len(out)), key=lambda i: exact[i] - int(exact[i]), reverse=True)
    for i in order[: max(0, total - sum(out))]:
        out[i] += 1
    return out
