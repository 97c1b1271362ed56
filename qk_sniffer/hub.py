"""Hugging Face Hub publishing: one dataset repo, one branch per (model, dataset), ``main`` kept clean.

The push is a three-way sync between the output dir, the branch, and what the last sync of this dir knew
(``SYNC_STATE``): a part file on the branch that this dir never saw is pulled (another machine captured it),
one this dir once had and no longer holds is stale (``output.mode=replace`` removed it) and is deleted,
and everything goes up as ONE commit pinned to the branch head it was computed from, so a concurrent push
fails instead of silently dropping data.

``huggingface_hub`` is imported lazily; ``API_FACTORY`` builds the client and is the seam tests use to
put a recording stand-in in place of ``HfApi``. The token is passed to the client and nowhere else: it is
redacted from every message this module produces.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import card
from .config import Config, HubConfig
from .errors import UserError

REPO_TYPE = "dataset"
# Local record of the last successful sync (which repo, branch and files); never pushed.
SYNC_STATE = ".qk_sniffer_hub.json"
# Scratch dir for downloads, inside output.dir so that nothing outside it is ever touched.
PULL_DIR = ".qk_sniffer_pull"
PREFLIGHT_TIMEOUT_S = 15.0
TRUTHY = {"1", "true", "yes", "on"}
BRANCH_SAFE = re.compile(r"[^a-z0-9._-]+")
VALID_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
PART_FILE = re.compile(r"^(l\d+h\d+[qk])/[^/]+\.parquet$")


def _default_api(token: str) -> Any:
    from huggingface_hub import HfApi

    return HfApi(token=token)


# token -> client. Tests replace it with a recording stand-in of HfApi.
API_FACTORY: Callable[[str], Any] = _default_api


class PushError(UserError):
    """The push failed after capture; the message ends with the command that retries the push alone."""


# ---------------------------------------------------------------------------------------------- branch names


def branch_safe(text: str) -> str:
    """Lower-case, runs of anything but [a-z0-9._-] become one '-', no leading/trailing separators."""
    return BRANCH_SAFE.sub("-", text.lower()).strip("-.")


def default_branch(model_slug: str, dataset_slug: str) -> str:
    return (
        "-".join(part for part in (branch_safe(model_slug), branch_safe(dataset_slug)) if part) or "capture"
    )


def _last_part(value: Any) -> str:
    return str(value).rstrip("/").split("/")[-1] if value else ""


def _model_slug(model: Any, fallback: str) -> str:
    return str(_get(model, "slug") or _last_part(_get(model, "name")) or fallback)


def _dataset_slug(dataset: Any) -> str:
    return str(_get(dataset, "slug") or _last_part(_get(dataset, "path")) or "")


def _get(node: Any, key: str) -> Any:
    return node.get(key) if isinstance(node, dict) else getattr(node, key, None)


def branch_name(cfg: Config) -> str:
    """``output.hub.branch``, or the default derived from the model and dataset slugs."""
    if cfg.output.hub.branch:
        return check_branch(cfg.output.hub.branch)
    model_type = (_get(cfg.model, "architecture") or {}).get("model_type") or "model"
    return default_branch(_model_slug(cfg.model, model_type), _dataset_slug(cfg.dataset))


def branch_for_metadata(hub: HubConfig, metadata: dict[str, Any]) -> str:
    """The branch :func:`branch_name` gives, read from a capture's ``qk_sniffer.json`` (no Config needed)."""
    if hub.branch:
        return check_branch(hub.branch)
    model_type = metadata.get("layout", {}).get("model_type") or "model"
    return default_branch(
        _model_slug(metadata.get("model", {}), model_type), _dataset_slug(metadata.get("dataset"))
    )


def check_branch(branch: str) -> str:
    if branch == "main":
        raise UserError(
            "output.hub.branch='main' is reserved for the repo's overview; captures go to a branch per model"
        )
    if not VALID_BRANCH.match(branch) or ".." in branch or branch.endswith((".lock", "/", ".")):
        raise UserError(
            f"output.hub.branch={branch!r} is not a valid branch name (use letters, digits, . _ - /)"
        )
    return branch


