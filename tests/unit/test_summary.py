"""The text a finished run prints: rows per config, the card and figures, and the next commands."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

from qk_sniffer.tracking.summary import EndSummary, rows_table


def test_a_few_configs_get_one_line_each_and_the_next_commands_name_the_dir(tmp_path):
    figures = [tmp_path / "figures" / "coverage.png", tmp_path / "figures" / "rows_per_bucket.png"]
    summary = EndSummary(
        tmp_path, {"l00h01q": 1234, "l00h00k": 5, "l00h00q": 1234}, tmp_path / "README.md", figures
    )
    text = "\n".join(summary.lines())
    assert text.startswith(
        "dataset: 3 configs, 2,473 rows\n\n  config   rows\n  l00h00k  5\n  l00h00q  1,234\n"
    )
    assert f"card:    {tmp_path / 'README.md'}" in text
    assert f"figures: {tmp_path / 'figures'}/ (coverage.png, rows_per_bucket.png)" in text
    commands = summary.next_commands()
    # The first query config, and a publish command since nothing was pushed; figures were drawn.
    assert "qk_sniffer.load(" in commands[0] and "'l00h00q'" in commands[0]
    assert commands[1].startswith(f"python -m qk_sniffer.publish output.dir={shlex.quote(str(tmp_path))} ")
    assert len(commands) == 2


def test_the_load_command_names_the_dir_exactly_even_with_quotes_in_it(tmp_path):
    odd = tmp_path / 'it\'s "here"'
    command = EndSummary(odd, {"l00h00q": 1}).next_commands()[0].split("   #")[0]
    argv = shlex.split(command)  # as the shell hands it over
    assert argv[:2] == ["python", "-c"]
    strings = [node.value for node in ast.walk(ast.parse(argv[2])) if isinstance(node, ast.Constant)]
    assert strings == [str(odd), "l00h00q", 8]


def test_many_configs_are_summed_up_per_layer():
    configs = {
        f"l{layer:02d}h{head:02d}{kind}": 10 + head
        for layer in range(3)
        for head in range(8)
        for kind in "qk"
    }
    lines = rows_table(configs)
    assert len(lines) == 4  # a header and one line per layer
    assert lines[1].split() == ["0", "8", "(10-17)", "8", "(10-17)"]


def test_a_run_without_figures_says_how_to_draw_them_and_a_pushed_one_where_it_went(tmp_path):
    summary = EndSummary(Path(tmp_path), {"l00h00q": 1}, figures_off=True, dataset_url="https://hf.co/x")
    commands = summary.next_commands()
    assert any(c.startswith("python -m qk_sniffer.report output.dir=") for c in commands)
    assert not any("qk_sniffer.publish" in c for c in commands)
    assert "pushed:  https://hf.co/x" in summary.lines()
