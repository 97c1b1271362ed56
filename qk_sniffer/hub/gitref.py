"""Branch names as git accepts them (``git check-ref-format --branch``), checked before anything runs.

The Hub stores each capture on a git branch; a name git rejects would only fail at push time, after the
whole capture. The rules are git's own, plus the narrower character set the tool has always documented.
"""

from __future__ import annotations

import re

# Letters, digits and . _ - / only: everything else git forbids (space, ~ ^ : ? * [ \, control characters,
# "@{") falls outside this set, and so do characters git allows but URLs and shells mangle.
ALLOWED = re.compile(r"^[A-Za-z0-9._/-]+$")


def branch_problem(branch: str) -> str | None:
    """Why git (or the Hub) would refuse ``branch`` as a branch name, or None when it is fine."""
    if branch == "main":
        return "'main' is reserved for the repo's overview; captures go to a branch per model"
    if not ALLOWED.match(branch):
        return "use only letters, digits and . _ - /"
    if branch.startswith("-"):
        return "a branch name cannot start with '-'"
    if branch.startswith("/") or branch.endswith("/") or "//" in branch:
        return "a branch name cannot start or end with '/' or contain '//'"
    if ".." in branch:
        return "a branch name cannot contain '..'"
    if branch.endswith("."):
        return "a branch name cannot end with '.'"
    for part in branch.split("/"):
        if part.startswith("."):
            return f"no part of a branch name may start with '.' (got {part!r})"
        if part.endswith(".lock"):
            return f"no part of a branch name may end with '.lock' (got {part!r})"
    if branch == "HEAD":
        return "'HEAD' is not a branch name git allows"
    return None
