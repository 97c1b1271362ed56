"""Hugging Face Hub publishing: one dataset repo, one branch per (model, dataset), ``main`` kept clean.

The push is a three-way sync between the output dir, the branch, and what the last sync of this dir knew
(``SYNC_STATE``): a part file or shared manifest file (model, recipes, commits) on the branch that this dir
never saw is pulled (another machine captured it), one this dir once had and no longer holds is stale
(``output.mode=replace`` or compaction removed it) and is deleted, and everything goes up as ONE commit
pinned to the branch head it was computed from, so a concurrent push fails instead of silently dropping
data. With push on, a run also pulls before it reads its manifest (``pull_before_run``), so a second
machine resumes where the branch stands and its recipe check sees the branch's configs.

The client comes from :mod:`qk_sniffer.hub.client` (``hub_client.API_FACTORY``, the seam tests use for a
recording stand-in of ``HfApi``). The token is passed to the client and nowhere else: it is redacted from
every message this module produces.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.config import Config, HubConfig
from ..core.errors import UserError
from ..hub import client as hub_client
from ..hub.client import REPO_TYPE, describe, find_token, redact
from ..hub.gitref import branch_problem
from ..store import RunInfo, Store
from ..store.files import DamagedFile, atomic_file, read_json
from ..store.layout import CARD, FIGURE_PATH, HUB_PULL, HUB_SYNC, METADATA, PART_PATH, SHARED_STATE, Paths
from ..store.manifest import Manifest, model_identity, recipe_difference, recipe_id
from . import documents

log = logging.getLogger(__name__)

PREFLIGHT_TIMEOUT_S = 15.0
TRUTHY = {"1", "true", "yes", "on"}
BRANCH_SAFE = re.compile(r"[^a-z0-9._-]+")


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


# ------------------------------------------------------------------------------------------------------ token


def preflight(hub: HubConfig) -> None:
    """With push on, check that ``output.hub.repo_id`` is reachable and writable, within seconds, before any
    weights load. Raises UserError naming the repo and the reason (offline, no token, no write access)."""
    if hub.branch:
        check_branch(hub.branch)
    if not hub.push:
        return
    assert hub.repo_id, "checked with the config (validate) or by the publish command's settings"
    token = _token_or_fail(hub.repo_id)
    problem = _within(
        PREFLIGHT_TIMEOUT_S, lambda: _write_access_problem(hub_client.API_FACTORY(token), hub.repo_id or "")
    )
    if problem:
        raise UserError(f"output.hub.repo_id={hub.repo_id!r}: cannot push: {redact(problem, token)}")


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


# ------------------------------------------------------------------------------------------------------- push


@dataclass
class PushResult:
    """What one push does: the branch head it builds on, what it pulls, adds and deletes."""

    branch: str
    parent: str | None
    pulled: list[str]
    added: list[str]
    deleted: list[str]


@dataclass
class SyncState:
    """What the last sync of this dir with its branch saw: the files both sides held, and the content
    digest of each manifest file (commits are rewritten in place by replace, so a name is not enough)."""

    files: set[str]
    digests: dict[str, str]


def publish(cfg: Config, out_dir: Path) -> None:
    """After the card is written: push ``out_dir`` to its branch when ``output.hub.push`` is on."""
    if cfg.output.hub.push:
        push_dir(cfg.output.hub, out_dir)


def pull_before_run(
    cfg: Config, store: Store, metadata: dict[str, Any], recipe: dict[str, Any], configs: list[str]
) -> list[str]:
    """With push on, before the run reads its manifest: bring in what the branch holds that this dir has
    never seen (another machine's parts and commits), so the run skips the examples done there and checks
    its recipe against their configs. Refusals (another model on the branch; another recipe for these
    configs without output.mode=replace) leave the dir as it was. Returns the paths pulled."""
    hub_cfg = cfg.output.hub
    if not (hub_cfg.push and hub_cfg.repo_id):
        return []
    repo_id, branch, mode = hub_cfg.repo_id, branch_name(cfg), cfg.output.mode
    out_dir = store.root
    info = RunInfo("(this run)", recipe_id(recipe), (0, 1), configs)
    place = f"output.hub.branch={branch!r} of {repo_id}"

    def check(merged: Manifest) -> None:
        # The dir's own conflict first, worded as the run would word it; then the branch's.
        if store.claimed():
            store.check_recipe(recipe, info, mode)
        store.check_recipe(
            recipe,
            info,
            mode,
            manifest=merged,
            place=place,
            held="on the branch",
            alternative="output.hub.branch",
        )

    token = _token_or_fail(repo_id)
    with _scratch(out_dir):
        try:
            api = hub_client.API_FACTORY(token)
            parent = _branch_head(api, repo_id, branch)
            if parent is None:
                return []
            remote = set(api.list_repo_files(repo_id, repo_type=REPO_TYPE, revision=parent))
            _check_same_model(api, repo_id, branch, parent, remote, out_dir, model_identity(metadata))
            state = _read_sync_state(out_dir, repo_id, branch)
            pulled = _pull(api, repo_id, parent, remote, state, store, check)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(
                f"{place}: cannot pull before the capture: {redact(describe(exc), token)}"
            ) from None
    if pulled:
        state.files |= set(pulled)
        state.digests |= {f: _digest(out_dir / f) for f in pulled if SHARED_STATE.match(f)}
        _write_sync_state(out_dir, repo_id, branch, state)
        log.info("pulled %d files from %s@%s before the capture", len(pulled), repo_id, branch)
    return pulled


def push_dir(hub: HubConfig, out_dir: Path) -> PushResult:
    """Pull what the branch holds that this dir lacks, regenerate the card, push the dir as one commit.

    Any failure leaves the local data in place and raises PushError ending with the retry command."""
    assert hub.repo_id, "checked with the config (validate) or by the publish command's settings"
    metadata = read_capture(out_dir)
    branch = branch_for_metadata(hub, metadata)
    retry = retry_command(hub, out_dir, branch)
    token = None
    try:
        token = _token_or_fail(hub.repo_id)
        with _scratch(out_dir):
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
    state = _read_sync_state(out_dir, repo_id, branch)
    _check_same_model(api, repo_id, branch, parent, remote, out_dir, model_identity(metadata))
    place = f"output.hub.branch={branch!r} of {repo_id}"
    store = Store(out_dir)
    pulled = _pull(api, repo_id, parent, remote, state, store, _refuse_new_mixes(store, place))
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
        documents.settle(store, repo_id=repo_id, branch=branch, draw=redraw)
        local = set(local_files(store))
    # Deleted here since the last sync (replace, compaction, repair): delete on the branch too.
    stale = sorted(f for f in (remote & state.files) - local if _travels(f))
    digests = {f: _digest(out_dir / f) for f in local if SHARED_STATE.match(f)}
    add = sorted(f for f in local if _needs_upload(f, remote, state, digests))
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
    _write_sync_state(out_dir, repo_id, branch, SyncState(local, digests))
    return PushResult(branch, parent, pulled, add, stale)


def _needs_upload(rel: str, remote: set[str], state: SyncState, digests: dict[str, str]) -> bool:
    # Part files are written once under unique names: a path the branch has is the same file.
    if PART_PATH.match(rel):
        return rel not in remote
    if rel in digests:  # a manifest file: unless this dir changed it since it last synced it
        return rel not in remote or state.digests.get(rel) != digests[rel]
    return True  # the card and qk_sniffer.json are regenerated by every push


def local_files(store: Store) -> list[str]:
    """Every file that travels: the dataset's committed parts, its card, metadata and figures, and the
    shared manifest; never a part file no commit names, a temp file, or this machine's own state."""
    files = set(store.view().paths())
    for path in store.paths.state.rglob("*.json"):
        rel = store.paths.rel(path)
        if SHARED_STATE.match(rel):
            files.add(rel)
    for name in (CARD, METADATA):
        if (store.root / name).is_file():
            files.add(name)
    for path in store.paths.figures.glob("*"):
        if FIGURE_PATH.match(store.paths.rel(path)) and path.is_file():
            files.add(store.paths.rel(path))
    return sorted(files)


def _travels(rel: str) -> bool:
    """Whether a path on the branch is one a push manages (so it may delete it there)."""
    return bool(PART_PATH.match(rel) or SHARED_STATE.match(rel)) or rel.startswith("figures/")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_sync_state(out_dir: Path, repo_id: str, branch: str) -> SyncState:
    path = out_dir / HUB_SYNC
    if not path.exists():
        return SyncState(set(), {})
    state = json.loads(path.read_text())
    if state.get("repo_id") != repo_id or state.get("branch") != branch:
        return SyncState(set(), {})
    return SyncState(set(state.get("files", [])), dict(state.get("digests", {})))


def _write_sync_state(out_dir: Path, repo_id: str, branch: str, state: SyncState) -> None:
    data = {"repo_id": repo_id, "branch": branch, "files": sorted(state.files), "digests": state.digests}
    with atomic_file(out_dir / HUB_SYNC, "w") as f:
        f.write(json.dumps(data, indent=1, sort_keys=True))


def _branch_head(api: Any, repo_id: str, branch: str) -> str | None:
    """The branch's head commit, or None when the repo or the branch does not exist yet."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        return str(api.repo_info(repo_id, repo_type=REPO_TYPE, revision=branch).sha)
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return None


@contextmanager
def _scratch(out_dir: Path) -> Iterator[Path]:
    """The download dir inside ``out_dir``; afterwards it is removed, and so are the directories it made
    (up to ``out_dir`` itself) while they are empty: a refused pull into a new dir leaves no dir behind."""
    created = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    try:
        yield out_dir / HUB_PULL
    finally:
        shutil.rmtree(out_dir / HUB_PULL, ignore_errors=True)
        for directory in created:
            try:
                directory.rmdir()
            except OSError:
                break  # not empty: something was pulled into it


def _download(api: Any, repo_id: str, revision: str, files: list[str], scratch: Path) -> None:
    api.snapshot_download(
        repo_id, repo_type=REPO_TYPE, revision=revision, local_dir=str(scratch), allow_patterns=files
    )


def _check_same_model(
    api: Any,
    repo_id: str,
    branch: str,
    parent: str,
    remote: set[str],
    out_dir: Path,
    identity: dict[str, Any],
) -> None:
    """A branch holds one model: refuse to mix another model's vectors into it. The branch's identity is
    its ``.qk_sniffer/model.json`` (or, for a branch pushed before the manifest travelled, the one its
    ``qk_sniffer.json`` gives), read the way a local dir's is."""
    model_file = Paths(Path()).rel(Paths(Path()).model)
    recorded = [f for f in (model_file, METADATA) if f in remote][:1]
    if not recorded:
        return
    scratch = out_dir / HUB_PULL
    _download(api, repo_id, parent, recorded, scratch)
    theirs = _identity_of(scratch / recorded[0])
    if theirs is not None and theirs != identity:
        raise UserError(
            f"output.hub.branch={branch!r} of {repo_id} holds a capture of a different model "
            f"({theirs.get('name')!r}); choose another output.hub.branch"
        )


def _identity_of(path: Path) -> dict[str, Any] | None:
    """The model identity a branch records: its model.json, or (pushed before the manifest travelled) the
    one its qk_sniffer.json gives."""
    try:
        data = read_json(path)
    except DamagedFile:
        return None
    if not isinstance(data, dict):
        return None
    return data if path.name != METADATA else model_identity(data)


def _pull(
    api: Any,
    repo_id: str,
    revision: str,
    remote: set[str],
    state: SyncState,
    store: Store,
    check: Callable[[Manifest], None],
) -> list[str]:
    """Bring in the part and manifest files the branch holds that this dir has never seen. The manifest
    files come first, into the scratch dir, so that ``check`` sees the merged manifest before anything in
    ``out_dir`` changes; every file must arrive before any is moved into place."""
    out_dir = store.root
    local = set(local_files(store)) if store.claimed() else set()
    new = sorted(f for f in remote - local - state.files if PART_PATH.match(f) or SHARED_STATE.match(f))
    if not new:
        return []
    scratch = out_dir / HUB_PULL
    manifest_files = [f for f in new if SHARED_STATE.match(f)]
    if manifest_files:
        _download(api, repo_id, revision, manifest_files, scratch)
    check(Manifest(out_dir, incoming=scratch, remote=remote))
    parts = [f for f in new if PART_PATH.match(f)]
    if parts:
        _download(api, repo_id, revision, parts, scratch)
    missing = [f for f in new if not (scratch / f).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise UserError(f"the download of {missing[0]}{more} from the branch failed; nothing was pulled")
    # Parts, then model and recipes, then commits: a commit appears only once every file it names is here.
    order = sorted(new, key=lambda f: (f.startswith(".qk_sniffer/commits/"), bool(SHARED_STATE.match(f)), f))
    with store.maintenance():
        for rel in order:
            target = out_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(scratch / rel, target)
    return new


def _refuse_new_mixes(store: Store, place: str) -> Callable[[Manifest], None]:
    """At push time: refuse a pull that would give a config rows of two recipes (the branch got another
    recipe's rows for a config since this dir's capture, e.g. another machine's output.mode=replace)."""

    out_dir = store.root

    def check(merged: Manifest) -> None:
        own = store.manifest()
        before = own.mixed_configs()
        new = {c: rids for c, rids in merged.mixed_configs().items() if c not in before}
        if not new:
            return
        config = sorted(new)[0]
        ours = own.recipes_by_config().get(config, set())
        theirs = sorted(new[config] - ours)
        diff = recipe_difference(merged.recipes.get(theirs[0], {}), merged.recipes.get(min(ours), {}))
        shown = ", ".join(sorted(new)[:4]) + (f" and {len(new) - 4} more" if len(new) > 4 else "")
        what = "; ".join(diff) or f"recipe {theirs[0]}"
        raise UserError(
            f"{place}: configs {shown} hold rows captured there with a different recipe than in "
            f"output.dir={str(out_dir)!r} (the branch -> this dir: {what}); "
            "run the capture again with output.mode=replace to replace them, or push to another "
            "output.hub.branch"
        )

    return check


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
