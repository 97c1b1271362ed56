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
from .compat import (
    attention_implementation,
    eager_attention,
    mask_fitted_to_keys,
    module_globals,
    rotary_functions,
    unregister_attention,
)

# (layer_idx, query, key, sliding_window) with query (B, Hq, S, D) and key (B, Hkv, S, D).
AttentionCallback = Callable[[int, torch.Tensor, torch.Tensor, int | None], None]

_session_lock = threading.Lock()


class StopForward(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised after the deepest captured layer so the rest of the forward is never computed."""


class CaptureSessionActiveError(UserError):
    """A second capture session was opened while one is active."""


@dataclass(frozen=True)
class RotaryCall:
    """One call of a rotary function: ``(q, k)`` in and out, or one tensor for families that rotate q and k
    in separate calls (GPT-J, Gemma 4). The outputs locate the rotated part in the attention's vectors."""

    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


def rotary_call(args: tuple[Any, ...], out: Any) -> RotaryCall | None:
    """What one rotary call rotated, from its positional arguments and its result (None: not a rotation)."""
    if (
        len(args) >= 2
        and isinstance(out, tuple)
        and len(out) == 2
        and all(isinstance(t, Tensor) for t in out)
    ):
        return RotaryCall((args[0], args[1]), (out[0], out[1]))
    if args and isinstance(args[0], Tensor) and isinstance(out, Tensor):
        return RotaryCall((args[0],), (out,))
    return None


@dataclass
class _RotaryStash:
    """The rotary calls since the last attention call; the next attention call consumes them."""

    calls: list[RotaryCall] = field(default_factory=list)

    def take(self) -> list[RotaryCall]:
        taken, self.calls = self.calls, []
        return taken


class RotarySliceError(UserError):
    """The rotary function's output was not found in the vectors handed to attention."""


def pre_rope_pair(query: Tensor, key: Tensor, calls: list[RotaryCall]) -> tuple[Tensor, Tensor]:
    """The pre-RoPE (query, key) of one attention call, from the rotary calls made since the previous one.

    No call: the layer has no rotation (NoPE), pre == post. Several calls: a layer may rotate more than its
    attention's q/k (DeepSeek V3.2's sparse-attention indexer rotates its own, smaller ones); the latest call
    whose vectors fit this attention's query and key, by shape and by where its output sits, is the one.
    """
    pairs = [c for c in calls if len(c.inputs) == 2]
    singles = [c for c in calls if len(c.inputs) == 1]
    if not pairs and singles:
        return _matched_single(query, singles), _matched_single(key, singles)
    if not pairs:
        return query, key
    problem: RotarySliceError | None = None
    for call in reversed(pairs):
        (q_in, k_in), (q_out, k_out) = call.inputs, call.outputs
        try:
            pre_q, pre_k = whole_pre_rope(query, q_in, q_out), whole_pre_rope(key, k_in, k_out)
        except RotarySliceError as exc:
            problem = exc
            continue
        if pre_q.shape == query.shape and pre_k.shape == key.shape:
            return pre_q, pre_k
    raise problem or RotarySliceError(
        f"no rotary call's vectors fit the attention's query {tuple(query.shape)} and key "
        f"{tuple(key.shape)}, so the pre-RoPE vectors cannot be told apart; capture post-RoPE only"
    )


def _matched_single(post: Tensor, singles: list[RotaryCall]) -> Tensor:
    """Pre-RoPE ``post`` from one-tensor rotary calls: the call whose output is ``post`` (or one end of it),
    bit for bit, possibly in (B, S, H, D) order (Gemma 4 rotates before moving heads first)."""
    for call in reversed(singles):
        (x_in,), (x_out,) = call.inputs, call.outputs
        views = [(x_in, x_out)]
        if x_out.dim() == 4:
            views.append((x_in.transpose(1, 2), x_out.transpose(1, 2)))
        for pre, rotated in views:
            if rotated.shape[:-1] != post.shape[:-1]:
                continue
            width = rotated.shape[-1]
            if width == post.shape[-1] and torch.equal(rotated, post):
                return pre
            if width < post.shape[-1] and torch.equal(post[..., :width], rotated):
                return torch.cat((pre, post[..., width:]), dim=-1)
            if width < post.shape[-1] and torch.equal(post[..., -width:], rotated):
                return torch.cat((post[..., :-width], pre), dim=-1)
    raise RotarySliceError(
        f"no one-tensor rotary call returned the attention's {tuple(post.shape)} vectors, so the pre-RoPE "
        "vectors cannot be rebuilt; capture post-RoPE only"
    )


def whole_pre_rope(
    post: torch.Tensor, rot_in: torch.Tensor | None, rot_out: torch.Tensor | None
) -> torch.Tensor:
    """The whole pre-RoPE vector of ``post`` (B, H, S, D), given what the rotary function got and returned.

    Most families rotate the whole head (or rotate part of it inside the rotary function, GLM): then the
    rotary input is the pre-RoPE vector. Multi-head latent attention (DeepSeek V2/V3) rotates only a slice
    and concatenates it with a part that never sees a position: there the pre-RoPE vector is ``post`` with
    the rotated slice swapped back for its input. Where the slice sits is measured, not assumed: the rotary
    output must equal ``post``'s leading or trailing slice, bit for bit. A key rotated once for all heads
    (DeepSeek's shared rope key) is broadcast to ``post``'s heads, as the model itself does.
    """
    if rot_in is None:
        return post  # this layer never rotated (NoPE): pre == post
    if (
        rot_in.dim() == 4 == post.dim()
        and rot_in.shape[1] != post.shape[1]
        and rot_in.shape[1] == post.shape[2]
    ):
        # Rotated in (B, S, H, D) order, heads moved first afterwards (DeepSeek V2, Llama 4).
        rot_in = rot_in.transpose(1, 2)
        rot_out = rot_out.transpose(1, 2) if rot_out is not None else None
    if rot_in.shape[-1] == post.shape[-1]:
        return rot_in
    if rot_out is None:
        raise RotarySliceError("the rotary function rotated a slice but returned no (q, k) pair")
    width = rot_in.shape[-1]
    # Broadcastable to post's (B, H, S): each dim equal, or 1 (DeepSeek's one rope key for all heads).
    lead = zip(rot_in.shape[:-1], post.shape[:-1], strict=False)
    fits = rot_in.dim() == post.dim() and all(r in (1, p) for r, p in lead)
    if not fits:
        raise RotarySliceError(
            f"a rotated slice of shape {tuple(rot_in.shape)} does not fit {tuple(post.shape)}"
        )
    rot_in, rot_out = rot_in.expand(*post.shape[:-1], width), rot_out.expand(*post.shape[:-1], width)
    if torch.equal(post[..., -width:], rot_out):
        return torch.cat((post[..., :-width], rot_in), dim=-1)
    if torch.equal(post[..., :width], rot_out):
        return torch.cat((rot_in, post[..., width:]), dim=-1)
    raise RotarySliceError(
        f"the rotary function returned a {width}-wide slice that is neither end of the {post.shape[-1]}-wide "
        "attention vectors, so the pre-RoPE vectors cannot be rebuilt; capture post-RoPE only"
    )


def delegate_attention(name: str, module: torch.nn.Module) -> Callable[..., Any]:
    """The real attention function for backend ``name`` as ``module``'s family would use it."""
    if name == "eager":
        fn = eager_attention(module)
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
    rotary = rotary_functions(modules) if pre_rope else []
    stash = _RotaryStash()

    def tapped_attention(
        module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, *args: Any, **kwargs: Any
    ) -> Any:
        layer = int(module.layer_idx)  # type: ignore[arg-type]
        rotary_calls = stash.take()
        if layers is None or layer in layers:
            window = kwargs.get("sliding_window", getattr(module, "sliding_window", None))
            if pre_rope:
                # Layers without rotation never called the rotary function: there pre == post.
                query_out, key_out = pre_rope_pair(query, key, rotary_calls)
            else:
                query_out, key_out = query, key
            callback(layer, query_out, key_out, int(window) if window else None)
        if stop_after_layer is not None and layer >= stop_after_layer:
            raise StopForward
        args, kwargs = mask_fitted_to_keys(key, args, kwargs)
        return delegate_attention(delegate, module)(module, query, key, *args, **kwargs)

    def wrap_rotary(original: Callable[..., Any]) -> Callable[..., Any]:
        def rotary_recorder(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            call = rotary_call(args, out)
            if call is not None:
                stash.calls.append(call)
            return out

        return rotary_recorder

    try:
        AttentionInterface.register(name, tapped_attention)
        mask_source = "sdpa" if delegate not in ALL_MASK_ATTENTION_FUNCTIONS else delegate
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[mask_source])
        with (
            attention_implementation(configs.values(), name),
            module_globals([(mod, fn_name, wrap_rotary) for mod, fn_name in rotary]),
        ):
            yield
    finally:
        unregister_attention(name)
        _session_lock.release()
