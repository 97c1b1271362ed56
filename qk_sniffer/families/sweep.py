"""The family sweep: every decoder family transformers ships, built tiny, captured, compared with itself.

For each model type of transformers' causal-LM and image-text-to-text mappings, the sweep shrinks the
family's own default config (:func:`.tiny.tiny_config`), builds a random model from it, captures every head of
every layer pre- and post-RoPE on one right-padded batch of unequal lengths (each longer than any window),
and compares each vector with the model's own eager computation
(:mod:`qk_sniffer.capture.selfcheck`). A family is ``exact`` only when every vector matched; otherwise it
gets the refusal class of the first thing that was measured to fail, with the measurement as its reason.
Nothing here knows a family by name, except :data:`TINY_OVERRIDES`: what a family's own config validation
needs to build small at all.
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
    layout_from_config,
    model_class_for,
    text_config,
)
from ..capture.module_tap import seam_modules
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
    "bidirectional": "tokens attend to later tokens (an encoder such as BERT with is_decoder=false): not a "
    "causal decoder, and right padding would change every vector",
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
    "absolute_positions": "a learned or sinusoidal position table, no rotation: pre-RoPE == post-RoPE",
    "alibi": "ALiBi: a per-head bias linear in the key position; slopes recorded in the layout",
    "outside_registry": "attention computed outside the registry: tapped at the module's own seams, and "
    "held against its attention probabilities",
    "query_prescaled": "the query is scaled by head_dim**-0.5 before attention (captured scaled, as used)",
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


# Names under which decoders keep an absolute position table (a module, or CTRL's sinusoidal buffer).
POSITION_TABLES = ("wpe", "embed_positions", "position_embeddings", "positions_embed", "pos_emb", "embed_pos",
                   "pos_encoding")  # fmt: skip


def position_encoding_of(backbone: torch.nn.Module, layout: Any) -> str:
    """How the model tells positions apart, measured: rotation and ALiBi as the layout reads them from the
    config (the exactness check holds both against the model), else whether the decoder has a table."""
    if layout.position_encoding in ("rope", "alibi"):
        return str(layout.position_encoding)
    named = [*backbone.named_modules(), *backbone.named_buffers()]
    return "absolute" if any(name.rsplit(".", 1)[-1] in POSITION_TABLES for name, _ in named) else "none"


def sees_later_tokens(model: torch.nn.Module, ids: list[int]) -> bool:
    """Whether a token's output depends on the tokens after it (a bidirectional encoder): the model's first
    output (logits, or a decoder's hidden states) on ``ids`` against the same on ``ids`` without its last."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        whole = model(input_ids=torch.tensor([ids], device=device), use_cache=False)[0]
        prefix = model(input_ids=torch.tensor([ids[:-1]], device=device), use_cache=False)[0]
    return not torch.allclose(whole[0, :-1], prefix[0], atol=1e-5, rtol=1e-4)


def _bidirectional(model: torch.nn.Module, config: PretrainedConfig) -> bool:
    """:func:`sees_later_tokens`, False for a model that cannot run on token ids alone."""
    try:
        return sees_later_tokens(model, _texts(int(text_config(config).vocab_size))[0])
    except Exception:
        return False


_BIDIRECTIONAL = "a token's output changed when a later token was removed"


def quirks_of(
    model: torch.nn.Module, config: PretrainedConfig, layout: Any, mla: bool, positions: str = "rope"
) -> list[str]:
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
    backbone = backbone_of(model)  # type: ignore[arg-type]
    if positions in ("absolute", "alibi"):
        found.append("absolute_positions" if positions == "absolute" else "alibi")
    if seam_modules(backbone):
        found.append("outside_registry")
    if layout.query_prescale is not None:
        found.append("query_prescaled")
    modules = attention_modules(backbone)
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
    if entry["status"] in ("mismatch", "bidirectional") and backend != "eager":
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
    try:
        backbone = backbone_of(model)
    except UserError:
        backbone = None
    seams = seam_modules(backbone) if backbone is not None else {}
    untappable = backbone is None or not (attention_modules(backbone) or seams)
    if untappable and _bidirectional(model, config):  # an encoder: the reason is the family, not the tap
        return _entry("bidirectional", _BIDIRECTIONAL, tiny)
    if not attention_modules(model) and not seams:
        return _entry("no_softmax_attention", _NO_TAPPABLE, tiny)
    if backbone is None:
        return _entry("no_decoder_stack", "no module with `layers` and `embed_tokens` to tap", tiny)
    if not attention_modules(backbone) and not seams:
        return _entry("no_softmax_attention", "no `*Attention` module with a layer_idx in the decoder", tiny)
    texts = _texts(int(text_config(config).vocab_size))
    positions = {"position_encoding": position_encoding_of(backbone, layout_from_config(config, check=False))}
    try:
        layout = measured_layout(config, check=False)
        check_loaded(model, layout)  # what a run checks after loading: the weightless plan is the model's
        with torch.inference_mode():
            if sees_later_tokens(backbone, texts[0]):
                return _entry("bidirectional", _BIDIRECTIONAL, tiny, backend=backend, **positions)
            result = check_against_eager(model, texts, layout)
    except KeysNotTokens as exc:
        return _entry("keys_not_tokens", str(exc), tiny, backend=backend, **positions)
    except (AttentionShapeError, RepeatedLayer) as exc:
        return _entry("layout_mismatch", str(exc), tiny, backend=backend, **positions)
    except NoEagerPath as exc:
        return _entry("not_registry", str(exc), tiny, backend=backend, **positions)
    return _classify(result, model, config, layout, tiny, backend, positions)


def _classify(
    result: Comparison,
    model: Any,
    config: PretrainedConfig,
    layout: Any,
    tiny: dict[str, Any],
    backend: str,
    positions: dict[str, str],
) -> dict[str, Any]:
    extra = {"backend": backend, "worst_error": float(f"{result.worst:.3g}"), "vectors": result.checked}
    extra |= positions
    if result.exact:
        mla = _rotates_a_slice(model, layout)
        quirks = quirks_of(model, config, layout, mla, positions["position_encoding"])
        return _entry("exact", "", tiny, quirks=quirks, **extra)
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
