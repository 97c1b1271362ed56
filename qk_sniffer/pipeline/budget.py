"""The memory budget of a run: which chunk sizes each batch gets, and the refusal of a plan that cannot fit.

``inference.memory_budget_gb`` (null: the device's free memory when the run starts) is what the capture may
use, weights included. The memory model (:mod:`qk_sniffer.capture.memory`) turns a batch's shape into the
chunk sizes that fit: one pass when it fits, else the largest token chunk (and, where a backend would build
a (length x length) tensor, query chunk) that does. ``inference.token_chunk`` set by hand is kept.

A length known before any text is read (``dataset.seq_len`` of synthetic data, ``tokenizer.max_length``) is
checked before the weights load; other texts are checked per batch, as their lengths come.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..capture.chunking import ChunkSizes
from ..capture.memory import (
    GB,
    MemoryPlan,
    ModelShape,
    device_free_bytes,
    gb,
    longest_fitting,
    plan_memory,
    refusal,
    shape_of,
)
from ..capture.models import choose_attn_implementation, resolve_device
from ..capture.samplers import Sampler
from ..core.config import Config
from .plan import CapturePlan

log = logging.getLogger(__name__)


def expected_kept_positions(sampler: Sampler, length: int) -> float:
    """Mean number of positions the sampler keeps in one ``length``-token example (per layer and q|k: one
    mask serves every head of a layer and kind)."""
    buckets = sampler.buckets(np.arange(length, dtype=np.int64))
    return float(np.sum(sampler.keep_probability(buckets)))


@dataclass
class Budget:
    """A run's memory budget and the model it is checked against; call it with (batch, length)."""

    shape: ModelShape
    budget: int
    source: str
    token_chunk: int | None
    plan: CapturePlan
    length_key: str
    _sizes: dict[tuple[int, int], ChunkSizes] = field(default_factory=dict)

    def kept_bytes(self, batch: int, length: int) -> int:
        """Captured vectors held on the device until the batch ends (their mean count)."""
        vectors = self.plan.selection.count("q") + self.plan.selection.count("k")
        kept = expected_kept_positions(self.plan.sampler, length) * vectors * batch
        return int(kept * self.plan.layout.head_dim * self.shape.dtype_bytes)

    def plan_for(self, batch: int, length: int) -> MemoryPlan:
        return plan_memory(
            self.shape, batch, length, self.budget, self.token_chunk, self.kept_bytes(batch, length)
        )

    def check(self, batch: int, length: int) -> MemoryPlan:
        """The plan for (batch, length), or the one message saying it cannot fit and what would."""
        found = self.plan_for(batch, length)
        if not found.fits:
            raise refusal(found, self.shape, self.longest(batch), self.source, self.length_key)
        return found

    def longest(self, batch: int) -> int:
        """The longest example that fits the budget in batches of ``batch``."""
        return longest_fitting(lambda length: self.plan_for(batch, length).fits)

    def __call__(self, batch: int, length: int) -> ChunkSizes:
        """The chunk sizes of a (batch, length) batch: the session's chunking policy."""
        key = (batch, length)
        if key not in self._sizes:
            found = self.check(batch, length)
            if found.sizes.tokens is not None:
                log.info(
                    "batch of %d x %d tokens: token_chunk=%d, query_chunk=%s (estimated peak %s of %s, %s)",
                    batch,
                    length,
                    found.sizes.tokens,
                    found.sizes.queries,
                    gb(found.chosen.peak),
                    gb(self.budget),
                    self.source,
                )
            self._sizes[key] = found.sizes
        return self._sizes[key]


def run_budget(cfg: Config, plan: CapturePlan, device: torch.device | None = None) -> Budget:
    """The budget of a run of ``cfg`` (before its weights load, so the device's free memory includes them)."""
    device = device or resolve_device(cfg.model.device)
    backend = choose_attn_implementation(cfg.model.attn_implementation, plan.model_config, device) or "sdpa"
    shape = shape_of(plan.model_config, cfg.model.dtype, backend)
    if cfg.model.device_map is not None:  # accelerate spreads the weights: the budget is for activations
        shape = replace(shape, weight_bytes=0)
    if cfg.inference.memory_budget_gb is not None:
        budget, source = int(cfg.inference.memory_budget_gb * GB), "inference.memory_budget_gb"
    else:
        budget, source = device_free_bytes(device)
    length_key = "dataset.seq_len" if cfg.dataset.path == "synthetic" else "tokenizer.max_length"
    return Budget(shape, budget, source, cfg.inference.token_chunk, plan, length_key)
