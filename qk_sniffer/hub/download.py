"""Downloading one config of a capture branch from the Hub, for :func:`qk_sniffer.load`.

The revision is resolved to its commit first and the files land in a dir named by that commit, so a
branch that moves later never mixes two states in one local copy (a stale commit file next to new parts
could otherwise make rows visible twice). Two downloads: the manifest and metadata, then exactly the part
files its trusted commits name for the config.
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import UserError
from ..store.layout import METADATA, STATE
from ..store.manifest import Manifest
from . import client as hub_client


def cache_root() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "qk_sniffer"


def download_config(repo_id: str, config: str, revision: str | None) -> tuple[Path, set[str]]:
    """The local copy holding ``config``'s committed files, and every path the branch holds (so commits
    that also name other configs' files are trusted without downloading those)."""
    token = hub_client.find_token()  # None: anonymous, enough for a public repo
    where = f"{repo_id}@{revision or 'main'}"
    try:
        api = hub_client.API_FACTORY(token)  # type: ignore[arg-type] # HfApi takes None
        sha = str(api.repo_info(repo_id, repo_type=hub_client.REPO_TYPE, revision=revision or "main").sha)
        remote = set(api.list_repo_files(repo_id, repo_type=hub_client.REPO_TYPE, revision=sha))
        local = cache_root() / repo_id / sha

        def fetch(patterns: list[str]) -> None:
            api.snapshot_download(
                repo_id,
                repo_type=hub_client.REPO_TYPE,
                revision=sha,
                local_dir=str(local),
                allow_patterns=patterns,
            )

        # The manifest first: it says which of the config's files are committed, then only those.
        fetch([f"{STATE}/model.json", f"{STATE}/recipes/*", f"{STATE}/commits/*", METADATA])
        wanted = sorted(
            p.rel for c in Manifest(local, remote=remote).commits for p in c.parts if p.config == config
        )
        if wanted:
            fetch(wanted)
    except Exception as exc:
        reason = hub_client.redact(hub_client.describe(exc), token)
        raise UserError(f"downloading {config!r} from {where} failed: {reason}") from None
    missing = [f for f in wanted if not (local / f).is_file()]
    if missing:
        raise UserError(f"downloading {config!r} from {where} did not deliver {', '.join(missing[:3])}")
    return local, remote
