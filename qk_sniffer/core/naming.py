"""The names of a capture's dataset configs: ``l{layer}h{head}{q|k}``, one per (layer, head, kind).

Named once here because both sides use them: the capture names the tables it gathers, the store names the
directories it writes, and readers parse them back.
"""

from __future__ import annotations

import re

CONFIG_NAME = re.compile(r"^l(\d+)h(\d+)([qk])$")


def config_name(layer: int, head: int, kind: str, layer_width: int = 2, head_width: int = 2) -> str:
    return f"l{layer:0{layer_width}d}h{head:0{head_width}d}{kind}"


def name_widths(num_layers: int, num_heads: int) -> tuple[int, int]:
    """Zero-padding widths: two digits, more when a model has 100 or more layers or heads."""
    return max(2, len(str(num_layers - 1))), max(2, len(str(num_heads - 1)))


def parse_config_name(name: str) -> tuple[int, int, str] | None:
    """(layer, head, kind) of a config name, None for anything else."""
    match = CONFIG_NAME.match(name)
    return (int(match[1]), int(match[2]), match[3]) if match else None


def last_part(value: object) -> str:
    """The last segment of a Hub id or a path (``Qwen/Qwen3-8B`` -> ``Qwen3-8B``); empty for none."""
    return str(value).rstrip("/").split("/")[-1] if value else ""
