"""Downloading one config of a capture branch from the Hub, for :func:`qk_sniffer.load`.

The revision is resolved to its commit first and the files land in a dir named by that commit, so a
branch that moves later never mixes two states in one local copy (a stale commit file next to new parts
could otherwise make rows visible twice). Two downloads: the manifest and metadata, then exactly the part
files its trusted commits name for the config.
"""

from __future__ import annotations

from pathlib import Path

from . import hub
from .card import METADATA
from .errors import UserError
from .manifest import STATE_DIR, Manifest


def cache_root() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "qk_sniffer"


def download_config(repo_id: str, config: str, revision: str | None) -> Path:
    token = hub.find_token()  # None: anonymous, enough for a public repo
    try:
        api = hub.API_FACTORY(token)  # type: ignore[arg-type] # HfApi takes None
        sha = str(api.repo_info(repo_id, repo_type=hub.REPO_TYPE, revision=revision or "main").sha)
        local = cache_root() / repo_id / sha
        api.snapshot_download(
            repo_id,
            repo_type=hub.REPO_TYPE,
            revision=sha,
            local_dir=str(local),
            allow_patterns=[
                f"{STATE_DIR}/model.json",
                f"{STATE_DIR}/recipes/*",
                f"{STATE_DIR}/commits/*",
                METADATA,
            ],
        )
        # Every file a commit names, trusted or not yet: trust is decided once they are here.
        wanted = sorted(
            f"{config}/{f['name']}"
            for c in Manifest(local, remote=()).all_commits
            for f in c.files.get(config, [])
        )
        if wanted:
            api.snapshot_download(
                repo_id, repo_type=hub.REPO_TYPE, revision=sha, local_dir=str(local), allow_patterns=wanted
            )
    except UserError:
        raise
    except Exception as exc:
        reason = hub._redact(hub.describe(exc), token)
        raise UserError(
            f"downloading {config!r} from {repo_id}@{revision or 'main'} failed: {reason}"
        ) from None
    return local
