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
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.errors import UserError
from .compat import module_globals, rotary_functions
from .tap import (
    AttentionCallback,
    RotaryCall,
    RotaryStash,
    StopForward,
    attention_modules,
    attention_tap,
    exclusive_session,
    pre_rope_pair,
)

# (attention module, query (B, Hq, S, D), key (B, Hkv, S, D)): what a seam hands over.
Deliver = Callable[[torch.nn.Module, Tensor, Tensor], None]
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
            deliver(module, query, key.transpose(-1, -2) if key_last else key)
            return original(*args, **kwargs)

        return _wrap_method(module, name, wrapper)

    return install


def method_result(name: str) -> Callable[[torch.nn.Module, Deliver], Undo]:
    """The module's method ``name`` returns ``(query, key, value)``, heads first (BLOOM's ``_reshape``)."""

    def install(module: torch.nn.Module, deliver: Deliver) -> Undo:
        original = getattr(module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            deliver(module, out[0], out[1])
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
                    deliver(module, query, key)

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
            deliver(module, _heads_first(query, head_dim), _heads_first(key, head_dim))

        handle = module.get_submodule(name).register_forward_hook(on_output)
        return handle.remove

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
                if seam is not None and path == seam.path:
                    found[index] = (module, seam)
    return found


def tapped_layers(backbone: torch.nn.Module) -> list[int]:
    """The layers whose q and k the tap for this model reaches: its seams', or the registry modules'."""
    seams = seam_modules(backbone)
    if seams:
        return sorted(seams)
    return sorted(int(m.layer_idx) for m in attention_modules(backbone))  # type: ignore[arg-type]


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
        def deliver(module: torch.nn.Module, query: Tensor, key: Tensor) -> None:
            on_call(layer, seam.window(module), query, key, stash.take())

        return deliver

    try:
        for layer, (module, seam) in found.items():
            undo.append(seam.install(module, deliver_for(layer, seam)))
        with module_globals([(mod, name, stash.recorder) for mod, name in rotary]):
            yield
    finally:
        for step in reversed(undo):
            step()


class SeamMissedError(UserError):
    """A requested layer's attention never reached its seam (a backend that computes it elsewhere)."""


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
    wanted = set(seam_modules(backbone)) if layers is None else set(layers)
    seen: set[int] = set()

    def require_seen(upto: int) -> None:
        missed = sorted(layer for layer in wanted - seen if layer <= upto)
        if missed:
            backend = getattr(getattr(backbone, "config", None), "_attn_implementation", None)
            raise SeamMissedError(
                f"layers {missed}: their attention never formed q and k where qk_sniffer taps this family "
                f"(attn_implementation={backend!r}); capture it with model.attn_implementation=eager"
            )

    def on_call(layer: int, window: int | None, query: Tensor, key: Tensor, calls: list[RotaryCall]) -> None:
        if layer in wanted:
            query_out, key_out = pre_rope_pair(query, key, calls) if pre_rope else (query, key)
            callback(layer, query_out, key_out, window)
            seen.add(layer)
        if stop_after_layer is not None and layer >= stop_after_layer:
            require_seen(layer)
            raise StopForward

    def start(_module: torch.nn.Module, _args: Any) -> None:
        seen.clear()

    def finish(_module: torch.nn.Module, _args: Any, _output: Any) -> None:
        require_seen(max(wanted, default=-1))

    with exclusive_session(), seam_calls(backbone, on_call, record_rotary=pre_rope):
        handles = [backbone.register_forward_pre_hook(start), backbone.register_forward_hook(finish)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def open_tap(
    backbone: torch.nn.Module,
    delegate: str,
    callback: AttentionCallback,
    *,
    pre_rope: bool = False,
    layers: set[int] | None = None,
    stop_after_layer: int | None = None,
) -> AbstractContextManager[None]:
    """The tap for this model: its attention modules' seams when it computes attention outside the registry,
    else the registry tap delegating to ``delegate``."""
    options: dict[str, Any] = dict(pre_rope=pre_rope, layers=layers, stop_after_layer=stop_after_layer)
    if seam_modules(backbone):
        return module_tap(backbone, callback, **options)
    return attention_tap(backbone, delegate, callback, **options)


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
