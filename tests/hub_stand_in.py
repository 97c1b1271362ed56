"""A recording stand-in of ``HfApi``: in-memory dataset repos with branches and commits, where every call the
code makes is recorded. No Hub is reachable from the tests; the ``fake`` fixture (conftest.py) installs it."""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import time
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

from qk_sniffer.hub import client as hub_client

SECRET = "hf_SeCrEt0123456789abcdefTOKEN"
REPO_ID = "alice/qk-captures"
# The HTTP client huggingface_hub's errors carry responses of: httpx2 from 2.0 on, httpx in 1.x (the 1.x line
# is what transformers before 5.23 accepts, so `make test-compat` runs these tests with it too).
HTTP = importlib.import_module("httpx" if huggingface_hub.__version__.startswith("1.") else "httpx2")


def http_error(cls, status: int, message: str):
    response = HTTP.Response(status, request=HTTP.Request("GET", "https://huggingface.co/api/x"))
    return cls(message, response=response)


class FakeHub:
    """In-memory dataset repos with branches and commits; every call the code makes is recorded."""

    def __init__(self, user="alice", orgs=(), role="write", writable=True):
        self.user, self.orgs, self.role, self.writable = user, list(orgs), role, writable
        self.commits: dict[str, dict[str, bytes]] = {}  # sha -> tree
        self.branches: dict[str, dict[str, str]] = {}  # repo -> branch -> sha
        self.private: dict[str, bool] = {}
        self.calls: list[tuple] = []
        self.tokens: list[str] = []
        self.fail: dict[str, Exception] = {}
        self.whoami_delay = 0.0
        self.lost_in_download: set[str] = set()  # paths snapshot_download silently fails to deliver

    def factory(self, token: str) -> FakeApi:
        self.tokens.append(token)
        return FakeApi(self)

    def new_commit(self, tree: dict[str, bytes]) -> str:
        sha = hashlib.sha1(repr(sorted(tree.items())).encode() + str(len(self.commits)).encode()).hexdigest()
        self.commits[sha] = dict(tree)
        return sha

    def tree(self, repo: str, revision: str) -> dict[str, bytes]:
        return self.commits[self.branches[repo].get(revision, revision)]

    def commit_ops(self, branch: str) -> list[list[tuple[str, str]]]:
        return [c[2] for c in self.calls if c[0] == "create_commit" and c[1] == branch]


class FakeApi:
    def __init__(self, hub_: FakeHub):
        self.hub = hub_

    def _record(self, *call):
        self.hub.calls.append(call)
        if call[0] in self.hub.fail:
            raise self.hub.fail[call[0]]

    def whoami(self):
        time.sleep(self.hub.whoami_delay)
        self._record("whoami")
        orgs = [{"name": o} for o in self.hub.orgs]
        return {"name": self.hub.user, "orgs": orgs, "auth": {"accessToken": {"role": self.hub.role}}}

    def auth_check(self, repo_id, *, repo_type, write):
        self._record("auth_check", repo_id, repo_type, write)
        if repo_id not in self.hub.branches:
            raise http_error(
                RepositoryNotFoundError, 404, f"404 Client Error: Repository Not Found for {repo_id}"
            )
        if not self.hub.writable:
            raise http_error(HfHubHTTPError, 403, "403 Forbidden: you do not have write access")

    def create_repo(self, repo_id, *, repo_type, exist_ok, private):
        self._record("create_repo", repo_id, repo_type, exist_ok, private)
        if repo_id not in self.hub.branches:
            self.hub.branches[repo_id] = {"main": self.hub.new_commit({".gitattributes": b"*.parquet lfs\n"})}
            self.hub.private[repo_id] = private

    def list_repo_files(self, repo_id, *, repo_type, revision):
        self._record("list_repo_files", repo_id, revision)
        return sorted(self.hub.tree(repo_id, revision))

    def create_branch(self, repo_id, *, branch, repo_type, exist_ok):
        self._record("create_branch", repo_id, branch, exist_ok)
        self.hub.branches[repo_id].setdefault(branch, self.hub.branches[repo_id]["main"])

    def repo_info(self, repo_id, *, repo_type, revision):
        self._record("repo_info", repo_id, revision)
        if repo_id not in self.hub.branches:
            raise http_error(
                RepositoryNotFoundError, 404, f"404 Client Error: Repository Not Found for {repo_id}"
            )
        if revision not in self.hub.branches[repo_id]:
            raise http_error(
                RevisionNotFoundError, 404, f"404 Client Error: Revision Not Found for {revision}"
            )
        return SimpleNamespace(sha=self.hub.branches[repo_id][revision])

    def snapshot_download(self, repo_id, *, repo_type, revision, local_dir, allow_patterns):
        self._record("snapshot_download", repo_id, revision, sorted(allow_patterns))
        for path, data in self.hub.tree(repo_id, revision).items():
            if path not in self.hub.lost_in_download and any(
                fnmatch.fnmatch(path, p) for p in allow_patterns
            ):
                target = Path(local_dir) / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        return local_dir

    def create_commit(self, repo_id, operations, *, commit_message, repo_type, revision, parent_commit=None):
        ops = [("add" if hasattr(op, "path_or_fileobj") else "delete", op.path_in_repo) for op in operations]
        self._record("create_commit", revision, ops, commit_message, parent_commit)
        head = self.hub.branches[repo_id][revision]
        if parent_commit is not None and parent_commit != head:
            raise http_error(HfHubHTTPError, 412, "412 Precondition Failed: the branch moved")
        tree = dict(self.hub.commits[head])
        for op in operations:
            if hasattr(op, "path_or_fileobj"):
                src = op.path_or_fileobj
                tree[op.path_in_repo] = src if isinstance(src, bytes) else Path(src).read_bytes()
            else:
                tree.pop(op.path_in_repo)
        self.hub.branches[repo_id][revision] = self.hub.new_commit(tree)


def install_stand_in(monkeypatch, tmp_path) -> FakeHub:
    """The stand-in, a token in HF_TOKEN, online, and no stray .env or saved login."""
    stand_in = FakeHub()
    monkeypatch.setattr(hub_client, "API_FACTORY", stand_in.factory)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.chdir(tmp_path)
    return stand_in
