"""Per-batch capture: which rows to keep (decided on the host before the forward), gathering them on the
device inside the attention callback, and one device-to-host copy per batch.

The gather for a (layer, kind) is one indexing op, ``x[b_idx, heads, s_idx]`` -> (n_heads, K, head_dim), whose
indices were computed and uploaded before the forward, so nothing in the forward waits for the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .data import Batch
from .heads import HeadSelection
from .samplers import KINDS, Sampler, sample_positions


@dataclass
class RowPlan:
    """The rows kept for one (layer, kind) in one batch, in (example, position) order."""

    batch_rows: np.ndarray  # int64, index into the batch
    positions: np.ndarray  # int64
    buckets: np.ndarray  # int32
    example_ids: np.ndarray  # int64
    token_ids: np.ndarray  # int64
    b_idx: torch.Tensor | None = None  # on the model's device
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
    plan: RowPlan
    sliding_window: int | None


def plan_rows(batch: Batch, sampler: Sampler, layer: int, kind: str) -> RowPlan:
    rows, positions, buckets, ids, tokens = [], [], [], [], []
    for row, example in enumerate(batch.examples):
        pos, bkt = sample_positions(sampler, example.example_id, layer, kind, example.length)
        rows.append(np.full(len(pos), row, dtype=np.int64))
        positions.append(pos)
        buckets.append(bkt)
        ids.append(np.full(len(pos), example.example_id, dtype=np.int64))
        tokens.append(np.asarray(example.input_ids, dtype=np.int64)[pos])
    return RowPlan(
        np.concatenate(rows), np.concatenate(positions), np.concatenate(buckets),
        np.concatenate(ids), np.concatenate(tokens),
    )


@dataclass
class PendingCopy:
    """A batch's captured vectors on their way to the host."""

    host: list[torch.Tensor] = field(default_factory=list)
    events: list[torch.cuda.Event] = field(default_factory=list)
    # (layer, kind, heads, plan, sliding_window, head_dim, chunk, offset)
    blocks: list[tuple[int, str, tuple[int, ...], RowPlan, int | None, int, int, int]] = field(default_factory=list)

    def result(self) -> list[Block]:
        for event in self.events:
            event.synchronize()
        flat = [h.float() if h.dtype != torch.float32 else h for h in self.host]
        out = []
        for layer, kind, heads, plan, window, head_dim, chunk, offset in self.blocks:
            n = len(heads) * len(plan) * head_dim
            vectors = flat[chunk][offset:offset + n].numpy().reshape(len(heads), len(plan), head_dim)
            out.append(Block(layer, kind, heads, vectors, plan, window))
        return out


class BatchCapture:
    """Collects the gathered Q/K of one batch from the attention callback."""

    def __init__(self, selection: HeadSelection, sampler: Sampler, batch: Batch, device: torch.device) -> None:
        self.selection = selection
        self.device = device
        self.plans: dict[tuple[int, str], RowPlan] = {}
        self.head_index: dict[tuple[int, str], torch.Tensor] = {}
        self.windows: dict[int, int | None] = {}
        self._pieces: list[tuple[int, str, torch.Tensor]] = []
        for layer in selection.layers:
            for kind in KINDS:
                heads = selection.heads(layer, kind)
                if not heads:
                    continue
                plan = plan_rows(batch, sampler, layer, kind)
                plan.b_idx = _to_device(plan.batch_rows, device)
                plan.s_idx = _to_device(plan.positions, device)
                self.plans[(layer, kind)] = plan
                self.head_index[(layer, kind)] = _to_device(np.asarray(heads, dtype=np.int64), device)

    def __call__(self, layer: int, query: torch.Tensor, key: torch.Tensor, window: int | None) -> None:
        self.windows[layer] = window
        for kind, states in (("q", query), ("k", key)):
            plan = self.plans.get((layer, kind))
            if plan is None:
                continue
            heads = self.head_index[(layer, kind)]
            if states.device != heads.device:  # device_map=auto spreads layers over devices
                heads, b_idx, s_idx = heads.to(states.device), plan.b_idx.to(states.device), plan.s_idx.to(states.device)  # type: ignore[union-attr]
            else:
                b_idx, s_idx = plan.b_idx, plan.s_idx
            # (n_heads, K, head_dim) in one gather; detach so nothing holds the autograd graph.
            gathered = states.detach()[b_idx[None, :], heads[:, None], s_idx[None, :]]  # type: ignore[index]
            self._pieces.append((layer, kind, gathered))

    def start_copy(self) -> PendingCopy:
        """Start the (single, asynchronous) device-to-host copy of everything this batch gathered."""
        by_device: dict[torch.device, list[tuple[int, str, torch.Tensor]]] = {}
        for piece in self._pieces:
            by_device.setdefault(piece[2].device, []).append(piece)
        pending = PendingCopy()
        for chunk, (device, pieces) in enumerate(by_device.items()):
            flat = torch.cat([p[2].reshape(-1) for p in pieces]) if pieces else torch.empty(0)
            if device.type == "cuda":
                host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
                host.copy_(flat, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                pending.events.append(event)
            else:
                host = flat.to("cpu")
            pending.host.append(host)
            offset = 0
            for layer, kind, tensor in pieces:
                plan = self.plans[(layer, kind)]
                heads = self.selection.heads(layer, kind)
                pending.blocks.append(
                    (layer, kind, heads, plan, self.windows.get(layer), tensor.shape[-1], chunk, offset)
                )
                offset += tensor.numel()
        self._pieces.clear()
        return pending


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
