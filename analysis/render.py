"""How the analysis writes what it computed: numbers, markdown tables and figure files.

    python -m analysis SWEEP_DIR [--figures DIR]    # every table and figure goes through here

The leaf of the package: it imports nothing from ``analysis``, and every module that renders
(``tables``, ``snapshot``, ``onset``, ``instability``, ``shamir``, ``stats_figures``, ``figures``,
``report``; ``load`` for its group labels) imports it, so a number is formatted, a table laid out
and a figure saved one way everywhere. ``paper`` and ``figures`` only choose which sections a
sweep has; no section imports them (``tests/test_analysis_layers.py``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator, Sequence

PM = " ± "


def format_number(value: float, decimals: int) -> str:
    """Fixed decimals; 'n/a' for NaN; scientific when nonzero but below the last decimal."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if decimals == 0:
        return str(int(value))
    if value != 0 and abs(value) < 0.5 * 10.0**-decimals:
        return f"{value:.1e}"
    return f"{value:.{decimals}f}"


def with_error(value: float, error: float | None, decimals: int, pm: str = PM) -> str:
    """``value ± error`` at ``decimals``; the value alone when it is n/a or has no error."""
    text = format_number(value, decimals)
    if error is None or text == "n/a":
        return text
    return f"{text}{pm}{format_number(error, decimals)}"


def format_value(value) -> str:
    """A configuration value as text: lists (tuples once grouped) as ``[a,b]``."""
    if isinstance(value, tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def column_header(key: str) -> str:
    """A configuration key as a table header: ``source.name`` is the paper's "Source"."""
    return "Source" if key == "source.name" else key


def row_label(values: Sequence, keys: Sequence[str]) -> str:
    """A group's label for a legend: ``init, model.width=64`` (the source by its name alone)."""
    return ", ".join(str(v) if k == "source.name" else f"{k}={format_value(v)}" for k, v in zip(keys, values))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1) -> str:
    """A markdown table: the first ``text_columns`` columns left-aligned, the rest numbers
    (right-aligned). No trailing newline."""
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    return "\n".join("| " + " | ".join(str(c) for c in cells) + " |" for cells in [header, align, *rows])


# Inside ``collected()``, figures are handed over as (stem, figure), and written to files only
# with ``write=True``: (the list, write).
_COLLECTED: ContextVar[tuple[list, bool] | None] = ContextVar("collected_figures", default=None)


@contextmanager
def collected(write: bool = False) -> Iterator[list]:
    """``with collected() as figures: write_figures(...)``: the (stem, Figure) pairs, no files
    (the HTML report, ``analysis/report.py``, embeds them). ``write=True`` writes the files too:
    ``python -m analysis SWEEP --figures DIR --report FILE`` draws each figure once for both."""
    figures: list = []
    token = _COLLECTED.set((figures, write))
    try:
        yield figures
    finally:
        _COLLECTED.reset(token)


def save_figure(fig, out_dir: Path, stem: str) -> list[Path]:
    """``DIR/STEM.png`` and ``DIR/STEM.pdf`` (150 dpi, tight); inside ``collected()``, no file
    unless it was asked to write them as well."""
    state = _COLLECTED.get()
    if state is not None:
        figures, write = state
        figures.append((stem, _undrawn_copy(fig) if write else fig))
        if not write:
            return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return paths


def _undrawn_copy(fig):
    """A copy of a figure not yet drawn, to be drawn elsewhere (the report's PNG) after the
    original is saved. Each draw re-runs the constrained layout from where the last one left the
    axes, which moves them by a fraction of a pixel; the copy starts where a fresh figure does,
    so its image is byte for byte the one drawing the figure again would give. Matplotlib copies
    figures by pickling; one that cannot be pickled is shared as it is."""
    import pickle

    try:
        return pickle.loads(pickle.dumps(fig))
    except (pickle.PicklingError, TypeError, AttributeError):
        return fig
