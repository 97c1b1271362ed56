"""The one seam into transformers: a registered attention function that sees Q and K, then delegates.

transformers (5.x) routes every attention call through ``AttentionInterface``. We register a function under
our own name that hands the layer's post-RoPE query and key (and, on request, the pre-RoPE ones) to a
callback, then calls the real backend (sdpa, flash attention, the model's own eager function) unchanged.
Nothing of the modeling code is copied, so a new transformers release does not break us as long as it keeps
that registry.

Traps handled here:
- the custom name also needs a mask function in ``AttentionMaskInterface``, or sliding-window layers would
  silently attend to everything (masking_utils skips the mask for names it does not know);
- pre-RoPE vectors are taken by wrapping the modeling module's ``apply_rotary_pos_emb``; layers that never
  call it (NoPE layers) get pre == post;
- everything is restored in ``finally``; only one session may be active at a time.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from .errors import UserError

ROTARY_FUNCTION = "apply_rotary_pos_emb"

# (layer_idx, query, key, sliding_window) with query (B, Hq, S, D) and key (B, Hkv, S, D).
AttentionCallback = Callable[[int, torch.Tensor, torch.Tensor, int | None], None]

_session_lock = threading.Lock()


class StopForward(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised after the deepest captured layer so the rest of the forward is never computed."""


class CaptureSessionActiveError(UserError):
    """A second capture session was opened while one is active."""


@dataclass
class _RotaryStash:
    """The most recent pre-rotation (q, k); the next attention call of the same module consumes it."""

    query: torch.Tensor | None = None
    key: torch.Tensor | None = None

    def take(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        q, k = self.query, self.key
        self.query = self.key = None
        return q, k


def delegate_attention(name: str, module: torch.nn.Module) -> Callable[..., Any]:
    """The real attention function for backend ``name`` as ``module``'s family would use it."""
    if name == "eager":
        modeling = sys.modules[type(module).__module__]
        fn = getattr(modeling, "eager_attention_forward", None)
        if fn is None:
            raise UserError(f"{type(module).__name__} has no eager attention function; use sdpa")
        return fn
    return ALL_ATTENTION_FUNCTIONS[name]


def attention_modules(backbone: torch.nn.Module) -> list[torch.nn.Module]:
    """Self-attention modules in layer order: the ``*Attention`` modules that carry a ``layer_idx``.

    The class-name test keeps out other per-layer modules (MoE blocks, linear-attention mixers) whatever
    their projections are called (``q_proj``, Phi-3's fused ``qkv_proj``, GPT-2's ``c_attn``); cross-attention
    modules (Mllama) attend to image features and are left out.
    """
    found = []
    for module in backbone.modules():
        name = type(module).__name__
        if (
            isinstance(getattr(module, "layer_idx", None), int)
            and hasattr(module, "config")
            and name.endswith("Attention")
            and "CrossAttention" not in name
            and not getattr(module, "is_cross_attention", False)
        ):
            found.append(module)
    return found


def _modeling_modules(modules: list[torch.nn.Module]) -> list[ModuleType]:
    seen: dict[str, ModuleType] = {}
    for module in modules:
        mod = sys.modules[type(module).__module__]
        if hasattr(mod, ROTARY_FUNCTION):
            seen[mod.__name__] = mod
    return list(seen.values())


@contextmanager
def attention_tap(
    backbone: torch.nn.Module,
    delegate: str,
    callback: AttentionCallback,
    *,
    pre_rope: bool = False,
    layers: set[int] | None = None,
    stop_after_layer: int | None = None,
) -> Iterator[None]:
    """Route ``backbone``'s attention through ``callback`` then ``delegate`` while the context is open.

    ``layers`` limits which layers call back (None: all). With ``stop_after_layer`` set, the forward raises
    :class:`StopForward` right after that layer's Q/K were handed over, before its attention is computed.
    """
    if not _session_lock.acquire(blocking=False):
        raise CaptureSessionActiveError(
            "a capture session is already active in this process; close it before opening another"
        )
    name = f"qk_sniffer_{delegate}"
    modules = attention_modules(backbone)
    configs: dict[int, Any] = {id(m.config): m.config for m in modules}
    if getattr(backbone, "config", None) is not None:
        configs[id(backbone.config)] = backbone.config
    saved_impl = {key: cfg._attn_implementation for key, cfg in configs.items()}
    rotary_modules = _modeling_modules(modules) if pre_rope else []
    saved_rotary = {mod.__name__: getattr(mod, ROTARY_FUNCTION) for mod in rotary_modules}
    stash = _RotaryStash()

    def tapped_attention(
        module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, *args: Any, **kwargs: Any
    ) -> Any:
        layer = int(module.layer_idx)  # type: ignore[arg-type]
        pre_q, pre_k = stash.take()
        if layers is None or layer in layers:
            window = kwargs.get("sliding_window", getattr(module, "sliding_window", None))
            if pre_rope:
                # Layers without rotation never called the rotary function: there pre == post.
                query_out = pre_q if pre_q is not None else query
                key_out = pre_k if pre_k is not None else key
            else:
                query_out, key_out = query, key
            callback(layer, query_out, key_out, int(window) if window else None)
        if stop_after_layer is not None and layer >= stop_after_layer:
            raise StopForward
        return delegate_attention(delegate, module)(module, query, key, *args, **kwargs)

    def wrap_rotary(original: Callable[..., Any]) -> Callable[..., Any]:
        def rotary(q: torch.Tensor, k: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            stash.query, stash.key = q, k
            return original(q, k, *args, **kwargs)

        return rotary

    try:
        AttentionInterface.register(name, tapped_attention)
        mask_source = "sdpa" if delegate not in ALL_MASK_ATTENTION_FUNCTIONS else delegate
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[mask_source])
        for cfg in configs.values():
            cfg._attn_implementation_internal = name
        for mod in rotary_modules:
            setattr(mod, ROTARY_FUNCTION, wrap_rotary(saved_rotary[mod.__name__]))
        yield
    finally:
        for mod in rotary_modules:
            setattr(mod, ROTARY_FUNCTION, saved_rotary[mod.__name__])
        for key, cfg in configs.items():
            cfg._attn_implementation_internal = saved_impl[key]
        AttentionInterface._global_mapping.pop(name, None)
        AttentionMaskInterface._global_mapping.pop(name, None)
        _session_lock.release()
