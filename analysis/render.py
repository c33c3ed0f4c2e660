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


# From this magnitude on a number is written in scientific notation: a blown-up but finite run's
# cross-entropy (1.3e35) would otherwise print as a 36-digit integer. Every meaningful value of the
# tables (a percentage, nats, a perplexity) stays below it.
LARGE = 1e6


def format_number(value: float, decimals: int) -> str:
    """Fixed decimals; 'n/a' for NaN; scientific when nonzero but below the last decimal, or at
    least ``LARGE`` in magnitude (``1.30e+35``); ``inf`` as it is."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return str(float(value))
    if abs(value) >= LARGE:
        return f"{value:.2e}"
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


# --- figures of many groups --------------------------------------------------------------
# Matplotlib's default cycle repeats after ten colours, and legends drawn inside the axes cover
# the data once a sweep has a dozen groups with long labels. Every figure that draws one mark per
# group takes its styles, its legend and its height from here, so a sweep of 40 groups stays
# readable (``tests/test_report.py`` draws every figure with 24 long labels).

LINESTYLES = ("-", "--", ":", "-.")
BAR_HATCHES = (None, "//", "..", "xx")  # a bar's stand-in for the line style of the same index


def group_styles(n: int) -> list[dict]:
    """``n`` distinct ``{"color", "linestyle"}`` pairs: tab10 by solid, dashed, dotted and
    dash-dot lines up to 40 groups, tab20 by them up to 80; only past 80 does a pair repeat."""
    from matplotlib import colormaps

    colors = colormaps["tab10" if n <= 10 * len(LINESTYLES) else "tab20"].colors
    return [{"color": colors[i % len(colors)], "linestyle": LINESTYLES[(i // len(colors)) % len(LINESTYLES)]}
            for i in range(n)]


def bar_styles(n: int) -> list[dict]:
    """``group_styles`` for bars: ``{"color", "hatch"}``, the hatch standing in for the line style."""
    return [{"color": s["color"], "hatch": BAR_HATCHES[LINESTYLES.index(s["linestyle"])]} for s in group_styles(n)]


def style_groups(*axes, n: int) -> None:
    """Give each axes the ``group_styles(n)`` cycle, so its i-th line is group i's on every panel."""
    from cycler import cycler

    styles = group_styles(n)
    if not styles:  # no group to draw (a sweep with no finished run): matplotlib's cycle stays
        return
    for ax in axes:
        ax.set_prop_cycle(cycler(color=[s["color"] for s in styles], linestyle=[s["linestyle"] for s in styles]))


def legend_columns(n: int) -> int:
    """One column of legend entries up to 24, then two (40 groups: 20 rows)."""
    return 1 if n <= 24 else 2


def legend_inches(n: int) -> float:
    """The height in inches a legend of ``n`` entries at ``fontsize="small"`` needs."""
    return 0.6 + 0.21 * math.ceil(n / legend_columns(n))


def beside_inches(n: int) -> float:
    """The height in inches of a figure whose one row of axes has a ``legend_beside`` of ``n``
    entries: the legend, and the axes' title and x label around it."""
    return legend_inches(n) + 1.0


def text_inches(labels: Sequence[str], size: str = "medium") -> float:
    """The width in inches of the widest of these labels at a matplotlib font size
    (``"medium"``: tick labels, ``"small"``: legends), as the Agg renderer lays it out."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    font = FontProperties(size=size)
    widths = [TextToPath().get_text_width_height_descent(str(label), font, ismath=False)[0] for label in labels]
    return max(widths, default=0.0) / 72.0


def legend_width_inches(labels: Sequence[str]) -> float:
    """How wide a legend of these labels at ``fontsize="small"`` is, in inches: the text, the
    line's handle and the padding of each column."""
    return legend_columns(len(labels)) * (0.6 + text_inches(labels, "small"))


def label_inches(labels: Sequence[str]) -> float:
    """How wide the widest of these tick labels is, in inches, with the ticks beside them."""
    return 0.2 + text_inches(labels)


def figure_legend(fig, handles, labels, title: str | None = None):
    """One legend for the whole figure, right of its axes (the constrained layout makes room),
    in two columns past 24 entries; the figure widens by the legend's width, and grows taller
    when the legend needs it, so the axes keep their size. Call it after ``fig.suptitle``."""
    width, height = fig.get_size_inches()
    legend_width = legend_width_inches(labels)
    fig.set_size_inches(width + legend_width, max(height, legend_inches(len(labels))))
    if fig.get_suptitle():  # centred over the axes, not over the legend's column, which it would cross
        fig.suptitle(fig.get_suptitle(), x=0.5 * width / (width + legend_width))
    return fig.legend(handles, labels, loc="outside right upper", fontsize="small", title=title,
                      title_fontsize="small", ncols=legend_columns(len(labels)))


def shared_legend(fig, axes) -> None:
    """One ``figure_legend`` for a grid of axes (a row, or rows of them) whose legends would read
    the same; where their labels differ (``plot_spread`` counts each panel's zeros), each axes
    keeps its own beside it, and the figure grows to hold them."""
    import numpy as np

    grid = np.atleast_2d(np.asarray(axes, dtype=object))
    entries = [ax.get_legend_handles_labels() for ax in grid.ravel()]
    if all(labels == entries[0][1] for _, labels in entries):
        figure_legend(fig, *entries[0])
        return
    rows, columns = grid.shape
    width, height = fig.get_size_inches()
    fig.set_size_inches(width + columns * max(legend_width_inches(labels) for _, labels in entries),
                        max(height, rows * legend_inches(len(entries[0][1]))))
    for ax in grid.ravel():
        legend_beside(ax)


def legend_beside(ax, title: str | None = None, **kwargs):
    """``ax``'s legend right of it, outside the data (the constrained layout makes room)."""
    handles, labels = ax.get_legend_handles_labels()
    return ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
                     title=title, title_fontsize="small", ncols=legend_columns(len(labels)), **kwargs)


def bars_inches(n: int, per_group: float = 0.28) -> float:
    """Height in inches of a horizontal bar chart of ``n`` groups (one label per row)."""
    return max(2.5, per_group * n + 1.2)


def group_barh(ax, labels: Sequence[str]) -> None:
    """Group labels on ``ax``'s y axis, the first group at the top (the order of the table)."""
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)


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


class OutputError(Exception):
    """An output the analysis cannot write (a read-only file system, a full disk); its message is
    the one line the command prints."""


@contextmanager
def writing(option: str, path: Path) -> Iterator[None]:
    """``with writing("report", path): ...``: an ``OSError`` while writing ``--option PATH`` (a
    file, or for ``--figures`` a folder) becomes ``OutputError``, one line naming it and the fix.
    An error about a file elsewhere (a run's file read on the way) is not the output's: it passes."""
    try:
        yield
    except OSError as e:
        path = Path(path)
        folder = (path if option == "figures" else path.parent).resolve()
        failed = Path(str(e.filename)).resolve() if e.filename is not None else folder
        if failed != folder and folder not in failed.parents and failed not in folder.parents:
            raise
        raise OutputError(f"error: --{option} {path}: cannot write it ({e.strerror or e}); write it elsewhere: "
                          f"--{option} a path on a writable file system") from None


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
