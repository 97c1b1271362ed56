"""Which decoder layer is running: the index every captured attention call is named by.

An attention module's own ``layer_idx`` is not always the decoder layer it runs in: Zamba2 applies one
shared attention block (``layer_idx`` -1) at several depths, and other hybrids number their attention
modules their own way. The position, in the decoder's layer list, of the layer whose forward is running
names each call (each application of a shared block too) by where it runs in the model; where that list
is not found, the module's ``layer_idx`` does.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

# Attribute names of the decoder's layer list (most families; GPT-J and Falcon spell it `h`, MPT `blocks`).
LAYER_LISTS = ("layers", "h", "blocks")


def layer_list(backbone: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The decoder's list of layers, if the backbone has one."""
    for attr in LAYER_LISTS:
        layers = getattr(backbone, attr, None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    return None


@contextmanager
def running_layer(backbone: torch.nn.Module) -> Iterator[Callable[[torch.nn.Module], int]]:
    """While open, yields ``layer_of(attention_module)``: the index of the decoder layer running now.

    Forward hooks on each decoder layer keep a stack of the listed layers whose forward is running; a
    shared block a layer calls is not in the list, so its calls carry that layer's index. All hooks are
    removed when the context closes.
    """
    running: list[int] = []
    handles = []
    layers = layer_list(backbone)

    def enter(index: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any) -> None:
            running.append(index)

        return hook

    def leave(module: torch.nn.Module, args: Any, output: Any) -> None:
        running.pop()

    def layer_of(module: torch.nn.Module) -> int:
        return running[-1] if running else int(module.layer_idx)  # type: ignore[arg-type]

    try:
        for index, layer in enumerate(layers or ()):
            handles.append(layer.register_forward_pre_hook(enter(index)))
            # always_call: a forward stopped by an exception (StopForward) still leaves the stack clean.
            handles.append(layer.register_forward_hook(leave, always_call=True))
        yield layer_of
    finally:
        for handle in handles:
            handle.remove()


class RepeatedCall:
    """Tells a repeated attention call: the same decoder layer calling again with the very same query and key
    tensors (DiffLlama attends once per half of its values with one Q/K). Its vectors were captured with the
    first call; capturing them again would write every row twice. Only weak references are kept, so a
    finished layer's tensors are freed as before."""

    def __init__(self) -> None:
        self._last: tuple[int, weakref.ref[torch.Tensor], weakref.ref[torch.Tensor]] | None = None

    def __call__(self, layer: int, query: torch.Tensor, key: torch.Tensor) -> bool:
        last, self._last = self._last, (layer, weakref.ref(query), weakref.ref(key))
        return last is not None and last[0] == layer and last[1]() is query and last[2]() is key
