"""Hugging Face Hub publishing: one dataset repo, one branch per (model, dataset), ``main`` kept clean.

A push pulls what the branch holds that this dir never saw, regenerates the card, and sends everything as
ONE commit pinned to the branch head it was computed from, so a concurrent push fails instead of silently
dropping data. What is pulled and what is stale is decided in :mod:`.sync`; branch names in
:mod:`.branches`; reaching the Hub in :mod:`qk_sniffer.hub`.

The client comes from :mod:`qk_sniffer.hub.client` (``hub_client.API_FACTORY``, the seam tests use for a
recording stand-in of ``HfApi``). The token is passed to the client and nowhere else: it is redacted from
every message this module produces.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..analysis.figures import render_after_run
from ..core.config import Config, HubConfig
from ..core.errors import UserError
from ..hub import client as hub_client
from ..hub.access import token_or_fail, within, write_access_problem
from ..hub.client import REPO_TYPE, describe, redact
from ..store import Store
from ..store.layout import CARD, METADATA, PART_PATH, SHARED_STATE
from ..store.manifest import model_identity
from . import documents
from .branches import branch_for_metadata, check_branch
from .sync import (
    SyncState,
    check_same_model,
    digest,
    local_files,
    needs_upload,
    pull,
    read_sync_state,
    refuse_new_mixes,
    scratch_dir,
    travels,
    write_sync_state,
)

PREFLIGHT_TIMEOUT_S = 15.0


class PushError(UserError):
    """The push failed after capture; the message ends with the command that retries the push alone."""


def preflight(hub: HubConfig) -> None:
    """With push on, check that ``output.hub.repo_id`` is reachable and writable, within seconds, before any
    weights load. Raises UserError naming the repo and the reason (offline, no token, no write access)."""
    if hub.branch:
        check_branch(hub.branch)
    if not hub.push:
        return
    assert hub.repo_id, "checked with the config (validate) or by the publish command's settings"
    token = token_or_fail(hub.repo_id)
    problem = within(
        PREFLIGHT_TIMEOUT_S, lambda: write_access_problem(hub_client.API_FACTORY(token), hub.repo_id or "")
    )
    if problem:
        raise UserError(f"output.hub.repo_id={hub.repo_id!r}: cannot push: {redact(problem, token)}")


@dataclass
class PushResult:
    """What one push does: the branch head it builds on, what it pulls, adds and deletes."""

    branch: str
    parent: str | None
    pulled: list[str]
    added: list[str]
    deleted: list[str]


def publish(cfg: Config, out_dir: Path) -> None:
    """After the card is written: push ``out_dir`` to its branch when ``output.hub.push`` is on."""
    if cfg.output.hub.push:
        push_dir(cfg.output.hub, out_dir)


def push_dir(hub: HubConfig, out_dir: Path) -> PushResult:
    """Pull what the branch holds that this dir lacks, regenerate the card, push the dir as one commit.

    Any failure leaves the local data in place and raises PushError ending with the retry command."""
    assert hub.repo_id, "checked with the config (validate) or by the publish command's settings"
    metadata = read_capture(out_dir)
    branch = branch_for_metadata(hub, metadata)
    retry = retry_command(hub, out_dir, branch)
    token = None
    try:
        token = token_or_fail(hub.repo_id)
        with scratch_dir(out_dir):
            return _push(hub_client.API_FACTORY(token), hub, out_dir, branch, metadata)
    except Exception as exc:
        reason = redact(describe(exc), token)
        raise PushError(
            f"pushing {str(out_dir)!r} to {hub.repo_id}@{branch} failed: {reason}. The captured data is kept "
            f"in {str(out_dir)!r}; retry the push alone with:\n  {retry}"
        ) from None


def read_capture(out_dir: Path) -> dict[str, Any]:
    """The capture's metadata; a dir without it (or without its manifest) is not something to publish."""
    store = Store(out_dir)
    if not store.claimed():
        raise UserError(
            f"output.dir={str(out_dir)!r} holds no qk-sniffer capture (.qk_sniffer/model.json is missing)"
        )
    metadata = Store(out_dir).recorded_metadata()
    if not metadata:
        raise UserError(
            f"output.dir={str(out_dir)!r}: {METADATA} is missing or damaged; run the capture command again "
            "(it resumes and rewrites it), then publish"
        )
    return metadata


