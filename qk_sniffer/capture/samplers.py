"""Position samplers: which token positions of an example are kept, and the bucket of each.

A sampler's decision for one example depends only on (example_id, layer, kind) and the example's length,
so the same example yields the same rows whatever the batch, the dataset order or the process. Keep
decisions are drawn in position order from one generator, so a truncated copy of a text keeps a prefix of
the longer copy's rows.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Protocol

import numpy as np

from ..core.errors import UserError
from ..core.registry import Registry

KINDS = ("q", "k")
# Buckets are stored as int32, and no text has more positions than that.
INT32_MAX = 2**31 - 1
_KIND_CODE = {"q": 0, "k": 1}


class Sampler(Protocol):
    """A position sampler. Implementations are frozen dataclasses: hashable, so per-length bucket tables
    can be cached."""

    name: str

    def __hash__(self) -> int: ...

    def buckets(self, positions: np.ndarray) -> np.ndarray: ...

    def keep_probability(self, buckets: np.ndarray) -> np.ndarray: ...

    def params(self) -> dict[str, Any]: ...


SAMPLERS: Registry[type] = Registry("sampler")


def mask_seed(example_id: int, layer: int, kind: str) -> int:
    """A 64-bit seed from the three things a mask may depend on (stable across processes and platforms)."""
    payload = f"{int(example_id)}:{int(layer)}:{_KIND_CODE[kind]}".encode()
    return int.from_bytes(hashlib.blake2b(payload, digest_size=8).digest(), "little")


@lru_cache(maxsize=16)
def _bucket_table(sampler: Sampler, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Positions, buckets (int32) and keep probabilities of a ``length``-token example, and whether every
    position is kept. They depend on the length alone, so every (layer, kind) of a batch shares one table
    instead of recomputing it (at 128k tokens and dozens of layers that work adds up)."""
    positions = np.arange(length, dtype=np.int64)
    buckets = sampler.buckets(positions)
    prob = sampler.keep_probability(buckets)
    table = (positions, buckets.astype(np.int32), prob)
    for array in table:
        array.flags.writeable = False  # shared through the cache
    return (*table, bool(np.all(prob >= 1.0)))


def sample_positions(
    sampler: Sampler, example_id: int, layer: int, kind: str, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Kept positions (int64, ascending) and their buckets (int32) for one example of ``length`` tokens."""
    positions, buckets, prob, keep_all = _bucket_table(sampler, length)
    if keep_all:
        return positions.copy(), buckets.copy()
    draws = np.random.default_rng(mask_seed(example_id, layer, kind)).random(length)
    keep = draws < prob
    return positions[keep], buckets[keep]


def parameter_problems(params: Mapping[str, Any]) -> list[str]:
    """What is wrong with a sampler's settings (only the keys it has), as messages naming the key. Used by
    the samplers themselves and by the whole-config check, which reports every problem at once."""
    problems = []
    # Not capped at 1: log_bucket keeps whole early buckets when base_rate > 1, uniform when it nears
    # bucket_size. Infinity would keep everything while claiming a rate.
    if "base_rate" in params:
        rate = params["base_rate"]
        if not (isinstance(rate, (int, float)) and rate > 0):
            problems.append(f"sampler.base_rate must be > 0, got {rate}")
        elif not math.isfinite(rate):
            problems.append(f"sampler.base_rate must be finite, got {rate}")
    for key in ("bucket_size", "min_bucket_size"):
        if key not in params:
            continue
        if params[key] < 1:
            problems.append(f"sampler.{key} must be >= 1, got {params[key]}")
        elif params[key] > INT32_MAX:
            problems.append(f"sampler.{key} must be <= {INT32_MAX}, got {params[key]}")
    return problems


def _check(sampler: Any) -> None:
    problems = parameter_problems(asdict(sampler))
    if problems:
        raise UserError("; ".join(problems))


@SAMPLERS.register("log_bucket")
@dataclass(frozen=True)
class LogBucketSampler:
    """bucket = floor(log2(position + 1)), at least ceil(log2(min_bucket_size)); p = base_rate / 2**bucket."""

    base_rate: float = 1.0
    min_bucket_size: int = 1
    name: str = "log_bucket"

    def __post_init__(self) -> None:
        _check(self)

    @property
    def min_bucket(self) -> int:
        return math.ceil(math.log2(self.min_bucket_size))

    def buckets(self, positions: np.ndarray) -> np.ndarray:
        # Integer log2 of (position + 1): exact, unlike float log2 near powers of two.
        raw = np.frexp((positions + 1).astype(np.float64))[1].astype(np.int64) - 1
        return np.maximum(raw, self.min_bucket)

    def keep_probability(self, buckets: np.ndarray) -> np.ndarray:
        return np.minimum(1.0, self.base_rate / np.exp2(buckets.astype(np.float64)))

    def params(self) -> dict[str, Any]:
        return {"base_rate": self.base_rate, "min_bucket_size": self.min_bucket_size}


@SAMPLERS.register("uniform")
@dataclass(frozen=True)
class UniformSampler:
    """bucket = position // bucket_size; p = base_rate / bucket_size."""

    base_rate: float = 1.0
    bucket_size: int = 1024
    name: str = "uniform"

    def __post_init__(self) -> None:
        _check(self)

    def buckets(self, positions: np.ndarray) -> np.ndarray:
        return positions // self.bucket_size

    def keep_probability(self, buckets: np.ndarray) -> np.ndarray:
        return np.full(buckets.shape, min(1.0, self.base_rate / self.bucket_size))

    def params(self) -> dict[str, Any]:
        return {"base_rate": self.base_rate, "bucket_size": self.bucket_size}


@SAMPLERS.register("all")
@dataclass(frozen=True)
class AllSampler:
    """Every position; bucket = position // bucket_size."""

    bucket_size: int = 1
    name: str = "all"

    def __post_init__(self) -> None:
        _check(self)

    def buckets(self, positions: np.ndarray) -> np.ndarray:
        return positions // self.bucket_size

    def keep_probability(self, buckets: np.ndarray) -> np.ndarray:
        return np.ones(buckets.shape)

    def params(self) -> dict[str, Any]:
        return {"bucket_size": self.bucket_size}


def build_sampler(cfg: Any) -> Sampler:
    """A sampler from its config node (``name`` plus that sampler's keys)."""
    params = {k: v for k, v in dict(cfg).items() if k != "name"}
    sampler: Sampler = SAMPLERS.get(str(cfg["name"]))(**params)
    return sampler
