"""Branch names: one branch per (model, dataset), derived from their slugs unless output.hub.branch names
one, and checked against git's rules before anything is pushed."""

from __future__ import annotations

import re
from typing import Any

from ..core.config import Config, HubConfig
from ..core.errors import UserError
from ..core.naming import last_part
from ..hub.gitref import branch_problem

BRANCH_SAFE = re.compile(r"[^a-z0-9._-]+")


def branch_safe(text: str) -> str:
    """Lower-case, runs of anything but [a-z0-9._-] become one '-', no leading/trailing separators."""
    return BRANCH_SAFE.sub("-", text.lower()).strip("-.")


def default_branch(model_slug: str, dataset_slug: str) -> str:
    return (
        "-".join(part for part in (branch_safe(model_slug), branch_safe(dataset_slug)) if part) or "capture"
    )


def _model_slug(model: Any, fallback: str) -> str:
    return str(_get(model, "slug") or last_part(_get(model, "name")) or fallback)


def _dataset_slug(dataset: Any) -> str:
    return str(_get(dataset, "slug") or last_part(_get(dataset, "path")) or "")


def _get(node: Any, key: str) -> Any:
    return node.get(key) if isinstance(node, dict) else getattr(node, key, None)


def branch_name(cfg: Config) -> str:
    """``output.hub.branch``, or the default derived from the model and dataset slugs."""
    if cfg.output.hub.branch:
        return check_branch(cfg.output.hub.branch)
    model_type = (_get(cfg.model, "architecture") or {}).get("model_type") or "model"
    return default_branch(_model_slug(cfg.model, model_type), _dataset_slug(cfg.dataset))


def dataset_url(cfg: Config) -> str | None:
    """The pushed branch on the Hub; None when nothing is pushed."""
    hub_cfg = cfg.output.hub
    if not (hub_cfg.push and hub_cfg.repo_id):
        return None
    return f"https://huggingface.co/datasets/{hub_cfg.repo_id}/tree/{branch_name(cfg)}"


def branch_for_metadata(hub: HubConfig, metadata: dict[str, Any]) -> str:
    """The branch :func:`branch_name` gives, read from a capture's ``qk_sniffer.json`` (no Config needed)."""
    if hub.branch:
        return check_branch(hub.branch)
    model_type = metadata.get("layout", {}).get("model_type") or "model"
    return default_branch(
        _model_slug(metadata.get("model", {}), model_type), _dataset_slug(metadata.get("dataset"))
    )


def check_branch(branch: str) -> str:
    problem = branch_problem(branch)
    if problem:
        raise UserError(f"output.hub.branch={branch!r} is not a valid branch name: {problem}")
    return branch