def _push(api: Any, hub: HubConfig, out_dir: Path, branch: str, metadata: dict[str, Any]) -> PushResult:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    repo_id = hub.repo_id or ""
    api.create_repo(repo_id, repo_type=REPO_TYPE, exist_ok=True, private=hub.private)
    if not [
        f for f in api.list_repo_files(repo_id, repo_type=REPO_TYPE, revision="main") if f != ".gitattributes"
    ]:
        api.create_commit(
            repo_id,
            [CommitOperationAdd(CARD, main_readme(repo_id, branch).encode())],
            commit_message="Describe the branch layout",
            repo_type=REPO_TYPE,
            revision="main",
        )
    api.create_branch(repo_id, branch=branch, repo_type=REPO_TYPE, exist_ok=True)
    parent = api.repo_info(repo_id, repo_type=REPO_TYPE, revision=branch).sha
    remote = set(api.list_repo_files(repo_id, repo_type=REPO_TYPE, revision=parent))
    state = read_sync_state(out_dir, repo_id, branch)
    check_same_model(api, repo_id, branch, parent, remote, out_dir, model_identity(metadata))
    place = f"output.hub.branch={branch!r} of {repo_id}"
    store = Store(out_dir)
    pulled = pull(api, repo_id, parent, remote, state, store, refuse_new_mixes(store, place))
    with store.maintenance():
        damage = store.repair()
        if damage:
            raise UserError(
                f"{len(damage)} commits were dropped because a file they name is missing or damaged (first: "
                f"{damage[0].line()}); run the capture command again to capture those examples again, then "
                "publish"
            )
        # Rows pulled from the branch change the figures; redraw those this dir already had.
        redraw = bool(pulled) and store.paths.figures.is_dir()
        documents.settle(store, repo_id=repo_id, branch=branch, draw=render_after_run if redraw else None)
        local = set(local_files(store))
    # Deleted here since the last sync (replace, compaction, repair): delete on the branch too.
    stale = sorted(f for f in (remote & state.files) - local if travels(f))
    digests = {f: digest(out_dir / f) for f in local if SHARED_STATE.match(f)}
    add = sorted(f for f in local if needs_upload(f, remote, state, digests))
    operations: list[Any] = [CommitOperationAdd(f, str(out_dir / f)) for f in add]
    operations += [CommitOperationDelete(f) for f in stale]
    api.create_commit(
        repo_id,
        operations,
        commit_message=_commit_message(metadata, add, stale),
        repo_type=REPO_TYPE,
        revision=branch,
        parent_commit=parent,
    )
    write_sync_state(out_dir, repo_id, branch, SyncState(local, digests))
    return PushResult(branch, parent, pulled, add, stale)


def _commit_message(metadata: dict[str, Any], added: list[str], deleted: list[str]) -> str:
    model = metadata.get("model", {})
    parts = sum(1 for f in added if PART_PATH.match(f))
    return f"qk-sniffer: {model.get('name') or model.get('slug')}: +{parts} part files, -{len(deleted)} stale"


def main_readme(repo_id: str, branch: str) -> str:
    return f"""---
tags:
- qk-sniffer
---

# {repo_id}

Query/key vectors captured with qk-sniffer. `main` holds only this page: each capture lives on its own
branch, one per (model, dataset), named `<model>-<dataset>` (e.g. `{branch}`). Each branch's README lists
its configs (`l{{layer}}h{{head}}{{q|k}}`), the model, the sampler and what was captured.

```python
from datasets import load_dataset

ds = load_dataset("{repo_id}", "l00h00q", revision="{branch}", split="train")
```
"""


def retry_command(hub: HubConfig, out_dir: Path, branch: str) -> str:
    args = [
        f"output.dir={_hydra_value(str(out_dir))}",
        f"output.hub.repo_id={_hydra_value(hub.repo_id or '')}",
        f"output.hub.branch={_hydra_value(branch)}",
    ]
    if hub.private:
        args.append("output.hub.private=true")
    return "python -m qk_sniffer.publish " + " ".join(shlex.quote(a) for a in args)


def _hydra_value(value: str) -> str:
    """Quote a value for an override when it holds characters the override grammar reads specially."""
    if re.fullmatch(r"[A-Za-z0-9_./~:@+-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
