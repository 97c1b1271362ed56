"""Token-wise work in chunks: the parts of each decoder layer that treat every token on its own (norms, the
MLP or MoE block, the rotary function) run over slices of the sequence, around transformers' own modules.

Why: a capture needs each layer's attention inputs, not its activations. At long length the activations of
the token-wise parts dominate the peak: a Qwen3-8B MLP holds three (tokens x 12288) tensors, about 10 GB at
131,072 tokens, and an RMSNorm makes float32 copies of its whole input. Run over slices of ``token_chunk``
tokens, each writes into one preallocated output, so the transients are a chunk's, not the sequence's.
Attention itself still sees the whole sequence (:mod:`.long_attention` keeps it linear in length).

What is wrapped, per decoder layer: its feed-forward child (``mlp``, ``feed_forward``, ...), every norm that
is a direct child of the layer or of its attention module (``input_layernorm``, ``q_norm``...), the stack's
final norm, and the modeling module's ``apply_rotary_pos_emb`` (the canonical ``(q, k, cos, sin)`` form
only). Projections are left whole: a linear layer keeps no transient beyond its output, which attention
needs whole anyway. Only calls that look token-wise are sliced (one tensor argument, or the rotary form);
anything else runs as it would without chunking, so an unexpected module costs memory, never a wrong value.

Lifetimes: :func:`token_chunking` replaces the forwards while its ``with`` block is open and puts back
exactly what was there in ``finally``. The chunk size is read from a :class:`ChunkSizes` at call time, so
a session can pick it per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.errors import UserError

# Decoder-layer children that hold the feed-forward block, across families (Llama's ``mlp``, LFM2's and
# Jamba's ``feed_forward``); an MoE block under these names is token-wise too (routing is per token).
FEED_FORWARD_NAMES = ("mlp", "feed_forward", "block_sparse_moe", "ffn", "moe")
ROTARY_FUNCTION = "apply_rotary_pos_emb"


@dataclass
class ChunkSizes:
    """What the wrapped modules read at call time. ``tokens``: slice length for token-wise work (None: one
    pass); ``queries``: query rows per attention call where a mask would be built (None: whole)."""

    tokens: int | None = None
    queries: int | None = None


class ChunkingError(UserError):
    """A wrapped module returned something that cannot be put back together from slices."""


def is_norm(module: torch.nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, torch.nn.LayerNorm) or name.endswith(("RMSNorm", "LayerNorm", "Norm"))


def _seq_dim(x: Tensor) -> int:
    """The sequence dim of a token-wise input: (B, S, ...) -> 1; flattened (T, C) -> 0."""
    return 1 if x.dim() >= 3 else 0


def run_in_slices(fn: Callable[[Tensor], Any], x: Tensor, chunk: int, owner: str) -> Any:
    """``fn(x)`` computed on slices of ``chunk`` tokens along x's sequence dim, assembled in one output.

    ``fn`` must be token-wise: it returns a tensor, or a tuple of tensors (or None), each with the slice's
    length on that dim, or flattened to the slice's batch x length rows on dim 0 (MoE routers' logits, in
    (batch, token) order); anything else is refused by name.
    """
    dim = _seq_dim(x)
    length, batch = x.shape[dim], (x.shape[0] if dim == 1 else 1)
    single = True
    outs: list[Tensor | None] = []
    flat: list[bool] = []
    for start in range(0, length, chunk):
        n = min(chunk, length - start)
        # Contiguous, as the whole input was: modules view their input flat (MoE blocks: view(-1, hidden)).
        part = fn(x.narrow(dim, start, n).contiguous())
        single = isinstance(part, Tensor)
        parts = [part] if single else _items(part, owner)
        if not outs:
            flat = [p is not None and _is_flat(p, dim, batch, n, owner) for p in parts]
            outs = [_empty(p, f, dim, batch, length) for p, f in zip(parts, flat, strict=True)]
        for out, p, f in zip(outs, parts, flat, strict=True):
            if out is None or p is None:
                continue
            if f:
                out[:, start : start + n] = p.view(batch, n, *p.shape[1:])
            else:
                out.narrow(dim, start, n).copy_(p)
    if single:
        return outs[0]
    return tuple(
        o.reshape(batch * length, *o.shape[2:]) if (f and o is not None) else o
        for o, f in zip(outs, flat, strict=True)
    )


def _items(part: Any, owner: str) -> list[Tensor | None]:
    if isinstance(part, tuple) and all(p is None or isinstance(p, Tensor) for p in part):
        return list(part)
    raise ChunkingError(
        f"inference.token_chunk: {owner} returned a {type(part).__name__}, which cannot be assembled from "
        "slices; set inference.token_chunk=null for this model"
    )


def _is_flat(p: Tensor, dim: int, batch: int, n: int, owner: str) -> bool:
    """False: (B, n, ...) per token on ``dim``; True: (B*n, ...) rows. Anything else is refused."""
    if p.dim() > dim and p.shape[dim] == n and (dim == 0 or p.shape[0] == batch):
        return False
    if dim == 1 and p.dim() >= 1 and p.shape[0] == batch * n:
        return True
    raise ChunkingError(
        f"inference.token_chunk: {owner} returned a {tuple(p.shape)} tensor for a {n}-token slice, so it "
        "is not token-wise here; set inference.token_chunk=null for this model"
    )


def _empty(p: Tensor | None, flat: bool, dim: int, batch: int, length: int) -> Tensor | None:
    if p is None:
        return None
    if flat:
        return p.new_empty((batch, length, *p.shape[1:]))
    shape = list(p.shape)
    shape[dim] = length
    return p.new_empty(shape)


@contextmanager
def _forward_replaced(module: torch.nn.Module, replacement: Callable[..., Any]) -> Iterator[None]:
    """``module.forward`` is ``replacement`` (an instance attribute) until the context closes; then what
    was there before, an instance attribute another library set (accelerate's hooks) or the class's."""
    had_own = "forward" in module.__dict__
    saved = module.__dict__.get("forward")
    module.forward = replacement  # type: ignore[method-assign]
    try:
        yield
    finally:
        if had_own:
            module.__dict__["forward"] = saved
        else:
            del module.forward


def _token_wise(original: Callable[..., Any], sizes: ChunkSizes, owner: str) -> Callable[..., Any]:
    def chunked_forward(*args: Any, **kwargs: Any) -> Any:
        chunk = sizes.tokens
        if chunk is None or len(args) != 1 or kwargs or not isinstance(args[0], Tensor):
            return original(*args, **kwargs)
        x = args[0]
        if x.dim() < 2 or x.shape[_seq_dim(x)] <= chunk:
            return original(x)
        return run_in_slices(original, x, chunk, owner)

    return chunked_forward


def _chunked_rotary(original: Callable[..., Any], sizes: ChunkSizes) -> Callable[..., Any]:
    """``apply_rotary_pos_emb(q, k, cos, sin)`` per slice of positions: q, k (B, H, S, D) and cos, sin
    (B, S, D). Any other call form runs whole."""

    def rotary_in_slices(*args: Any, **kwargs: Any) -> Any:
        chunk = sizes.tokens
        if chunk is None or len(args) != 4 or set(kwargs) - {"unsqueeze_dim"}:
            return original(*args, **kwargs)
        if kwargs.get("unsqueeze_dim", 1) != 1:
            return original(*args, **kwargs)
        q, k, cos, sin = args
        tensors = all(isinstance(t, Tensor) for t in args)
        if not tensors or q.dim() != 4 or k.dim() != 4 or cos.dim() != 3 or sin.dim() != 3:
            return original(*args, **kwargs)
        length = q.shape[2]
        if length <= chunk or k.shape[2] != length or cos.shape[1] != length or sin.shape[1] != length:
            return original(*args, **kwargs)
        outs: tuple[Tensor, Tensor] | None = None
        for start in range(0, length, chunk):
            n = min(chunk, length - start)
            part = original(
                q.narrow(2, start, n), k.narrow(2, start, n), cos.narrow(1, start, n), sin.narrow(1, start, n)
            )
            if outs is None:
                if not (
                    isinstance(part, tuple)
                    and len(part) == 2
                    and part[0].shape == q.narrow(2, start, n).shape
                    and part[1].shape == k.narrow(2, start, n).shape
                ):
                    return original(*args, **kwargs)  # not the canonical form after all: whole
                outs = (part[0].new_empty(q.shape), part[1].new_empty(k.shape))
            outs[0].narrow(2, start, n).copy_(part[0])
            outs[1].narrow(2, start, n).copy_(part[1])
        return outs

    return rotary_in_slices


def token_wise_modules(
    backbone: torch.nn.Module, layers: list[torch.nn.Module]
) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of everything :func:`token_chunking` slices: per decoder layer (``layers``, the
    backbone's) its feed-forward block and the norms directly under it or its attention module; then the
    stack's own norms."""
    found: list[tuple[str, torch.nn.Module]] = []
    for i, layer in enumerate(layers):
        for name, child in layer.named_children():
            if name in FEED_FORWARD_NAMES or is_norm(child):
                found.append((f"layers.{i}.{name}", child))
            elif type(child).__name__.endswith("Attention"):
                found += [(f"layers.{i}.{name}.{n}", c) for n, c in child.named_children() if is_norm(c)]
    found += [(name, child) for name, child in backbone.named_children() if is_norm(child)]
    return found


@contextmanager
def token_chunking(
    backbone: torch.nn.Module, layers: list[torch.nn.Module], sizes: ChunkSizes
) -> Iterator[None]:
    """Slice the token-wise modules of ``backbone`` (decoder ``layers``) by ``sizes.tokens`` while the
    context is open."""
    # Here, not at the top: compat loads transformers' modeling code, which a dry run (it reads ChunkSizes
    # and the memory model only) never needs.
    from .compat import modeling_module, module_globals

    modules = token_wise_modules(backbone, layers)
    attention = [c for layer in layers for c in layer.children() if type(c).__name__.endswith("Attention")]
    rotary_owners = {modeling_module(module) for module in attention}

    def rotary_wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        return _chunked_rotary(original, sizes)

    rotary = [
        (mod, ROTARY_FUNCTION, rotary_wrap)
        for mod in rotary_owners
        if callable(getattr(mod, ROTARY_FUNCTION, None))
    ]
    with ExitStack() as stack:
        for name, module in modules:
            owner = f"{type(module).__name__} ({name})"
            stack.enter_context(_forward_replaced(module, _token_wise(module.forward, sizes, owner)))
        stack.enter_context(module_globals(rotary))
        yield