# ------------------------------------------------------------------------------------------------------ token


def find_token() -> str | None:
    """``HF_TOKEN``, else ``HF_TOKEN`` in a ``.env`` file (searched from the working dir up), else the token
    saved by ``hf auth login``. The .env is read, not loaded: nothing else in the process sees it."""
    token = os.environ.get("HF_TOKEN")
    if token:
        return token
    from dotenv import dotenv_values, find_dotenv

    env_file = find_dotenv(usecwd=True)
    token = dotenv_values(env_file).get("HF_TOKEN") if env_file else None
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()


def _redact(text: str, token: str | None) -> str:
    return text.replace(token, "<token>") if token else text


# -------------------------------------------------------------------------------------------------- preflight


def preflight(hub: HubConfig) -> None:
    """With push on, check that ``output.hub.repo_id`` is reachable and writable, within seconds, before any
    weights load. Raises UserError naming the repo and the reason (offline, no token, no write access)."""
    if hub.branch:
        check_branch(hub.branch)
    if not hub.push:
        return
    if not hub.repo_id:
        raise UserError("output.hub.push=true needs output.hub.repo_id (e.g. your-name/qk-captures)")
    token = _token_or_fail(hub.repo_id)
    problem = _within(
        PREFLIGHT_TIMEOUT_S, lambda: _write_access_problem(API_FACTORY(token), hub.repo_id or "")
    )
    if problem:
        raise UserError(f"output.hub.repo_id={hub.repo_id!r}: cannot push: {_redact(problem, token)}")


def _token_or_fail(repo_id: str) -> str:
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


def _within(seconds: float, check: Callable[[], str | None]) -> str | None:
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


def _write_access_problem(api: Any, repo_id: str) -> str | None:
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


def describe(exc: BaseException) -> str:
    """One line saying why a Hub call failed."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, OfflineModeIsEnabled):
        return "the Hub is offline (HF_HUB_OFFLINE is set)"
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if status == 401:
            return f"the token was rejected ({first_line})"
        if status == 403:
            return f"no write access ({first_line})"
        return f"the Hub answered HTTP {status} ({first_line})"
    from huggingface_hub import constants

    return f"cannot reach {constants.ENDPOINT} ({type(exc).__name__}: {exc})"


# ------------------------------------------------------------------------------------------------------- push


@dataclass
class PushPlan:
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


def push_dir(hub: HubConfig, out_dir: Path) -> PushPlan:
    """Pull what the branch holds that this dir lacks, regenerate the card, push the dir as one commit.

    Any failure leaves the local data in place and raises PushError ending with the retry command."""
    if not hub.repo_id:
        raise UserError("output.hub.repo_id is required to push")
    metadata = read_capture(out_dir)
    branch = branch_for_metadata(hub, metadata)
    retry = retry_command(hub, out_dir, branch)
    token = None
    try:
        token = _token_or_fail(hub.repo_id)
        return _push(API_FACTORY(token), hub, out_dir, branch, metadata)
    except Exception as exc:
        reason = _redact(describe(exc), token)
        raise PushError(
            f"pushing {str(out_dir)!r} to {hub.repo_id}@{branch} failed: {reason}. The captured data is kept "
            f"in {str(out_dir)!r}; retry the push alone with:\n  {retry}"
        ) from None
    finally:
        shutil.rmtree(out_dir / PULL_DIR, ignore_errors=True)


def read_capture(out_dir: Path) -> dict[str, Any]:
    """The capture's metadata; a dir without it is not something to publish."""
    metadata = card.read_metadata(out_dir)
    if not metadata:
        raise UserError(
            f"output.dir={str(out_dir)!r} holds no qk-sniffer capture ({card.METADATA} is missing)"
        )
    return metadata


