"""The pre-RoPE vectors of an attention call, rebuilt from the rotary calls that led to it.

The tap wraps the modeling module's rotary function (``apply_rotary_pos_emb`` and kin) and stashes what each
call got and returned (:class:`RotaryStash`). At the attention call those records say which part of the
query and key was rotated and what it was before: the whole head for most families, a slice for multi-head
latent attention (DeepSeek), one tensor per call for families that rotate q and k apart (GPT-J, Gemma 4),
heads repeated after the rotation (JetMoE), keys shared from an earlier layer (Gemma 3n,
:class:`EarlierKeys`). Where the slice sits is measured bit for bit, never assumed; what cannot be told apart
is a :class:`RotarySliceError` ("capture post-RoPE only"), never a guess.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.errors import UserError


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
class RotaryStash:
    """The rotary calls since the last attention call; the next attention call consumes them."""

    calls: list[RotaryCall] = field(default_factory=list)

    def take(self) -> list[RotaryCall]:
        taken, self.calls = self.calls, []
        return taken

    def recorder(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """A wrapper of the rotary function ``original`` that stashes each call's vectors."""

        def rotary_recorder(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            call = rotary_call(args, out)
            if call is not None:
                self.calls.append(call)
            return out

        return rotary_recorder


class RotarySliceError(UserError):
    """The rotary function's output was not found in the vectors handed to attention."""


class EarlierKeys:
    """The pre-RoPE keys of the keys already handed to attention, for as long as those keys live: a layer that
    attends to an earlier layer's keys (Gemma 3n's KV sharing) rotates only its query, and its keys' pre-RoPE
    vectors are the earlier layer's. Entries go when their key is freed, so nothing outlives its layer."""

    def __init__(self) -> None:
        self._pre: dict[int, Tensor] = {}

    def remember(self, post: Tensor, pre: Tensor) -> None:
        if pre is post or id(post) in self._pre:
            return  # a key without rotation is its own pre-RoPE key (holding it would keep it alive)
        self._pre[id(post)] = pre
        weakref.finalize(post, self._pre.pop, id(post), None)

    def get(self, post: Tensor) -> Tensor | None:
        return self._pre.get(id(post))


def pre_rope_query(query: Tensor, calls: list[RotaryCall]) -> Tensor:
    """The pre-RoPE query of a call whose key is an earlier layer's (see :class:`EarlierKeys`)."""
    singles = [c for c in calls if len(c.inputs) == 1]
    pairs = [c for c in calls if len(c.inputs) == 2]
    if singles:
        return _matched_single(query, singles)
    if pairs:
        (q_in, _), (q_out, _) = pairs[-1].inputs, pairs[-1].outputs
        return whole_pre_rope(query, q_in, q_out)
    return query


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
    if (
        rot_out is not None
        and rot_in.dim() == 4 == post.dim()
        and rot_in.shape[1] != post.shape[1]
        and post.shape[1] % rot_in.shape[1] == 0
        and rot_out.shape[-1] == post.shape[-1]
    ):
        # Heads repeated after the rotation (JetMoE repeats its keys once per expert slot): the same repeat of
        # the rotary input, where the repeat of its output is ``post`` bit for bit.
        times = (1, post.shape[1] // rot_in.shape[1], 1, 1)
        if torch.equal(rot_out.repeat(times), post):
            return rot_in.repeat(times)
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
