"""Per-batch capture: which rows to keep (decided on the host), gathering them on the device inside the
attention callback, and one device-to-host copy per batch.

The hot path is kept free of host/device round trips:
- a layer's rows are sampled on the host when its attention is reached, and every index its gathers need
  (batch rows, positions, heads, for q and k) is packed into one array and uploaded in one copy (pinned and
  asynchronous on CUDA) on the device its Q/K live on; nothing waits for the device;
- the gather for a (layer, kind) is one indexing op, ``x[b_idx, heads, s_idx]`` -> (n_heads, K, head_dim), and
  a (layer, kind) that keeps no row this batch launches nothing at all;
- after the forward, everything gathered on a device is concatenated and copied to pinned host memory with
  one asynchronous copy, followed by an event; only :meth:`PendingCopy.result` waits on that event, so the
  caller can queue the next batch's forward first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from ..core.errors import UserError
from ..inputs.data import Batch
from .heads import HeadSelection
from .samplers import KINDS, Sampler, sample_positions


class KeysNotTokens(UserError):
    """An attention call's keys are not one per token (DeepSeek V4's compressed entries)."""

    def __init__(self, layer: int, keys: int, tokens: int) -> None:
        super().__init__(
            f"layer {layer}: its attention sees {keys} keys for {tokens} tokens; its keys are not one per "
            "token (compressed or pooled entries), so a key cannot be named by its position"
        )


@dataclass
class RowKeys:
    """The rows kept for one (layer, kind) in one batch, in (example, position) order."""

    batch_rows: np.ndarray  # int64, index into the batch
    positions: np.ndarray  # int64
    buckets: np.ndarray  # int32
    example_ids: np.ndarray  # int64
    token_ids: np.ndarray  # int64
    b_idx: torch.Tensor | None = None  # on the model's device (a view into the batch's one index upload)
    s_idx: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.positions)


@dataclass
class Block:
    """Captured vectors of one (layer, kind) in one batch: a dense (n_heads, K, head_dim) float32 array."""

    layer: int
    kind: str
    heads: tuple[int, ...]
    vectors: np.ndarray
    plan: RowKeys
    sliding_window: int | None


def plan_rows(
    batch: Batch, sampler: Sampler, layer: int, kind: str, token_matrix: np.ndarray | None = None
) -> RowKeys:
    """Sample the kept positions of every example of ``batch`` for one (layer, kind).

    ``token_matrix`` is ``batch.input_ids`` as a host array; pass it when planning several (layer, kind) of
    one batch so it is converted once (at 128k tokens the conversion costs more than the sampling).
    """
    tokens = batch.input_ids.cpu().numpy() if token_matrix is None else token_matrix
    rows, positions, buckets, ids = [], [], [], []
    for row, example in enumerate(batch.examples):
        pos, bkt = sample_positions(sampler, example.example_id, layer, kind, example.length)
        rows.append(np.full(len(pos), row, dtype=np.int64))
        positions.append(pos)
        buckets.append(bkt)
        ids.append(np.full(len(pos), example.example_id, dtype=np.int64))
    batch_rows, kept = np.concatenate(rows), np.concatenate(positions)
    token_ids = tokens[batch_rows, kept].astype(np.int64, copy=False)
    return RowKeys(batch_rows, kept, np.concatenate(buckets), np.concatenate(ids), token_ids)


class _Slot(NamedTuple):
    """Where one block's vectors sit in a batch's host copy. ``chunk`` -1: the block kept no row."""

    layer: int
    kind: str
    heads: tuple[int, ...]
    plan: RowKeys
    sliding_window: int | None
    head_dim: int
    chunk: int
    offset: int


@dataclass
class PendingCopy:
    """A batch's captured vectors on their way to the host (one flat buffer per device)."""

    host: list[torch.Tensor] = field(default_factory=list)
    events: list[torch.cuda.Event] = field(default_factory=list)
    slots: list[_Slot] = field(default_factory=list)

    def result(self) -> list[Block]:
        """Wait for the copy, then cut the flat buffers into blocks (fresh float32 arrays, so the pinned
        buffers go back to the allocator instead of living as long as the rows they held)."""
        for event in self.events:
            event.synchronize()
        flat = [h.to(torch.float32, copy=True).numpy() for h in self.host]
        out = []
        for slot in self.slots:
            n_heads, n_rows = len(slot.heads), len(slot.plan)
            if slot.chunk < 0:
                vectors = np.empty((n_heads, 0, slot.head_dim), dtype=np.float32)
            else:
                size = n_heads * n_rows * slot.head_dim
                vectors = flat[slot.chunk][slot.offset : slot.offset + size].reshape(
                    n_heads, n_rows, slot.head_dim
                )
            out.append(Block(slot.layer, slot.kind, slot.heads, vectors, slot.plan, slot.sliding_window))
        self.host.clear()
        return out


