"""docs/performance.md's memory table is the memory model's own output, not a copy that drifts."""

from __future__ import annotations

from pathlib import Path

from qk_sniffer.pipeline.memory_table import render

DOCS = Path(__file__).resolve().parents[2] / "docs" / "performance.md"


def test_the_docs_hold_the_table_the_memory_model_prints():
    table = render()
    assert table in DOCS.read_text(encoding="utf-8"), (
        "docs/performance.md's memory table is stale: paste `python -m qk_sniffer.pipeline.memory_table`"
    )
    assert "| Qwen3-8B | 1,048,576 |" in table and "| Llama-3.1-8B | 131,072 |" in table
