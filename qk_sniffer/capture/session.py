"""A capture session: a loaded model with the attention tap open, turning batches into captured blocks.

This is the one capture path. The Hydra runner and the Python API both drive it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from types import TracebackType

import torch
from transformers import PreTrainedModel

from ..inputs.data import Batch
from .chunking import ChunkSizes, token_chunking
from .decoder_layers import layer_list
from .heads import HeadSelection
from .models import ModelLayout, attention_backend, backbone_of, layout_from_config
from .module_tap import open_tap
from .rows import BatchCapture, Block, PendingCopy
from .samplers import Sampler
from .tap import StopForward


def _never() -> bool:
    return False


# What to chunk for a batch of (batch size, tokens per example): see :mod:`.chunking` and :mod:`.memory`.
ChunkPolicy = Callable[[int, int], ChunkSizes]


@dataclass
class Timings:
    """Seconds spent per step, summed over batches (host-side wall clock). ``plan`` (sampling rows and
    uploading their indices) happens inside the forward's attention calls, so it is part of ``forward``."""

    forward: float = 0.0
    plan: float = 0.0
    host_copy: float = 0.0
    batches: int = 0
    last: dict[str, float] = field(default_factory=dict)


class CaptureSession:
    """Open with ``with``; call :meth:`forward` per batch, then ``.result()`` on what it returns.

    ``early_stop`` ends each forward right after the deepest captured layer hands over its Q/K.
    ``chunking`` (None: every forward is one plain pass) gives each batch its chunk sizes: token-wise work
    in slices (:mod:`.chunking`) and masks built per chunk of query rows (:mod:`.long_attention`).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        selection: HeadSelection,
        sampler: Sampler,
        *,
        pre_rope: bool = False,
        early_stop: bool = True,
        layout: ModelLayout | None = None,
        chunking: ChunkPolicy | None = None,
    ) -> None:
        self.model = model
        self.backbone = backbone_of(model)
        # The family sweep passes the layout it read without the support-matrix check it is measuring.
        self.layout: ModelLayout = layout or layout_from_config(model.config)
        self.selection = selection
        self.sampler = sampler
        self.pre_rope = pre_rope
        self.early_stop = early_stop
        self.delegate = attention_backend(model)
        self.device = next(self.backbone.parameters()).device
        self.timings = Timings()
        self.chunking = chunking
        # Read by the wrapped modules during a forward; set per batch from ``chunking``.
        self.sizes = ChunkSizes()
        self._current: BatchCapture | None = None
        self._stack: ExitStack | None = None

    def __enter__(self) -> CaptureSession:
        with ExitStack() as stack:
            stack.enter_context(
                open_tap(
                    self.backbone,
                    self.delegate,
                    self._dispatch,
                    pre_rope=self.pre_rope,
                    layers=set(self.selection.layers),
                    stop_after_layer=self.selection.deepest_layer if self.early_stop else None,
                    sizes=self.sizes if self.chunking is not None else None,
                    chunking=(
                        token_chunking(self.backbone, list(layer_list(self.backbone) or ()), self.sizes)
                        if self.chunking is not None
                        else None
                    ),
                )
            )
            self._stack = stack.pop_all()  # open until __exit__; closed at once if entering failed
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def _dispatch(self, layer: int, query: torch.Tensor, key: torch.Tensor, window: int | None) -> None:
        if self._current is not None:
            self._current(layer, query, key, window)

    @torch.inference_mode()
    def forward(self, batch: Batch) -> PendingCopy:
        """Run the backbone over ``batch`` (no LM head, no KV cache, no padding mask) and start the copy."""
        if self._stack is None:
            raise RuntimeError("CaptureSession.forward called outside its `with` block")
        capture = BatchCapture(self.selection, self.sampler, batch, self.device)
        if self.chunking is not None:
            sizes = self.chunking(*batch.input_ids.shape)
            self.sizes.tokens, self.sizes.queries = sizes.tokens, sizes.queries
        t0 = time.perf_counter()
        self._current = capture
        try:
            self.backbone(input_ids=to_device(batch.input_ids, self.device), use_cache=False)
        except StopForward:
            pass
        finally:
            self._current = None
        t1 = time.perf_counter()
        pending = capture.start_copy()
        t2 = time.perf_counter()
        step = {
            "plan_s": capture.plan_seconds,
            "hook_s": capture.hook_seconds,
            "forward_s": t1 - t0,
            "host_copy_s": t2 - t1,
        }
        self.timings.plan += step["plan_s"]
        self.timings.forward += step["forward_s"]
        self.timings.host_copy += step["host_copy_s"]
        self.timings.batches += 1
        self.timings.last = step
        return pending

    def stream(
        self, batches: Iterable[Batch], stop: Callable[[], bool] = _never
    ) -> Iterator[tuple[Batch, list[Block], dict[str, float]]]:
        """Capture every batch; yield (batch, its blocks, its step timings) one batch late.

        A batch's device-to-host copy is collected only after the next batch's forward was queued, so the
        device never waits for the host. ``stop`` is asked before each new batch; when it says so, no further
        batch is read, and the batch already forwarded is still yielded.
        """
        pending: tuple[Batch, PendingCopy, dict[str, float]] | None = None
        remaining = iter(batches)
        # Asked before the next batch is read, so a stopped run has read only what it captured.
        while not stop() and (batch := next(remaining, None)) is not None:
            copy = self.forward(batch)
            if pending is not None:
                yield pending[0], pending[1].result(), pending[2]
            pending = (batch, copy, self.timings.last)
        if pending is not None:
            yield pending[0], pending[1].result(), pending[2]


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device without a sync: from pinned memory, asynchronous on CUDA."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