class BatchCapture:
    """Collects the gathered Q/K of one batch from the attention callback.

    A layer's rows are planned when its callback fires, not before the forward: on an accelerator the host
    has queued the earlier layers' kernels by then and plans while the device computes them, so sampling
    costs no device time (on a CPU it costs the same either way).
    """

    def __init__(
        self, selection: HeadSelection, sampler: Sampler, batch: Batch, device: torch.device
    ) -> None:
        self.selection = selection
        self.sampler = sampler
        self.batch = batch
        self.device = device
        self.plans: dict[tuple[int, str], RowKeys] = {}
        self.head_index: dict[tuple[int, str], torch.Tensor] = {}
        self.windows: dict[int, int | None] = {}
        self.head_dims: dict[tuple[int, str], int] = {}
        self._pieces: list[tuple[int, str, torch.Tensor]] = []
        self._tokens = batch.input_ids.cpu().numpy()
        # Host seconds inside the forward's attention calls: planning rows (plan_seconds), and the whole
        # capture hook, planning plus launching the gathers (hook_seconds).
        self.plan_seconds = 0.0
        self.hook_seconds = 0.0

    def plan_layer(self, layer: int, device: torch.device) -> None:
        """Sample this layer's rows for every kind it captures and upload their indices in one copy."""
        start = time.perf_counter()
        kinds = [kind for kind in KINDS if self.selection.heads(layer, kind)]
        host_parts = []
        for kind in kinds:
            plan = plan_rows(self.batch, self.sampler, layer, kind, self._tokens)
            self.plans[(layer, kind)] = plan
            host_parts += [
                plan.batch_rows,
                plan.positions,
                np.asarray(self.selection.heads(layer, kind), np.int64),
            ]
        packed = _upload(np.concatenate(host_parts), device)
        offset = 0
        for kind in kinds:
            plan, n_heads = self.plans[(layer, kind)], len(self.selection.heads(layer, kind))
            n_rows = len(plan)
            plan.b_idx = packed[offset : offset + n_rows]
            plan.s_idx = packed[offset + n_rows : offset + 2 * n_rows]
            self.head_index[(layer, kind)] = packed[offset + 2 * n_rows : offset + 2 * n_rows + n_heads]
            offset += 2 * n_rows + n_heads
        self.plan_seconds += time.perf_counter() - start

    def __call__(self, layer: int, query: torch.Tensor, key: torch.Tensor, window: int | None) -> None:
        if not (self.selection.heads(layer, "q") or self.selection.heads(layer, "k")):
            return
        start = time.perf_counter()
        self._gather(layer, query, key, window)
        self.hook_seconds += time.perf_counter() - start

    def _gather(self, layer: int, query: torch.Tensor, key: torch.Tensor, window: int | None) -> None:
        if layer in self.windows:  # a second call would write its rows a second time, under the same names
            raise UserError(f"layer {layer} called attention twice in one forward; its rows cannot be named")
        if key.shape[2] != query.shape[2]:  # keys by token position would index other entries
            raise KeysNotTokens(layer, key.shape[2], query.shape[2])
        self.windows[layer] = window
        self.plan_layer(layer, query.device)
        for kind, states in (("q", query), ("k", key)):
            plan = self.plans.get((layer, kind))
            if plan is None:
                continue
            self.head_dims[(layer, kind)] = states.shape[-1]
            if len(plan) == 0:  # nothing kept: no device work at all
                continue
            heads, b_idx, s_idx = self.head_index[(layer, kind)], plan.b_idx, plan.s_idx
            assert b_idx is not None and s_idx is not None
            # (n_heads, K, head_dim) in one gather; detach so nothing holds the autograd graph.
            gathered = states.detach()[b_idx[None, :], heads[:, None], s_idx[None, :]]
            self._pieces.append((layer, kind, gathered))

    def start_copy(self) -> PendingCopy:
        """Start the (single, asynchronous) device-to-host copy of everything this batch gathered."""
        by_device: dict[torch.device, list[tuple[int, str, torch.Tensor]]] = {}
        for piece in self._pieces:
            by_device.setdefault(piece[2].device, []).append(piece)
        pending = PendingCopy()
        placed: dict[tuple[int, str], tuple[int, int]] = {}
        for chunk, (device, pieces) in enumerate(by_device.items()):
            flat = torch.cat([p[2].reshape(-1) for p in pieces])
            if device.type == "cuda":
                host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
                host.copy_(flat, non_blocking=True)
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream(device))
                pending.events.append(event)
            else:
                host = flat if device.type == "cpu" else flat.to("cpu")
            pending.host.append(host)
            offset = 0
            for layer, kind, tensor in pieces:
                placed[(layer, kind)] = (chunk, offset)
                offset += tensor.numel()
        # Blocks in selection order, including those that kept no row this batch (the writer skips them).
        for (layer, kind), plan in self.plans.items():
            if (layer, kind) not in self.head_dims:
                continue  # the forward never reached this layer (it failed before); nothing to report
            chunk, offset = placed.get((layer, kind), (-1, 0))
            pending.slots.append(
                _Slot(
                    layer,
                    kind,
                    self.selection.heads(layer, kind),
                    plan,
                    self.windows.get(layer),
                    self.head_dims[(layer, kind)],
                    chunk,
                    offset,
                )
            )
        self._pieces.clear()
        return pending


def _upload(array: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
