"""Attention written outside transformers' registry, tapped where the module itself forms q and k.

BLOOM, MPT, GPT-Neo, GPT-NeoX-Japanese, OpenAI GPT, XGLM and TrOCR compute attention inline, so the
registry tap (:mod:`.tap`) never sees it. For each such attention class a :class:`Seam` names the point
where the module holds its query and key: one of its own methods whose arguments or result they are (BLOOM's
``_reshape``, GPT-Neo's ``_attn``), or its projections, whose outputs are read the way the module reads them
(MPT's fused ``Wqkv``, clamped and chunked; XGLM's ``q_proj`` times its ``scaling``). No modeling code is
copied: methods are wrapped on the instances and projections hooked, only while the context is open, and
everything is restored in ``finally``.

The tap hands ``(layer, query (B, Hq, S, D), key (B, Hkv, S, D), window)`` to the same callback as the
registry tap, honours the same layer filter and early stop, and fails loudly when a requested layer's
attention never reached its seam (a backend that bypasses it), instead of writing a subset. Pre-RoPE vectors
come from the modeling module's rotary function, as in the registry tap; families without rotation have
pre == post. :func:`open_tap` chooses the tap for a model; :func:`seam_reference` records the same seams in a
plain forward for the self-check, which also holds them against the model's attention probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .chunking import ChunkSizes
from .compat import modeling_module, module_globals, rotary_functions
from .pre_rope import RotaryCall, RotaryStash, pre_rope_pair
from .tap import AttentionCallback, LayerWatch, StopForward, attention_tap, exclusive_session

# (attention module, query (B, Hq, S, D), key (B, Hkv, S, D), their pre-RoPE pair where the seam itself
# knows it, else None): what a seam hands over.
Deliver = Callable[[torch.nn.Module, Tensor, Tensor, tuple[Tensor, Tensor] | None], None]
Undo = Callable[[], None]


@dataclass(frozen=True)
class Seam:
    """Where one attention class forms its query and key."""

    # The attention module's path inside its decoder layer (a layer may hold other attention modules).
    path: str
    # Installs the tap on one module instance; returns what undoes it.
    install: Callable[[torch.nn.Module, Deliver], Undo]
    # The layer's attention window, for modules that attend locally (GPT-Neo's "local" layers).
    window: Callable[[torch.nn.Module], int | None] = lambda module: None
    # Whether this module has the seam at all (a family whose modeling code changed between releases).
    applies: Callable[[torch.nn.Module], bool] = lambda module: True


def _wrap_method(module: torch.nn.Module, name: str, wrapper: Callable[..., Any]) -> Undo:
    """Shadow ``module.name`` with ``wrapper`` on this instance only; the undo puts back what was there
    (and leaves alone whatever replaced the wrapper meanwhile)."""
    had_own = name in vars(module)
    own = vars(module).get(name)
    setattr(module, name, wrapper)

    def undo() -> None:
        if vars(module).get(name) is not wrapper:
            return
        if had_own:
            setattr(module, name, own)
        else:
            delattr(module, name)

    return undo


def method_args(name: str, key_last: bool = False) -> Callable[[torch.nn.Module, Deliver], Undo]:
    """The module's method ``name`` receives ``(query, key, ...)``, heads first; ``key_last``: the key comes
    transposed, (B, H, D, S), as OpenAI GPT hands it to ``_attn``."""

    def install(module: torch.nn.Module, deliver: Deliver) -> Undo:
        original = getattr(module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            query, key = args[0], args[1]
            deliver(module, query, key.transpose(-1, -2) if key_last else key, None)
            return original(*args, **kwargs)

        return _wrap_method(module, name, wrapper)

    return install


def method_result(name: str) -> Callable[[torch.nn.Module, Deliver], Undo]:
    """The module's method ``name`` returns ``(query, key, value)``, heads first (BLOOM's ``_reshape``)."""

    def install(module: torch.nn.Module, deliver: Deliver) -> Undo:
        original = getattr(module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            deliver(module, out[0], out[1], None)
            return out

        return _wrap_method(module, name, wrapper)

    return install


def _heads_first(states: Tensor, head_dim: int) -> Tensor:
    """(B, S, H * D) -> (B, H, S, D), the split every projection-tapped family makes."""
    return states.view(*states.shape[:2], -1, head_dim).transpose(1, 2)


def projections(q: str, k: str, query_scale: str | None = None) -> Callable[[torch.nn.Module, Deliver], Undo]:
    """Separate query and key projections (forward hooks); ``query_scale`` names the module attribute the
    module multiplies the query projection by (XGLM's ``scaling``), so the query is the one it uses."""

    def install(module: torch.nn.Module, deliver: Deliver) -> Undo:
        held: dict[str, Tensor] = {}
        head_dim = int(module.head_dim)  # type: ignore[arg-type]

        def hook(kind: str) -> Callable[..., None]:
            def on_output(_proj: torch.nn.Module, _inputs: Any, output: Tensor) -> None:
                if kind == "q" and query_scale is not None:
                    output = output * getattr(module, query_scale)
                held[kind] = _heads_first(output, head_dim)
                if len(held) == 2:
                    query, key = held.pop("q"), held.pop("k")
                    deliver(module, query, key, None)

            return on_output

        handles = [
            module.get_submodule(q).register_forward_hook(hook("q")),
            module.get_submodule(k).register_forward_hook(hook("k")),
        ]

        def undo() -> None:
            for handle in handles:
                handle.remove()

        return undo

    return install


def fused_projection(name: str, clamp: str | None = None) -> Callable[[torch.nn.Module, Deliver], Undo]:
    """One projection whose output is ``[q | k | v]`` along its last dim (MPT's ``Wqkv``); ``clamp`` names the
    module attribute it clips that output to (MPT's ``clip_qkv``), when set."""

    def install(module: torch.nn.Module, deliver: Deliver) -> Undo:
        head_dim = int(module.head_dim)  # type: ignore[arg-type]

        def on_output(_proj: torch.nn.Module, _inputs: Any, output: Tensor) -> None:
            limit = getattr(module, clamp) if clamp else None
            if limit:
                output = output.clamp(min=-limit, max=limit)
            query, key, _ = output.chunk(3, dim=-1)
            deliver(module, _heads_first(query, head_dim), _heads_first(key, head_dim), None)

        handle = module.get_submodule(name).register_forward_hook(on_output)
        return handle.remove

    return install


def split_then_rotate(name: str) -> Callable[[torch.nn.Module, Deliver], Undo]:
    """Falcon before transformers 5.25: its method ``name`` returns (query, key, value) heads last, then the
    forward rotates q and k with the modeling module's ``apply_rotary_pos_emb`` unless it was handed an
    ALiBi bias. The post-RoPE pair is that function applied to the same vectors with the cos/sin the forward
    received. Keys broadcast to every query head (the new decoder architecture) are read once per key head."""

    def install(module: torch.nn.Module, deliver: Deliver) -> Undo:
        received: dict[str, Any] = {}
        rotate = modeling_module(module).apply_rotary_pos_emb
        original = getattr(module, name)

        def remember(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            received["alibi"] = kwargs.get("alibi", args[1] if len(args) > 1 else None)
            received["rope"] = kwargs.get("position_embeddings")

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            query, key = out[0].transpose(1, 2), out[1].transpose(1, 2)
            key = key[:, :: key.shape[1] // int(module.num_kv_heads)]  # type: ignore[arg-type]
            if received["alibi"] is not None:
                deliver(module, query, key, None)
            else:
                cos, sin = received["rope"]
                post_query, post_key = rotate(query, key, cos, sin)
                deliver(module, post_query, post_key, (query, key))
            return out

        handle = module.register_forward_pre_hook(remember, with_kwargs=True)
        undo_method = _wrap_method(module, name, wrapper)

        def undo() -> None:
            handle.remove()
            undo_method()

        return undo

    return install


def _gpt_neo_window(module: torch.nn.Module) -> int | None:
    config: Any = module.config
    return int(config.window_size) if module.attention_type == "local" else None


# Attention classes outside the registry, by "modeling module.class": each one's seam.
SEAMS: dict[str, Seam] = {
    "modeling_bloom.BloomAttention": Seam("self_attention", method_result("_reshape")),
    "modeling_mpt.MptAttention": Seam("attn", fused_projection("Wqkv", clamp="clip_qkv")),
    "modeling_gpt_neo.GPTNeoSelfAttention": Seam("attn.attention", method_args("_attn"), _gpt_neo_window),
    "modeling_gpt_neox_japanese.GPTNeoXJapaneseAttention": Seam("attention", method_args("_attn")),
    "modeling_openai.Attention": Seam("attn", method_args("_attn", key_last=True)),
    "modeling_xglm.XGLMAttention": Seam("self_attn", projections("q_proj", "k_proj", query_scale="scaling")),
    "modeling_trocr.TrOCRAttention": Seam(
        "self_attn", projections("q_proj", "k_proj", query_scale="scaling")
    ),
    # Falcon computes attention inline before transformers 5.25 (from 5.25 on it uses the registry, and has
    # no `_split_heads`: the seam then does not apply).
    "modeling_falcon.FalconAttention": Seam(
        "self_attention", split_then_rotate("_split_heads"), applies=lambda m: hasattr(m, "_split_heads")
    ),
}


def _class_key(module: torch.nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__qualname__}"


def seam_modules(backbone: torch.nn.Module) -> dict[int, tuple[torch.nn.Module, Seam]]:
    """Per decoder layer (its index in the backbone's layer list), the attention module a seam taps; empty for
    families whose attention goes through the registry."""
    found: dict[int, tuple[torch.nn.Module, Seam]] = {}
    for stack in backbone.children():
        if not isinstance(stack, torch.nn.ModuleList):
            continue
        for index, block in enumerate(stack):
            for path, module in block.named_modules():
                seam = SEAMS.get(_class_key(module))
                if seam is not None and path == seam.path and seam.applies(module):
                    found[index] = (module, seam)
    return found


# (layer, window, post-RoPE query, post-RoPE key, the rotary calls made since the previous layer's).
SeamCall = Callable[[int, int | None, Tensor, Tensor, list[RotaryCall]], None]


@contextmanager
def seam_calls(backbone: torch.nn.Module, on_call: SeamCall, record_rotary: bool) -> Iterator[None]:
    """Call ``on_call`` each time a seam module forms its q and k while the context is open."""
    found = seam_modules(backbone)
    stash = RotaryStash()
    rotary = rotary_functions(m for m, _ in found.values()) if record_rotary else []
    undo: list[Undo] = []

    def deliver_for(layer: int, seam: Seam) -> Deliver:
        def deliver(
            module: torch.nn.Module, query: Tensor, key: Tensor, pre: tuple[Tensor, Tensor] | None
        ) -> None:
            calls = stash.take()
            if pre is not None:  # the seam rotated them itself, with the model's own function
                calls = [RotaryCall(pre, (query, key))]
            on_call(layer, seam.window(module), query, key, calls)

        return deliver

    try:
        for layer, (module, seam) in found.items():
            undo.append(seam.install(module, deliver_for(layer, seam)))
        with module_globals([(mod, name, stash.recorder) for mod, name in rotary]):
            yield
    finally:
        for step in reversed(undo):
            step()


@contextmanager
def module_tap(
    backbone: torch.nn.Module,
    callback: AttentionCallback,
    *,
    pre_rope: bool = False,
    layers: set[int] | None = None,
    stop_after_layer: int | None = None,
) -> Iterator[None]:
    """Hand each seam's q and k to ``callback`` while the context is open (the registry tap's contract)."""
    watch = LayerWatch(set(seam_modules(backbone)) if layers is None else set(layers), "its module's seam")

    def on_call(layer: int, window: int | None, query: Tensor, key: Tensor, calls: list[RotaryCall]) -> None:
        if layer in watch.wanted:
            query_out, key_out = pre_rope_pair(query, key, calls) if pre_rope else (query, key)
            callback(layer, query_out, key_out, window)
            watch.seen.add(layer)
        if stop_after_layer is not None and layer >= stop_after_layer:
            watch.require(layer, backbone)
            raise StopForward

    with (
        seam_calls(backbone, on_call, record_rotary=pre_rope),
        watch.each_forward(backbone),
    ):
        yield


@contextmanager
def open_tap(
    backbone: torch.nn.Module,
    delegate: str,
    callback: AttentionCallback,
    *,
    pre_rope: bool = False,
    layers: set[int] | None = None,
    stop_after_layer: int | None = None,
    sizes: ChunkSizes | None = None,
    chunking: AbstractContextManager[None] | None = None,
) -> Iterator[None]:
    """The tap for this model, in this process's one capture session: its attention modules' seams when it
    computes attention outside the registry, else the registry tap delegating to ``delegate``. ``chunking``
    (:func:`.chunking.token_chunking`) is entered once the session is ours; with ``sizes`` the registry tap
    also attends per chunk of query rows."""
    options: dict[str, Any] = dict(pre_rope=pre_rope, layers=layers, stop_after_layer=stop_after_layer)
    with exclusive_session(), ExitStack() as stack:
        if chunking is not None:
            # Entered before the tap, so the tap's rotary recorder wraps the chunked rotary function and
            # still sees each layer's whole (q, k) in and out.
            stack.enter_context(chunking)
        if seam_modules(backbone):
            stack.enter_context(module_tap(backbone, callback, **options))
        else:
            stack.enter_context(attention_tap(backbone, delegate, callback, sizes=sizes, **options))
        yield


@torch.no_grad()
def seam_reference(
    backbone: torch.nn.Module, input_ids: Tensor
) -> dict[int, tuple[Tensor, Tensor, Tensor, Tensor, bool]]:
    """Per layer of one unpadded example: (post q, post k, pre q, pre k, rotated) from a plain forward,
    float32 on the host, heads first, batch dimension dropped."""
    layers: dict[int, tuple[Tensor, Tensor, Tensor, Tensor, bool]] = {}

    def on_call(layer: int, window: int | None, query: Tensor, key: Tensor, calls: list[RotaryCall]) -> None:
        q_pre, k_pre = pre_rope_pair(query, key, calls)
        q_post, k_post, q_pre, k_pre = (t[0].float().cpu().clone() for t in (query, key, q_pre, k_pre))
        layers[layer] = (q_post, k_post, q_pre, k_pre, bool(calls))

    with seam_calls(backbone, on_call, record_rotary=True):
        backbone(input_ids=input_ids, use_cache=False)
    return layers
