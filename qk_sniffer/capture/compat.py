"""Every touch of transformers' private surface, in one place.

The tap needs four things transformers does not offer publicly. Each is named in :data:`PRIVATE_SURFACE`
and reached only through a function here, so a release that moves one breaks this module and
:func:`missing_surface` (run by ``tests/unit/test_compat.py`` and ``make test-compat``) names the attribute:

- ``AttentionInterface._global_mapping`` / ``AttentionMaskInterface._global_mapping``: the registries
  have ``register`` but no way to remove a name again; a closed session must leave them as it found them.
- ``PretrainedConfig._attn_implementation_internal``: the public setter re-validates and may reload the
  backend; the tap only points the config at a registered name for the session and restores it.
- the modeling module's globals ``apply_rotary_pos_emb`` (and its variants) and ``eager_attention_forward``:
  attention modules look them up at call time, so replacing the module global is the one way to see the
  vectors before rotation, or the eager reference, without copying modeling code.
- ``PreTrainedModel._supports_attention_backend``: whether a class routes attention through the registry.

Releases also differ in what they hand the attention function; :func:`mask_fitted_to_keys` absorbs the one
difference the tap meets (transformers 5.0 and 5.1).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import torch
from transformers import AttentionInterface, PretrainedConfig, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface

# Rotary function names the modeling code may call: the common one and its variants (``*_interleave``), and
# the complex-number form of DeepSeek V2 and Llama 4.
ROTARY_PREFIXES = ("apply_rotary_pos_emb", "apply_rotary_emb")
EAGER_ATTENTION = "eager_attention_forward"

PRIVATE_SURFACE = (
    "AttentionInterface._global_mapping",
    "AttentionMaskInterface._global_mapping",
    "PretrainedConfig._attn_implementation_internal",
    "PreTrainedModel._supports_attention_backend",
    "transformers.models.llama.modeling_llama.apply_rotary_pos_emb",
    "transformers.models.llama.modeling_llama.eager_attention_forward",
)


def missing_surface() -> list[str]:
    """The entries of :data:`PRIVATE_SURFACE` this transformers no longer has (empty when all is well)."""
    from transformers.models.llama import modeling_llama

    owners = {
        "AttentionInterface": AttentionInterface,
        "AttentionMaskInterface": AttentionMaskInterface,
        "PretrainedConfig": PretrainedConfig(),
        "PreTrainedModel": PreTrainedModel,
        "transformers.models.llama.modeling_llama": modeling_llama,
    }
    missing = []
    for entry in PRIVATE_SURFACE:
        owner, _, attribute = entry.rpartition(".")
        if not hasattr(owners[owner], attribute):
            missing.append(entry)
    return missing


# ------------------------------------------------------------------------------------- the registries


def unregister_attention(name: str) -> None:
    """Remove ``name`` from the attention and mask registries (``register``'s missing inverse)."""
    AttentionInterface._global_mapping.pop(name, None)
    AttentionMaskInterface._global_mapping.pop(name, None)


@contextmanager
def attention_implementation(configs: Iterable[PretrainedConfig], name: str) -> Iterator[None]:
    """Point each config at the registered attention ``name`` while the context is open; restore after."""
    configs = list(configs)
    saved = [cfg._attn_implementation for cfg in configs]
    try:
        for cfg in configs:
            cfg._attn_implementation_internal = name
        yield
    finally:
        for cfg, impl in zip(configs, saved, strict=True):
            cfg._attn_implementation_internal = impl


def routes_attention(model_class: type) -> bool:
    """Whether a model class declares that its attention goes through the registry."""
    return bool(getattr(model_class, "_supports_attention_backend", False))


# ------------------------------------------------------------------------------- modeling globals


def modeling_module(module: torch.nn.Module) -> ModuleType:
    """The ``modeling_*`` module an attention module's code lives in (where it looks up its helpers)."""
    return sys.modules[type(module).__module__]


def eager_attention(module: torch.nn.Module) -> Callable[..., Any] | None:
    return getattr(modeling_module(module), EAGER_ATTENTION, None)


def rotary_functions(modules: Iterable[torch.nn.Module]) -> list[tuple[ModuleType, str]]:
    """(modeling module, name) of every rotary function the attention modules' code may call: the plain
    ``apply_rotary_pos_emb`` and its variants (DeepSeek V3's ``apply_rotary_pos_emb_interleave``)."""
    seen: dict[tuple[str, str], tuple[ModuleType, str]] = {}
    for module in modules:
        mod = modeling_module(module)
        for name in vars(mod):
            if name.startswith(ROTARY_PREFIXES) and callable(getattr(mod, name)):
                seen[(mod.__name__, name)] = (mod, name)
    return list(seen.values())


@contextmanager
def module_globals(replacements: Iterable[tuple[ModuleType, str, Callable[..., Any]]]) -> Iterator[None]:
    """Replace each ``module.name`` with a wrapper of the original (``wrap(original)``) while the context
    is open; the originals are back afterwards, also on an exception."""
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in replacements]
    wraps = [wrap for _, _, wrap in replacements]
    try:
        for (mod, name, original), wrap in zip(saved, wraps, strict=True):
            setattr(mod, name, wrap(original))
        yield
    finally:
        for mod, name, original in saved:
            setattr(mod, name, original)


# ------------------------------------------------------------------------------------- release differences


def mask_fitted_to_keys(
    key: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` of an attention call with a 4D mask cut to the keys' length.

    In transformers 5.0 and 5.1, families that still build their own causal mask (``_update_causal_mask``:
    Mllama, Persimmon, Falcon-H1, Fuyu, ...) make it one position longer than the keys when the backend's
    name is not ``sdpa`` (ours is not); their eager function cuts it to the keys, sdpa does not and fails.
    The cut is the one the model's own eager attention makes; a mask that fits is passed on untouched.
    """
    length = key.shape[-2]

    def fitted(mask: Any) -> Any:
        if isinstance(mask, torch.Tensor) and mask.dim() == 4 and mask.shape[-1] > length:
            return mask[..., :length]
        return mask

    if "attention_mask" in kwargs:
        return args, {**kwargs, "attention_mask": fitted(kwargs["attention_mask"])}
    if len(args) >= 2:  # (value, attention_mask, ...), the registry's calling convention
        return (args[0], fitted(args[1]), *args[2:]), kwargs
    return args, kwargs
