"""The figures of a capture, drawn from its committed rows (``python -m qk_sniffer.report`` draws them too).

The PNGs go to ``PATH/figures/`` with ``figures.json``, which records the committed files they were drawn
from. They are part of the dataset (pushed with it, linked from the card), and the card links them only
while that record matches what the dir commits now: figures of older data are never shown as current.
A run redraws them at the end (``report.enabled``); this command redraws them on demand.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from ..core.errors import UserError
from ..store import Store
from ..store.files import atomic_file
from ..store.layout import FIGURES, METADATA
from .loading import CommittedPart, committed_parts

# Every figure, in the card's order (the PNG stems).
FIGURE_NAMES = (
    "rows_per_bucket",
    "mean_norm_by_layer_bucket",
    "norm_vs_position",
    "coverage",
    "logit_vs_distance",
)

# What each figure is drawn from: the norm sums, the logits by distance, or the listing alone (a drawer of
# some figures computes only what they need).
NEEDS = {
    "rows_per_bucket": "norms",
    "mean_norm_by_layer_bucket": "norms",
    "norm_vs_position": "norms",
    "coverage": None,
    "logit_vs_distance": "logits",
}

log = logging.getLogger(__name__)

INDEX = "figures.json"


def data_fingerprint(parts: dict[str, list[CommittedPart]]) -> str:
    """A hash of what each config holds (its rows and the recipes they come from): it changes whenever the
    rows do, and not when compaction only merges the same rows into fewer files."""
    listing = sorted(
        f"{config}:{sum(p.rows for p in files)}:{','.join(sorted({p.recipe for p in files}))}"
        for config, files in parts.items()
    )
    return hashlib.sha256("\n".join(listing).encode()).hexdigest()[:16]


# Who writes the PNGs of a dir: (root, its committed parts, its layout, the figure names) -> names written.
PngWriter = Callable[[Path, dict[str, list[CommittedPart]], dict[str, object], Sequence[str]], list[str]]


def render_figures(root: Path, write: PngWriter | None = None) -> list[Path]:
    """Draw every figure of ``root`` into ``root/figures/``; returns the PNG paths. ``write``: who draws
    them (:func:`write_pngs` here, or a run's helper processes, each a share of the names)."""
    root = root.expanduser()
    layout = capture_layout(root)
    parts = committed_parts(root)
    if not parts:
        raise UserError(f"output.dir={str(root)!r} holds no committed rows to draw")
    out = root / FIGURES
    previous = _index(root).get("figures", [])
    # Until every PNG is replaced the record matches no data: a crash midway never passes a mix of old
    # and new figures off as current.
    with atomic_file(out / INDEX, "w") as f:
        json.dump({"data": None, "figures": previous}, f, indent=1)
    written = set((write or write_pngs)(root, parts, layout, FIGURE_NAMES))
    drawn = [name for name in FIGURE_NAMES if name in written]
    for name in set(previous) - set(drawn):  # a figure this data no longer has (only files we made)
        (out / f"{name}.png").unlink(missing_ok=True)
    with atomic_file(out / INDEX, "w") as f:
        json.dump({"data": data_fingerprint(parts), "figures": drawn}, f, indent=1)
    return [out / f"{name}.png" for name in drawn]


def write_pngs(
    root: Path, parts: dict[str, list[CommittedPart]], layout: dict[str, object], names: Sequence[str]
) -> list[str]:
    """Draw the figures ``names`` of these parts into ``root/figures/``; returns the names drawn (the logit
    figure needs query and key rows of one layer: without them it is not drawn)."""
    from .numbers import aggregates, coverage
    from .plots import PNG_OPTIONS, draw_all

    needs = {NEEDS[name] for name in names}
    norms, logits = aggregates(parts, layout, norms="norms" in needs, logits="logits" in needs)
    figures = draw_all(norms, coverage(parts, layout), logits, _layers(layout), names)
    for name, figure in figures.items():
        with atomic_file(root / FIGURES / f"{name}.png", "wb") as f:
            figure.savefig(f, format="png", pil_kwargs=PNG_OPTIONS)
    return list(figures)


def capture_layout(root: Path) -> dict[str, object]:
    if not root.is_dir():
        raise UserError(f"output.dir={str(root)!r} does not exist")
    layout = Store(root).recorded_metadata().get("layout")
    if not layout:
        raise UserError(f"output.dir={str(root)!r} holds no qk-sniffer capture ({METADATA} is missing)")
    return dict(layout)


def _layers(layout: dict[str, object]) -> int:
    return int(str(layout["num_layers"]))


def _index(root: Path) -> dict[str, list[str] | str]:
    path = root / FIGURES / INDEX
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def current_figures(root: Path) -> list[Path]:
    """The PNGs drawn from exactly the data ``root`` commits now (none when they are out of date)."""
    index = _index(root)
    try:
        fresh = index.get("data") == data_fingerprint(committed_parts(root))
    except UserError:
        return []
    names = index.get("figures", []) if fresh else []
    return [p for p in (root / FIGURES / f"{n}.png" for n in names) if p.is_file()]


def figure_section(root: Path) -> list[str]:
    """The card's "Figures" section: every current figure embedded by a relative link."""
    figures = current_figures(root)
    if figures:
        lines = ["## Figures", ""]
        for path in figures:
            title = path.stem.replace("_", " ").capitalize()
            lines += [f"![{title}]({FIGURES}/{path.name})", ""]
        return lines
    if (root / FIGURES / INDEX).exists():
        return [
            "## Figures",
            "",
            f"The figures in `{FIGURES}/` were drawn from older data; redraw them with "
            "`python -m qk_sniffer.report output.dir=<this dir>`.",
            "",
        ]
    return []


def render_after_run(root: Path, write: PngWriter | None = None) -> None:
    """The run's last step: a failure to draw is logged, never fatal (the rows are committed already).
    Figures already drawn from exactly the data the dir commits now (a rerun that wrote nothing) stay."""
    drawn = _index(root).get("figures", [])
    if drawn and len(current_figures(root)) == len(drawn):
        log.info("figures: current already (the data did not change)")
        return
    try:
        paths = render_figures(root, write)
    except Exception as exc:  # noqa: BLE001 - figures must not turn a finished capture into a failed one
        log.warning(
            "drawing the figures failed (%s); redraw them with: python -m qk_sniffer.report output.dir=%s",
            exc,
            root,
        )
        return
    log.info("figures: %s", ", ".join(p.name for p in paths))