def _push(api: Any, hub: HubConfig, out_dir: Path, branch: str, metadata: dict[str, Any]) -> PushPlan:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    repo_id = hub.repo_id or ""
    api.create_repo(repo_id, repo_type=REPO_TYPE, exist_ok=True, private=hub.private)
    if not [
        f for f in api.list_repo_files(repo_id, repo_type=REPO_TYPE, revision="main") if f != ".gitattributes"
    ]:
        api.create_commit(
            repo_id,
            [CommitOperationAdd(card.CARD, main_readme(repo_id, branch).encode())],
            commit_message="Describe the branch layout",
            repo_type=REPO_TYPE,
            revision="main",
        )
    api.create_branch(repo_id, branch=branch, repo_type=REPO_TYPE, exist_ok=True)
    parent = api.repo_info(repo_id, repo_type=REPO_TYPE, revision=branch).sha
    remote = set(api.list_repo_files(repo_id, repo_type=REPO_TYPE, revision=parent))
    known = _known_files(out_dir, repo_id, branch)
    local = set(local_files(out_dir))
    # Part files are written once under unique names: a path the branch has is the same file.
    pull = sorted(f for f in remote - local - known if PART_FILE.match(f))
    stale = sorted(f for f in (remote & known) - local if _ours(f))
    _check_same_model(api, repo_id, branch, parent, remote, out_dir, metadata)
    if pull:
        _pull(api, repo_id, parent, pull, out_dir)
    card.write_card(out_dir, repo_id, branch)
    local = set(local_files(out_dir))
    add = sorted(f for f in local if not (PART_FILE.match(f) and f in remote))
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
    _write_sync_state(out_dir, repo_id, branch, sorted(local))
    return PushPlan(branch, parent, pull, add, stale)


def local_files(out_dir: Path) -> list[str]:
    """Every file the dataset consists of: not hidden (sync state, scratch), not half-written."""
    files = []
    for path in out_dir.rglob("*"):
        rel = path.relative_to(out_dir).as_posix()
        if path.is_file() and _ours(rel) and not rel.endswith(".tmp"):
            files.append(rel)
    return sorted(files)


def _ours(rel: str) -> bool:
    return not any(part.startswith(".") for part in rel.split("/"))


def _known_files(out_dir: Path, repo_id: str, branch: str) -> set[str]:
    path = out_dir / SYNC_STATE
    if not path.exists():
        return set()
    state = json.loads(path.read_text())
    if state.get("repo_id") != repo_id or state.get("branch") != branch:
        return set()
    return set(state.get("files", []))


def _write_sync_state(out_dir: Path, repo_id: str, branch: str, files: list[str]) -> None:
    path = out_dir / SYNC_STATE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"repo_id": repo_id, "branch": branch, "files": files}, indent=1))
    tmp.replace(path)


def _check_same_model(
    api: Any,
    repo_id: str,
    branch: str,
    parent: str,
    remote: set[str],
    out_dir: Path,
    metadata: dict[str, Any],
) -> None:
    """A branch holds one model: refuse to mix another model's vectors into it."""
    if card.METADATA not in remote:
        return
    from .outdir import model_identity

    scratch = out_dir / PULL_DIR
    api.snapshot_download(
        repo_id, repo_type=REPO_TYPE, revision=parent, local_dir=str(scratch), allow_patterns=[card.METADATA]
    )
    theirs = model_identity(json.loads((scratch / card.METADATA).read_text()))
    if theirs != model_identity(metadata):
        raise UserError(
            f"output.hub.branch={branch!r} of {repo_id} holds a capture of a different model "
            f"({theirs.get('name')!r}); choose another output.hub.branch"
        )


def _pull(api: Any, repo_id: str, revision: str, files: list[str], out_dir: Path) -> None:
    """Download into the scratch dir, then move each file into place whole."""
    scratch = out_dir / PULL_DIR
    api.snapshot_download(
        repo_id, repo_type=REPO_TYPE, revision=revision, local_dir=str(scratch), allow_patterns=files
    )
    for rel in files:
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(scratch / rel, target)


def _commit_message(metadata: dict[str, Any], added: list[str], deleted: list[str]) -> str:
    model = metadata.get("model", {})
    parts = sum(1 for f in added if PART_FILE.match(f))
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
