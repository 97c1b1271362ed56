"""The README's "Use from Python" snippet runs as written, offline, on the embedded default model."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from helpers import REPO, read_configs


def python_snippet(readme: str, heading: str) -> str:
    """The first ```python block between ``heading`` and the next second-level heading."""
    section = readme.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"no python block under {heading}"
    return match.group(1)


def test_use_from_python_snippet_runs(tmp_path):
    snippet = python_snippet((REPO / "README.md").read_text(), "## Use from Python")
    script = tmp_path / "snippet.py"
    script.write_text(snippet)  # the embedded model: 4 layers, 4 query heads, 2 key/value heads, head_dim 16
    # The checkout first on the path: an editable install made before qk_sniffer/__init__.py existed maps the
    # package as a namespace without it.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",  # offline as written: nothing may reach the Hub
    }
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr

    out = tmp_path / "qk-out"
    tables = read_configs(out)
    assert sorted(tables) == sorted(
        f"l{layer:02d}h{head:02d}{kind}"
        for layer in (0, 1)
        for kind, heads in (("q", 4), ("k", 2))
        for head in range(heads)
    )
    q = tables["l00h00q"]
    ids, positions = q.column("example_id").to_pylist(), q.column("position").to_pylist()
    assert set(ids) == {0, 1}
    for example in (0, 1):  # sampler="all": every position of each text, in order
        mine = [p for e, p in zip(ids, positions, strict=True) if e == example]
        assert mine == list(range(len(mine))) and len(mine) > 5
    first_line = proc.stdout.splitlines()[0]
    assert first_line == f"{q.num_rows} ({q.num_rows}, 16)"
    assert "num_rows" in proc.stdout  # the load_dataset round trip printed the dataset
    assert (out / "README.md").read_text().startswith("---\nconfigs:\n")
