"""Whether a dir may be written: claimed by this tool for one model, holding nothing it cannot account
for, and nothing foreign where the tool writes. Every check here reads only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..core.naming import CONFIG_NAME
from .base import StoreBase, StoreError
from .files import DamagedFile, read_json
from .layout import FIGURE_PATH, PART_NAME, STATE, TMP_SUFFIX, TOP_LEVEL
from .manifest import plain_json

# What a registration in progress makes before it has checked anything (they hold no data).
REGISTRATION_ONLY = ("maintenance.lock", "runs")


class ClaimChecks(StoreBase):
    def identity(self) -> dict[str, Any] | None:
        """The model identity recorded before the first row; None for a dir not claimed yet."""
        if not self.claimed():
            return None
        try:
            data = read_json(self.paths.model)
        except DamagedFile:
            raise StoreError(
                f"{self.where}: {STATE}/model.json is damaged (not valid JSON), so the dir's model cannot be "
                f"checked; rebuild it from the dir's metadata with: python -m qk_sniffer.verify "
                f"output.dir={self.root} repair=true"
            ) from None
        return data if isinstance(data, dict) else {}

    def recorded_metadata(self) -> dict[str, Any]:
        """The dir's ``qk_sniffer.json``; {} when there is none or it cannot be read (the next run or push
        rewrites it whole, from the manifest)."""
        try:
            data = read_json(self.paths.metadata)
        except (FileNotFoundError, DamagedFile):
            return {}
        return data if isinstance(data, dict) else {}

    def check_claim(self, identity: dict[str, Any]) -> None:
        """Refuse a dir this tool cannot account for, or one that holds another model. Writes nothing."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise StoreError(f"{self.where} exists and is not a directory")
        if root.is_dir() and self.holds_anything():
            self.check_accountable()
            old = self.identity()
            new = plain_json(identity)
            if old != new:
                assert old is not None
                raise StoreError(_other_model(self.where, old, new))
        # Created by the first write, so a run that fails its checks leaves nothing behind; check we could.
        parent = root
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise StoreError(f"{self.where} cannot be created: {str(parent)!r} is not a directory")
        if not os.access(parent, os.W_OK):
            raise StoreError(f"{self.where} is not writable ({str(parent)!r} denies writes)")

    def holds_anything(self) -> bool:
        """Anything but the lock and leases a registration in progress makes (which hold no data)."""
        if not self.root.is_dir():
            return False
        if any(entry.name != STATE for entry in self.root.iterdir()):
            return True
        state = self.paths.state
        return state.exists() and any(e.name not in REGISTRATION_ONLY for e in state.iterdir())

    def check_accountable(self) -> None:
        """A non-empty dir must be one this tool claimed, hold nothing of ours as a symlink, and hold no
        foreign file where the tool writes."""
        if not self.claimed():
            if not self.holds_anything():
                raise StoreError(f"{self.where} is empty: it holds no qk-sniffer capture yet")
            if self.paths.state.exists():
                raise StoreError(
                    f"{self.where}: its manifest is incomplete ({STATE}/model.json is missing), so its rows "
                    "cannot be accounted for; restore .qk_sniffer/ from a copy, or capture into a new "
                    "output.dir"
                )
            if self.paths.metadata.exists():
                raise StoreError(
                    f"{self.where} holds {self.paths.metadata.name} but no manifest ({STATE}/): its rows "
                    "cannot be accounted for, so nothing is added to it; capture into a new output.dir "
                    "(or restore .qk_sniffer/ from a copy)"
                )
            raise StoreError(
                f"{self.where} is not empty and holds no qk-sniffer capture; choose an empty or new directory"
            )
        problems = self.foreign_entries()
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise StoreError(f"{self.where}: {problems[0]}{more}; nothing was changed")

    def foreign_entries(self) -> list[str]:
        """Where the tool writes, anything it did not make: symlinks (which could lead out of the dir) and
        files of other names. Each entry is one phrase naming the path and what to do."""
        out = []
        for entry in sorted(self.root.iterdir()):
            name = entry.name
            ours = name in TOP_LEVEL or CONFIG_NAME.match(name)
            if ours and entry.is_symlink():
                out.append(
                    f"{name} is a symbolic link (to {os.readlink(entry)!r}); qk_sniffer writes only real "
                    "files inside output.dir: replace the link with the directory's contents"
                )
                continue
            if CONFIG_NAME.match(name) and entry.is_dir():
                for item in sorted(entry.iterdir()):
                    if item.is_symlink() or not item.is_file() or not PART_NAME.match(name_of(item)):
                        out.append(f"{name}/{item.name} was not made by qk_sniffer: move it out of the dir")
            elif name == self.paths.figures.name and entry.is_dir():
                for item in sorted(entry.iterdir()):
                    if item.is_symlink() or not FIGURE_PATH.match(f"{name}/{item.name}"):
                        out.append(f"{name}/{item.name} was not made by qk_sniffer: move it out of the dir")
            elif ours and name in (self.paths.card.name, self.paths.metadata.name) and not entry.is_file():
                out.append(f"{name} is not a file: move it out of the dir")
        if self.paths.state.is_dir():
            for item in sorted(self.paths.state.rglob("*")):
                if item.is_symlink():
                    out.append(f"{self.paths.rel(item)} is a symbolic link: remove it")
        return out


def _other_model(where: str, old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if keys == ["weights"]:
        then = (
            f"content sha256 {old['weights']}"
            if old.get("weights")
            else "whose content it does not record (written before qk_sniffer recorded it)"
        )
        return (
            f"{where} holds vectors of other weights than model.name={new.get('name')!r} holds now (there: "
            f"{then}; now: {new.get('weights')}): the checkpoint changed since that capture. Capture "
            "into another output.dir (one set of weights per dir)"
        )
    diff = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)
    return (
        f"{where} holds a capture of a different model or vector kind ({diff}); use another output.dir "
        "(one model per dir and branch)"
    )


def name_of(path: Path) -> str:
    """A part file's name without the temporary suffix a write in flight has."""
    return path.name.removesuffix(TMP_SUFFIX)
