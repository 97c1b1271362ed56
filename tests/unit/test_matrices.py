"""The support matrix per release: which one a release reads, and where ``make sweep`` writes one."""

from __future__ import annotations

import json

import pytest

from qk_sniffer.capture import backend_facts, matrices, support
from qk_sniffer.commands.families import matrix_json, write_matrix


def _matrix(release: str, status: str = "exact") -> dict:
    entry = {"status": status, "reason": "" if status == "exact" else "measured", "tiny_config": {}}
    return {"transformers": release, "tolerance": 0.0001, "families": {"llama": entry}}


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """Matrices measured on 5.0.0 and 5.10.4 beside a newest one of 5.24.0, in a resources dir of its own."""
    resources = tmp_path / "qk_sniffer" / "resources"
    (resources / "families").mkdir(parents=True)
    (resources / "families.json").write_text(matrix_json(_matrix("5.24.0")))
    for release in ("5.0.0", "5.10.4"):
        (resources / "families" / f"{release}.json").write_text(matrix_json(_matrix(release, "mismatch")))
    monkeypatch.setattr(matrices, "MATRIX_PATH", resources / "families.json")
    monkeypatch.setattr(matrices, "RELEASE_MATRICES", resources / "families")
    return resources


@pytest.mark.parametrize(
    ("installed", "measured_on", "here"),
    [
        ("5.10.4", "5.10.4", True),  # its own
        ("5.17.0", "5.10.4", False),  # the nearest older one
        ("5.10.3", "5.0.0", False),
        ("5.24.0", "5.24.0", True),  # the newest: families.json
        ("5.25.0", "5.24.0", False),
        ("5.25.0.dev0", "5.24.0", False),
        ("5.24.0.dev0", "5.10.4", False),  # a pre-release comes before its release
        ("4.57.6", "5.0.0", False),  # older than every matrix: the oldest
    ],
)
def test_a_release_reads_its_own_matrix_or_the_nearest_older_one(shipped, installed, measured_on, here):
    choice = matrices.matrix_choice(installed)
    assert (choice.measured_on, choice.measured_here) == (measured_on, here)
    assert json.loads(choice.path.read_text())["transformers"] == measured_on


def test_the_matrix_in_use_is_the_installed_releases(shipped, monkeypatch):
    monkeypatch.setattr(backend_facts, "installed_release", lambda: "5.12.0")
    assert support.support_matrix()["transformers"] == "5.10.4"
    assert support.matrix_entry("llama")["status"] == "mismatch"
    error = support.matrix_refusal("llama", "LlamaForCausalLM", support.matrix_entry("llama"))
    assert str(error) == (
        "model family 'llama' (LlamaForCausalLM) cannot be captured exactly: mismatch: measured (measured by "
        "the family sweep on transformers 5.10.4, the nearest to the installed 5.12.0; see docs/families.md"
        "). Nearest supported: see docs/families.md for every exact family"
    )


def test_a_sweep_of_an_older_release_is_written_into_its_own_file(shipped):
    write_matrix(_matrix("5.17.0"), {}, {})
    assert json.loads((shipped / "families" / "5.17.0.json").read_text()) == _matrix("5.17.0")
    assert json.loads((shipped / "families.json").read_text())["transformers"] == "5.24.0"
    assert matrices.measured_releases().keys() == {"5.0.0", "5.10.4", "5.17.0", "5.24.0"}


def test_a_sweep_of_a_newer_release_becomes_the_shipped_matrix_and_keeps_the_one_it_replaces(
    shipped, monkeypatch
):
    pages = []
    monkeypatch.setattr("qk_sniffer.families.docs.docs_page", lambda *a: pages.append("docs") or "docs\n")
    monkeypatch.setattr("qk_sniffer.families.docs.replace_readme_table", lambda readme, m: readme + "table")
    (shipped.parent.parent / "README.md").write_text("readme ")
    write_matrix(_matrix("5.25.0"), {}, {})
    assert json.loads((shipped / "families.json").read_text())["transformers"] == "5.25.0"
    assert json.loads((shipped / "families" / "5.24.0.json").read_text()) == _matrix("5.24.0")
    assert (shipped.parent.parent / "docs" / "families.md").read_text() == "docs\n"
    assert (shipped.parent.parent / "README.md").read_text() == "readme table"
    assert matrices.measured_releases().keys() == {"5.0.0", "5.10.4", "5.24.0", "5.25.0"}
