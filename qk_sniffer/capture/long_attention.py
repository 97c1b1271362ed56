"""Attention that fits at long length: masks built per query chunk, the real backend called per chunk.

sdpa keeps full-attention layers linear in length by itself (no mask, its causal kernels). Two cases build
a (length x length) tensor: a sliding-window layer under sdpa asks for a full boolean mask (16 GiB at 128k
tokens), and the eager function (the only one Gemma 2's softcapping and GPT-OSS's sinks allow) computes a
full score matrix. Rows of attention are independent, so both are run per chunk of query rows:

- the mask function registered for the tap's attention name returns a :class:`RowMask` instead of a mask
  whenever the real one would be materialised: its arguments, so that the rows of one chunk, over the keys
  those rows can see, are built by the same function with shifted offsets;
- the tap's attention function (:func:`attend`) then calls the real backend once per chunk with the query
  rows, the keys from the first one the chunk's first row can see (the window) up to the chunk's last row
  (causal), and that chunk's mask rows, and writes each chunk's output into one preallocated tensor.

Only masks that never reach past the query position are deferred (the causal one, alone or AND-ed with a
window, a chunk rule or padding: :func:`causal_bounded`); an OR-ed pattern (image tokens attending both ways)
is built whole as before. The keys a chunk drops must be masked for its first row: checked on that row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..core.errors import UserError
from .chunking import ChunkSizes

# Qualified names of transformers' mask-function closures (masking_utils). An AND with the causal rule
# keeps the causal bound; the window, chunk and padding rules only remove keys.
_CAUSAL = "causal_mask_function"
_AND = "and_masks.<locals>.and_mask"


class RowMaskError(UserError):
    """A deferred mask allowed a key the chunk dropped: this family's mask is not a causal window."""


def _components(fn: Callable[..., Any]) -> list[Callable[..., Any]]:
    """The mask functions an ``and_masks`` closure combines."""
    cells = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ())]
    return [f for cell in cells for f in (cell if isinstance(cell, tuple) else (cell,)) if callable(f)]


def causal_bounded(fn: Callable[..., Any]) -> bool:
    """Whether mask function ``fn`` allows no key after the query: the causal rule, or an AND that has it."""
    name = getattr(fn, "__qualname__", "")
    if name == _CAUSAL:
        return True
    return name == _AND and any(causal_bounded(f) for f in _components(fn))


class RowMask:
    """A mask transformers asked for and that was not built: the mask function and its arguments."""

    def __init__(self, build: Callable[..., Any], arguments: dict[str, Any]) -> None:
        self.build = build
        self.arguments = arguments
        self.window: int | None = arguments.get("local_size")

    def rows(self, start: int, stop: int, key_start: int, key_stop: int) -> Any:
        """The mask of query rows [start, stop) over keys [key_start, key_stop), as the backend takes it."""
        return self.build(
            **{
                **self.arguments,
                "q_length": stop - start,
                "q_offset": start,
                "kv_length": key_stop - key_start,
                "kv_offset": key_start,
                "allow_is_causal_skip": False,
            }
        )

    def first_key(self, row: int) -> int:
        """A key index before which ``row`` and every later row see nothing (their window's start)."""
        return 0 if not self.window else max(0, row - int(self.window))


def deferring(build: Callable[..., Any], source: str, sizes: ChunkSizes) -> Callable[..., Any]:
    """The mask function to register for the tap's name: ``build`` (the delegate's own, from ``source``)
    while ``sizes.queries`` is None or when it builds no full mask anyway, else a :class:`RowMask`."""

    if source not in ("sdpa", "eager"):
        return build  # flash and flex attention build no (length x length) tensor

    def mask_or_rows(**arguments: Any) -> Any:
        if sizes.queries is None or not _deferrable(arguments) or _skipped_by_sdpa(source, arguments):
            return build(**arguments)
        return RowMask(build, arguments)

    return mask_or_rows


def _deferrable(arguments: dict[str, Any]) -> bool:
    """A plain self-attention mask over the whole sequence, no cache, no padding, causally bounded."""
    q_length, kv_length = arguments.get("q_length"), arguments.get("kv_length")
    return (
        isinstance(q_length, int)
        and q_length == kv_length
        and arguments.get("q_offset", 0) == 0
        and arguments.get("kv_offset", 0) == 0
        and arguments.get("attention_mask") is None
        and causal_bounded(arguments.get("mask_function"))  # type: ignore[arg-type]
    )


def _skipped_by_sdpa(source: str, arguments: dict[str, Any]) -> bool:
    """sdpa's own mask function builds nothing (None: its causal kernel) for a plain causal mask whose window,
    if any, is longer than the keys; then the real function is called and the kernel stays linear."""
    window = arguments.get("local_size")
    return (
        source == "sdpa"
        and arguments.get("allow_is_causal_skip", True)
        and (window is None or arguments["kv_length"] < window)
    )


def attend(
    backend: Callable[..., Any],
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    rows_per_call: int | None,
) -> Any:
    """``backend(module, query, key, *args, **kwargs)``; per chunk of query rows when the mask is deferred."""
    rest_args, rest_kwargs, mask = _split_mask(args, kwargs)
    if not isinstance(mask, RowMask):
        return backend(module, query, key, *args, **kwargs)
    length = query.shape[2]
    chunk = rows_per_call or length
    value, rest = rest_args[0], rest_args[1:]
    out: Tensor | None = None
    for start in range(0, length, chunk):
        stop = min(length, start + chunk)
        first = mask.first_key(start)
        _check_dropped_keys(mask, start, first, module)
        part, _ = backend(
            module,
            query[:, :, start:stop],
            key[:, :, first:stop],
            value[:, :, first:stop],
            mask.rows(start, stop, first, stop),
            *rest,
            **rest_kwargs,
        )
        if out is None:
            out = part.new_empty((part.shape[0], length, *part.shape[2:]))
        out[:, start:stop] = part
    return out, None  # attention weights are never kept by a capture


def _split_mask(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any], Any]:
    """(value, *rest) and the mask, from the backend call's ``value, attention_mask, ...`` arguments."""
    if "attention_mask" in kwargs:
        kwargs = dict(kwargs)
        return args, kwargs, kwargs.pop("attention_mask")
    if len(args) >= 2:
        return (args[0], *args[2:]), kwargs, args[1]
    return args, kwargs, None


def _check_dropped_keys(mask: RowMask, row: int, first: int, module: torch.nn.Module) -> None:
    if first == 0:
        return
    rows = mask.rows(row, row + 1, 0, first)
    allowed = rows if rows.dtype == torch.bool else rows == 0
    if bool(allowed.any()):
        raise RowMaskError(
            f"layer {getattr(module, 'layer_idx', '?')}: its mask lets query {row} see keys before "
            f"{first}, outside its window of {mask.window}; attention cannot be chunked for this family, set "
            "inference.token_chunk=null"
        )
