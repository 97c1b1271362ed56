"""Branch names: what `git check-ref-format --branch` refuses is refused before anything runs."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from qk_sniffer.hub.gitref import branch_problem

GOOD = ["qwen3-8b-longbench-pro-128k-plus", "exp/run-1", "a.b/c_d", "v1.2", "x.locked/y"]
BAD = [
    "a//b",
    "a/.hidden",
    "x.lock/y",
    "a.lock",
    "a..b",
    "end.",
    "/lead",
    "trail/",
    "-x",
    "a b",
    "a@{b",
    "a~1",
    "a^",
    "a:b",
    "a?",
    "a*",
    "a[b",
    "a\\b",
    "HEAD",
    "main",
    "",
]


@pytest.mark.parametrize("branch", GOOD)
def test_good_names_pass(branch):
    assert branch_problem(branch) is None


@pytest.mark.parametrize("branch", BAD)
def test_bad_names_are_refused(branch):
    assert branch_problem(branch)


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
@pytest.mark.parametrize("branch", [b for b in GOOD + BAD if b not in ("main", "HEAD")])
def test_agrees_with_git_where_git_refuses(branch):
    """Everything git refuses we refuse (we are stricter on characters, never looser)."""
    git_ok = (
        subprocess.run(["git", "check-ref-format", "--branch", branch], capture_output=True).returncode == 0
    )
    if not git_ok:
        assert branch_problem(branch) is not None
    if branch in GOOD:
        assert git_ok
