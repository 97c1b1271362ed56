"""Reaching the Hub: the token (or why there is none), a deadline for calls that may never answer, write
access, a branch's head, and downloading files of one revision. Everything here is transport: it knows
repos, revisions and paths, not what a capture holds.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.errors import UserError
from .client import REPO_TYPE, describe, find_token

TRUTHY = {"1", "true", "yes", "on"}


def token_or_fail(repo_id: str) -> str:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUTHY:
        raise UserError(
            f"output.hub.repo_id={repo_id!r}: cannot push: the Hub is offline (HF_HUB_OFFLINE is set); "
            "unset it or run with output.hub.push=false"
        )
    token = find_token()
    if not token:
        raise UserError(
            f"output.hub.repo_id={repo_id!r}: cannot push: no Hugging Face token; set HF_TOKEN, or put "
            "HF_TOKEN=... in a .env file, or run `hf auth login`"
        )
    return token


def within(seconds: float, check: Callable[[], str | None]) -> str | None:
    """Run ``check`` with a deadline. A daemon thread, so a Hub that never answers cannot hold up the exit
    (huggingface_hub's HTTP client has no timeout of its own)."""
    outcome: list[str | None] = []

    def target() -> None:
        try:
            outcome.append(check())
        except Exception as exc:  # every failure is a reason to report, not a traceback
            outcome.append(describe(exc))

    thread = threading.Thread(target=target, name="qk-hub-preflight", daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        return f"the Hub did not answer within {seconds:g} s"
    return outcome[0]


def write_access_problem(api: Any, repo_id: str) -> str | None:
    """None when the token may write to the repo (or create it); else why not."""
    from huggingface_hub.errors import RepositoryNotFoundError

    me = api.whoami()
    if me.get("auth", {}).get("accessToken", {}).get("role") == "read":
        return f"the token of {me.get('name')!r} is read-only; create a token with write access"
    try:
        api.auth_check(repo_id, repo_type=REPO_TYPE, write=True)
        return None
    except RepositoryNotFoundError:
        # Not there (or not visible): pushing creates it, which needs the namespace to be ours.
        namespace = repo_id.split("/")[0] if "/" in repo_id else me.get("name")
        ours = {me.get("name")} | {org.get("name") for org in me.get("orgs", [])}
        if namespace in ours:
            return None
        return f"the dataset repo does not exist and {me.get('name')!r} cannot create it in {namespace!r}"


def branch_head(api: Any, repo_id: str, branch: str) -> str | None:
    """The branch's head commit, or None when the repo or the branch does not exist yet."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        return str(api.repo_info(repo_id, repo_type=REPO_TYPE, revision=branch).sha)
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return None


def download(api: Any, repo_id: str, revision: str, files: list[str], scratch: Path) -> None:
    api.snapshot_download(
        repo_id, repo_type=REPO_TYPE, revision=revision, local_dir=str(scratch), allow_patterns=files
    )
