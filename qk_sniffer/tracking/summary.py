"""What a finished run prints: what the dataset holds now (rows per config), where its card and figures are,
and the commands a newcomer runs next. Plain text from plain values, so every way in can print it."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ..core.naming import parse_config_name

# Up to this many configs the table has one line per config; past it, one line per layer.
MAX_CONFIG_LINES = 16


@dataclass
class EndSummary:
    """``configs``: rows per config the dataset holds (every shard and earlier run merged into the dir)."""

    output_dir: Path
    configs: dict[str, int]
    card: Path | None = None
    figures: list[Path] = field(default_factory=list)
    dataset_url: str | None = None
    # Why no figures are listed: drawing was off for this run (report.enabled=false).
    figures_off: bool = False

    def lines(self) -> list[str]:
        out = [f"dataset: {len(self.configs)} configs, {sum(self.configs.values()):,} rows", ""]
        out += [f"  {line}" for line in rows_table(self.configs)]
        out.append("")
        if self.card is not None:
            out.append(f"card:    {self.card}")
        if self.figures:
            out.append(f"figures: {self.figures[0].parent}/ ({', '.join(p.name for p in self.figures)})")
        if self.dataset_url:
            out.append(f"pushed:  {self.dataset_url}")
        return out + ["", "next:", *(f"  {command}" for command in self.next_commands())]

    def next_commands(self) -> list[str]:
        where = shlex.quote(str(self.output_dir))
        queries = sorted(c for c in self.configs if c.endswith("q")) or sorted(self.configs) or ["l00h00q"]
        load = (
            f"import qk_sniffer; rows = qk_sniffer.load({str(self.output_dir)!r}, {queries[0]!r}); "
            "print(rows.vectors.shape, rows.positions[:8])"
        )
        # Double quotes read best in a shell; single-quote the code only when the path needs it.
        shown = f'"{load}"' if not set(load) & set('"$`\\!') else shlex.quote(load)
        commands = [f"python -c {shown}   # the rows as numpy arrays"]
        if self.figures_off:
            commands.append(f"python -m qk_sniffer.report output.dir={where}   # draw the figures")
        if not self.dataset_url:
            commands.append(
                f"python -m qk_sniffer.publish output.dir={where} output.hub.repo_id=<you>/<name>"
                "   # push it to the Hub"
            )
        return commands


def rows_table(configs: dict[str, int]) -> list[str]:
    """Rows per config; with many configs, per layer: how many query and key configs and their rows."""
    if len(configs) <= MAX_CONFIG_LINES:
        width = max((len(c) for c in configs), default=6)
        return [f"{'config':<{width}}  rows", *(f"{c:<{width}}  {n:,}" for c, n in sorted(configs.items()))]
    by_layer: dict[int, dict[str, list[int]]] = {}
    for config, rows in configs.items():
        parsed = parse_config_name(config)
        if parsed is None:
            continue
        layer, _, kind = parsed
        by_layer.setdefault(layer, {"q": [], "k": []})[kind].append(rows)
    lines = ["layer  query configs (rows each)   key configs (rows each)"]
    for layer, kinds in sorted(by_layer.items()):
        q, k = (f"{len(kinds[kind]):>3} ({_spread(kinds[kind])})" for kind in ("q", "k"))
        lines.append(f"{layer:>5}  {q:<26}  {k}")
    return lines


def _spread(rows: list[int]) -> str:
    if not rows:
        return "-"
    low, high = min(rows), max(rows)
    return f"{low:,}" if low == high else f"{low:,}-{high:,}"
