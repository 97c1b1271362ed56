"""The output directory is one model's dataset: claim it, or refuse without touching it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .card import METADATA
from .errors import UserError


def model_identity(metadata: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs "the same model": its weights (name + revision) or, without a name, its shape."""
    model = metadata.get("model", {})
    identity = {
        "name": model.get("name") if not model.get("random_init") else None,
        "revision": model.get("revision"),
        "config_overrides": model.get("config_overrides") or {},
        "pre_rope": metadata.get("capture", {}).get("pre_rope", False),
    }
    if identity["name"] is None:
        identity["layout"] = metadata.get("layout")
        identity["seed"] = model.get("seed")
    return identity


def claim_output_dir(root: Path, metadata: dict[str, Any], mode: str) -> None:
    """Check ``root`` is new, empty, or already holds this model's capture. Never deletes anything."""
    if root.exists() and not root.is_dir():
        raise UserError(f"output.dir={str(root)!r} exists and is not a directory")
    if root.exists() and any(root.iterdir()):
        meta_path = root / METADATA
        if not meta_path.exists():
            raise UserError(
                f"output.dir={str(root)!r} is not empty and holds no qk-sniffer capture; choose an empty or "
                "new directory"
            )
        existing = json.loads(meta_path.read_text())
        old, new = model_identity(existing), model_identity(metadata)
        if old != new:
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                             if old.get(k) != new.get(k))
            raise UserError(
                f"output.dir={str(root)!r} holds a capture of a different model or vector kind ({diff}); "
                "use another output.dir (one model per dir and branch)"
            )
    # Created by the first write, so a run that fails its checks leaves nothing behind; check we could.
    parent = root
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise UserError(f"output.dir={str(root)!r} is not writable ({str(parent)!r} denies writes)")
