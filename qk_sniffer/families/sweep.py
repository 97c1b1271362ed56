"""The family sweep: every decoder family transformers ships, built tiny, captured, compared with itself.

For each model type of transformers' causal-LM and image-text-to-text mappings, the sweep shrinks the
family's own default config (:func:`.tiny.tiny_config`), builds a random model from it, captures every head of
every layer pre- and post-RoPE on one right-padded batch of unequal lengths (each longer than any window),
and compares each vector with the model's own eager computation
(:mod:`qk_sniffer.capture.selfcheck`). A family is ``exact`` only when every vector matched; otherwise it
gets the refusal class of the first thing that was measured to fail, with the measurement as its reason.
Nothing here knows a family by name.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch
import transformers
from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
)

from ..capture.models import (
    _auto_class,
    attention_backend,
    backbone_of,
    backends_of,
    model_class_for,
    text_config,
)
from ..capture.rows import KeysNotTokens
from ..capture.selfcheck import TOLERANCE, Comparison, NoEagerPath, RepeatedLayer, check_against_eager
from ..capture.shapes import AttentionShapeError, check_loaded, measured_layout
from ..capture.tap import attention_modules
from ..core.errors import UserError
from .tiny import VOCAB, tiny_config

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
    "keys_not_tokens": "the attention's keys are not one per token (compressed or pooled entries): a key has "
    "no position to be named by",
    "layout_mismatch": "the layout planned before loading (layers, heads, rotation) is not the one the model "
    "ran",
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
    "per_layer_heads": "query or key head counts differ between layers; each layer's own heads are captured",
    "eager_only": "transformers' sdpa path differs from its own eager computation here: runs use eager",
}
LENGTHS = (23, 14, 31)  # one batch of unequal lengths, right-padded; each longer than the tiny windows
MAX_PARAMS = 30_000_000  # a "tiny" model above this was not shrunk by the generic rules

_NO_TAPPABLE = "no `*Attention` module with a layer_idx and a config (what the tap hooks)"


def candidates() -> list[str]:
    """Every model type with a causal-LM class, plus the vision-language wrappers (image-text-to-text)."""
    return sorted(set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) | set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES))


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
    if layout.q_heads_per_layer or layout.kv_heads_per_layer:
        found.append("per_layer_heads")
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
    # The class's own best backend, never the shipped matrix's verdict: the sweep is what measures that.
    backend = "sdpa" if "sdpa" in backends_of(cls) else "eager"
    entry = _measure_on(config, tiny, backend)
    if entry["status"] == "mismatch" and backend != "eager":
        # transformers' sdpa path computes something else than its eager one (PaliGemma's text model alone
        # attends both ways under sdpa, causally under eager): exact on eager, the backend a run then uses.
        on_eager = _measure_on(config, tiny, "eager")
        if on_eager["status"] == "exact":
            on_eager["quirks"].append("eager_only")
            return on_eager
    return entry


def _measure_on(config: PretrainedConfig, tiny: dict[str, Any], backend: str) -> dict[str, Any]:
    """One family's entry with its model built (random weights, seed 0) to run ``backend``."""
    torch.manual_seed(0)
    try:
        model = (
            _auto_class(config, False)
            .from_config(copy.deepcopy(config), dtype=torch.float32, attn_implementation=backend)
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
        check_loaded(model, layout)  # what a run checks after loading: the weightless plan is the model's
        with torch.inference_mode():
            result = check_against_eager(model, _texts(int(text_config(config).vocab_size)), layout)
    except KeysNotTokens as exc:
        return _entry("keys_not_tokens", str(exc), tiny, backend=backend)
    except (AttentionShapeError, RepeatedLayer) as exc:
        return _entry("layout_mismatch", str(exc), tiny, backend=backend)
    except NoEagerPath as exc:
        return _entry("not_registry", str(exc), tiny, backend=backend)
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
    if any(word in problem for word in ("layers", "shape", "config says", "incomplete")):
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
