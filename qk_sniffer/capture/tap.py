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
- a requested layer whose attention never reaches the registry (a release or backend that bypasses it) is an
  error at the end of the forward (:class:`LayerWatch`), never a silently smaller capture;
- everything is restored in ``finally``; only one session may be active at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from ..core.errors import UserError
from .chunking import ChunkSizes
from .compat import (
    attention_implementation,
    eager_attention,
    mask_fitted_to_keys,
    module_globals,
    rotary_functions,
    unregister_attention,
)
from .decoder_layers import RepeatedCall, running_layer
from .long_attention import attend, deferring
from .pre_rope import EarlierKeys, RotarySliceError, RotaryStash, pre_rope_pair, pre_rope_query

# (layer_idx, query, key, sliding_window) with query (B, Hq, S, D) and key (B, Hkv, S, D).
AttentionCallback = Callable[[int, torch.Tensor, torch.Tensor, int | None], None]

_session_lock = threading.Lock()


class StopForward(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised after the deepest captured layer so the rest of the forward is never computed."""


class CaptureSessionActiveError(UserError):
    """A second capture session was opened while one is active."""


@contextmanager
def exclusive_session() -> Iterator[None]:
    """Held while a tap (of either kind) is open: one capture session per process at a time."""
    if not _session_lock.acquire(blocking=False):
        raise CaptureSessionActiveError(
            "a capture session is already active in this process; close it before opening another"
        )
    try:
        yield
    finally:
        _session_lock.release()


class AttentionMissedError(UserError):
    """A requested layer's attention never reached the tap: the model computed it where the tap cannot see."""


@dataclass
class LayerWatch:
    """The requested layers that handed over their q and k in the current forward. A forward that ends, or
    stops early, without one of them is an error: a run must never write a subset of what it was asked for
    (a release whose modeling code bypasses the seam, a backend that computes attention elsewhere)."""

    wanted: set[int]
    seam: str  # where the tap looks, for the message
    seen: set[int] = field(default_factory=set)

    def require(self, upto: int, backbone: torch.nn.Module) -> None:
        missed = sorted(layer for layer in self.wanted - self.seen if layer <= upto)
        if missed:
            backend = getattr(getattr(backbone, "config", None), "_attn_implementation", None)
            raise AttentionMissedError(
                f"layers {missed}: their attention never reached {self.seam} (attn_implementation="
                f"{backend!r}), so their q and k cannot be captured; capture this family with "
                "model.attn_implementation=eager, or see docs/families.md for its status"
            )

    @contextmanager
    def each_forward(self, backbone: torch.nn.Module) -> Iterator[None]:
        """Start each forward of ``backbone`` with nothing seen, and check what was seen at its end."""

        def start(_module: torch.nn.Module, _args: Any) -> None:
            self.seen.clear()

        def finish(_module: torch.nn.Module, _args: Any, _output: Any) -> None:
            self.require(max(self.wanted, default=-1), backbone)

        handles = [backbone.register_forward_pre_hook(start), backbone.register_forward_hook(finish)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def delegate_attention(name: str, module: torch.nn.Module) -> Callable[..., Any]:
    """The real attention function for backend ``name`` as ``module``'s family would use it."""
    if name == "eager":
        fn = eager_attention(module)
        if fn is None:
            raise UserError(f"{type(module).__name__} has no eager attention function; use sdpa")
        return fn
    return ALL_ATTENTION_FUNCTIONS[name]


def attention_modules(backbone: torch.nn.Module) -> list[torch.nn.Module]:
    """Self-attention modules in layer order: the ``*Attention`` modules that carry a ``layer_idx`` (Zamba's
    shared block leaves it None: calls are named by the decoder layer running, not by it).

    The class-name test keeps out other per-layer modules (MoE blocks, linear-attention mixers) whatever
    their projections are called (``q_proj``, Phi-3's fused ``qkv_proj``, GPT-2's ``c_attn``); cross-attention
    modules (Mllama) attend to image features and are left out.
    """
    found = []
    for module in backbone.modules():
        name = type(module).__name__
        if (
            hasattr(module, "layer_idx")
            and hasattr(module, "config")
            and name.endswith("Attention")
            and "CrossAttention" not in name
            and not getattr(module, "is_cross_attention", False)
        ):
            found.append(module)
    return found


@contextmanager
def attention_tap(
    backbone: torch.nn.Module,
    delegate: str,
    callback: AttentionCallback,
    *,
    pre_rope: bool = False,
    layers: set[int] | None = None,
    stop_after_layer: int | None = None,
    sizes: ChunkSizes | None = None,
) -> Iterator[None]:
    """Route ``backbone``'s attention through ``callback`` then ``delegate`` while the context is open (the
    caller holds :func:`exclusive_session`: :func:`~.module_tap.open_tap` opens both).

    Each call is named by the decoder layer it runs in (:func:`~.decoder_layers.running_layer`), so a shared
    block applied at several depths (Zamba2) is one layer per application.
    ``layers`` limits which layers call back (None: all). With ``stop_after_layer`` set, the forward raises
    :class:`StopForward` right after that layer's Q/K were handed over, before its attention is computed.
    With ``sizes``, masks that would be built whole are built per ``sizes.queries`` query rows instead, and
    the delegate is called per chunk (:mod:`.long_attention`).
    """
    name = f"qk_sniffer_{delegate}"
    modules = attention_modules(backbone)
    tapped = {id(m) for m in modules}  # not cross-attention modules, which share the text config
    configs: dict[int, Any] = {id(m.config): m.config for m in modules}
    if getattr(backbone, "config", None) is not None:
        configs[id(backbone.config)] = backbone.config
    rotary = rotary_functions(modules) if pre_rope else []
    stash = RotaryStash()
    repeated = RepeatedCall()
    earlier_keys = EarlierKeys()
    # Requested layers (named by the decoder layer running) that must hand over their q and k each forward.
    watch = LayerWatch(set(layers) if layers is not None else set(), "transformers' attention registry")

    def run_backend(module: torch.nn.Module, query: Tensor, key: Tensor, args: Any, kwargs: Any) -> Any:
        backend = delegate_attention(delegate, module)
        args, kwargs = mask_fitted_to_keys(key, args, kwargs)
        if sizes is None:
            return backend(module, query, key, *args, **kwargs)
        return attend(backend, module, query, key, args, kwargs, sizes.queries)

    def tapped_attention(
        module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, *args: Any, **kwargs: Any
    ) -> Any:
        rotary_calls = stash.take()
        if id(module) not in tapped or repeated(layer := layer_of(module), query, key):
            return run_backend(module, query, key, args, kwargs)
        keep = layers is None or layer in layers
        query_out, key_out = query, key
        if pre_rope and (earlier := earlier_keys.get(key)) is not None:
            query_out, key_out = pre_rope_query(query, rotary_calls), earlier
        elif pre_rope:
            # Layers without rotation never called the rotary function: there pre == post. A layer not
            # captured still leaves its pre-RoPE keys for a later layer that attends to the same keys.
            try:
                query_out, key_out = pre_rope_pair(query, key, rotary_calls)
                earlier_keys.remember(key, key_out)
            except RotarySliceError:
                if keep:
                    raise
        if keep:
            window = kwargs.get("sliding_window", getattr(module, "sliding_window", None))
            callback(layer, query_out, key_out, int(window) if window else None)
            watch.seen.add(layer)
        del query_out, key_out, rotary_calls  # the pre-RoPE vectors are not held through the attention call
        if stop_after_layer is not None and layer >= stop_after_layer:
            watch.require(layer, backbone)
            raise StopForward
        return run_backend(module, query, key, args, kwargs)

    try:
        AttentionInterface.register(name, tapped_attention)
        mask_source = "sdpa" if delegate not in ALL_MASK_ATTENTION_FUNCTIONS else delegate
        mask = ALL_MASK_ATTENTION_FUNCTIONS[mask_source]
        AttentionMaskInterface.register(name, mask if sizes is None else deferring(mask, mask_source, sizes))
        with (
            attention_implementation(configs.values(), name),
            module_globals([(mod, fn_name, stash.recorder) for mod, fn_name in rotary]),
            watch.each_forward(backbone),
            running_layer(backbone) as layer_of,
        ):
            yield
    finally:
        unregister_attention(name)
