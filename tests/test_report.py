"""The HTML report: ``python -m analysis SWEEP_DIR --report FILE``, built from fake run directories
and, where Chromium is installed (required under CI=true), rendered in headless Chromium.

    NONDET_UPDATE_SCREENSHOT=1 pytest tests/test_report.py    # also refreshes docs/report.png
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import report
from analysis.__main__ import main
from chromium import find_chromium, load_page
from conftest import REPO, read_only
from fake_runs import fake_config, metrics_rows, random_logits, write_group, write_run
from nondet import records

SOURCES = ("init", "shuffle", "bitflip")


def small_sweep(root, onsets=(0,)):
    """Three sources x 3 replicates (x onsets) with per-epoch metrics and env.json, plus a failed,
    an unfinished and a corrupt run."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 60)
    for source in SOURCES:
        for onset in onsets:
            config = fake_config(**{"source.name": source, "source.vary": [source]},
                                 onset_epoch=onset, output_root=str(root), sweep_name="s")
            metrics = [metrics_rows(rng, 4) for _ in range(3)]
            for path in write_group(config, random_logits(rng, 3, 60, 4), labels, metrics):
                records.write_json(path / records.ENV_FILE, {"torch": "2.x", "device": "cpu",
                                                             "git_commit": "0123abc", "host": "node1"})
    config = fake_config(**{"source.name": "init", "source.vary": ["init"]}, output_root=str(root),
                         sweep_name="s", replicates=5)
    write_run(records.run_dir(config, 3), dict(config, replicate=3), error="Traceback\nRuntimeError: boom")
    write_run(records.run_dir(config, 4), dict(config, replicate=4), result=False)
    write_run(records.run_dir(config, 5), dict(config, replicate=5), result={"test_accuracy": 1.0})  # no logits
    return root / "s"


def images(text):
    return re.findall(r'<img src="([^"]*)"', text)


def test_report_is_one_self_contained_page_with_table_notes_figures_config_and_environment(tmp_path, capsys):
    sweep = small_sweep(tmp_path)
    out = tmp_path / "report.html"
    assert main([str(sweep), "--report", str(out), "--bootstrap", "100"]) == 0
    assert f"Report: {out}" in capsys.readouterr().err
    text = out.read_text()
    # Nothing fetched from elsewhere: every image is inline, no script, no style sheet link.
    assert all(src.startswith("data:image/png;base64,") for src in images(text))
    assert not re.search(r"<script|<link|<iframe|url\(", text)
    summary = text.split('<table class="summary">', 1)[1].split("</table>", 1)[0]
    assert summary.count("<tr>") == 1 + len(SOURCES)
    assert "1 failed" in text and "1 unfinished" in text and "RuntimeError: boom" in text
    assert "Notes (1 failed, 1 unfinished, 1 corrupt)" in text  # counts runs, not the advice line
    # Variability bars, the spread over epochs, test-set noise and best of k, each with its caption.
    assert len(images(text)) == text.count("<figcaption>") == 4
    for stem in ("variability", "cross_entropy_spread", "test_set_noise", "best_of_k"):
        assert report.CAPTIONS[stem] in text.replace("&#x27;", "'")
    assert "source.name" in text and "0123abc" in text and "keys shared by every run" in text


def test_report_says_every_sentence_and_note_the_markdown_summary_says(tmp_path, capsys):
    import html

    sweep = small_sweep(tmp_path)
    out = tmp_path / "report.html"
    assert main([str(sweep), "--report", str(out), "--bootstrap", "100"]) == 0
    markdown = capsys.readouterr().out
    page = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", out.read_text())).split())
    said = [" ".join(line.removeprefix("- ").split()) for line in markdown.splitlines()
            if line.strip() and not line.startswith("|")]
    assert any(line.startswith("Share of the accuracy variance that is finite-test-set noise") for line in said)
    assert [line for line in said if line not in page] == []


def test_the_sweep_structure_and_cka_add_their_figures_and_registered_figures_are_picked_up(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from analysis.load import load_sweep
    from analysis.tables import summary_frame

    sweep = load_sweep(small_sweep(tmp_path, onsets=(0, 2)))
    frame = summary_frame(sweep, 20, 0)
    keys = sweep.display_keys
    cka = pd.DataFrame([{**{k: row[k] for k in keys}, "layer": layer, "cka_mean": 0.9, "cka_sd": 0.01,
                         "n_runs": 3, "n_pairs": 3, "estimator": "standard", "probe_size": 60}
                        for _, row in frame.iterrows() for layer in ("fc1", "fc2")])

    def extra(inputs):
        fig = Figure()
        fig.subplots().plot([0, 1], [len(inputs.sweep.groups)] * 2)
        return fig, "A registered figure."

    def broken(inputs):
        raise ValueError("no data")

    monkeypatch.setattr(report, "FIGURES", [*report.FIGURES, extra, broken])
    text = report.render(report.ReportInputs(sweep, frame, cka, 20, 0))
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", text.replace("&#x27;", "'"))
    stems = ("variability", "cka", "cross_entropy_spread", "onset", "test_set_noise", "best_of_k")
    assert captions[:6] == [report.CAPTIONS[s] for s in stems]
    assert captions[6].startswith("Mean CKA between pairs of runs, per group") and captions[7:] == [
        "A registered figure."]
    assert "Figure test_the_sweep_structure_and_cka_add_their_figures_and_registered_figures_are_picked_up." \
           "&lt;locals&gt;.broken could not be drawn: ValueError: no data" in text
    assert "Linear CKA (standard HSIC)" in text  # the CKA table beside its figure


def test_report_renders_in_headless_chromium(tmp_path):
    chromium = find_chromium()
    if chromium is None:
        message = "Chromium is not installed (apt-get install chromium): the report is not rendered"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path / "report.html"
    assert main([str(small_sweep(tmp_path)), "--report", str(out), "--bootstrap", "100"]) == 0
    expected = len(images(out.read_text()))
    shot = tmp_path / "report.png"
    page = load_page(chromium, out, """({
        rows: document.querySelectorAll('table.summary tbody tr').length,
        figures: document.querySelectorAll('figure').length,
        drawn: Array.from(document.images).filter(i => i.complete && i.naturalWidth > 100).length,
        visible: Array.from(document.querySelectorAll('table.summary, figure img'))
            .filter(e => e.getBoundingClientRect().width > 100).length,
    })""", screenshot=shot)
    assert page.errors == []
    assert [u for u in page.requests if not u.startswith(("file:", "data:"))] == []
    assert page.value == {"rows": len(SOURCES), "figures": expected, "drawn": expected, "visible": 1 + expected}
    assert shot.stat().st_size > 10_000
    if os.environ.get("NONDET_UPDATE_SCREENSHOT"):
        from PIL import Image

        Image.open(shot).convert("RGB").quantize(64).save(REPO / "docs" / "report.png", optimize=True)


def test_every_output_on_a_read_only_file_system_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    """--report, --csv, --latex and --figures into a folder of a read-only file system (EROFS,
    which os.access does not see): one line naming the option, the path and the fix; exit 2."""
    from analysis import figures

    sweep, ro = small_sweep(tmp_path), tmp_path / "ro"
    ro.mkdir()
    # A figure saved into --figures DIR (the report draws its own in memory: Path("."), no file).
    monkeypatch.setattr(figures, "write_figures",
                        lambda sweep, frame, out, cka: open(out / "f.png", "wb") if out != Path(".") else [])
    read_only(monkeypatch, ro)
    for option, path in (("report", ro / "report.html"), ("csv", ro / "t.csv"), ("latex", ro / "t.tex"),
                         ("figures", ro / "figs")):
        assert main([str(sweep), f"--{option}", str(path), "--bootstrap", "100"]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line == (f"error: --{option} {path}: cannot write it (Read-only file system); write it "
                        f"elsewhere: --{option} a path on a writable file system")


def test_broken_runs_get_their_badge_and_note(tmp_path):
    """A run whose config.yaml is gone is left out as broken: the page counts and names it."""
    sweep = small_sweep(tmp_path)
    broken = next(p.parent for p in sorted(sweep.rglob("result.json")))
    (broken / records.CONFIG_FILE).unlink()
    out = tmp_path / "report.html"
    assert main([str(sweep), "--report", str(out), "--bootstrap", "100"]) == 0
    text = out.read_text()
    assert '<span class="bad">1 broken</span>' in text
    assert '<li class="broken">' in text


def test_figures_and_report_together_draw_each_figure_once_and_embed_the_same_images(tmp_path, monkeypatch):
    """``--figures DIR --report FILE``: the page embeds the figures written to DIR, so each figure
    function runs once, and the page's images are those of ``--report`` alone."""
    from analysis import figures, instability, onset, stats_figures

    sweep = small_sweep(tmp_path, onsets=(0, 2))
    alone = tmp_path / "alone.html"
    assert main([str(sweep), "--report", str(alone), "--bootstrap", "100"]) == 0
    calls = {}

    def counted(module, name):
        function = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return function(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    for module, name in ((figures, "variability_bars"), (figures, "cross_entropy_spread"),
                         (onset, "onset_figure"), (instability, "instability_figure"),
                         (stats_figures, "test_set_noise_figure"), (stats_figures, "best_of_k_figure")):
        counted(module, name)
    out, figs = tmp_path / "both.html", tmp_path / "figs"
    assert main([str(sweep), "--figures", str(figs), "--report", str(out), "--bootstrap", "100"]) == 0
    assert calls == dict.fromkeys(calls, 1) and len(calls) == 6
    stems = ("variability", "cross_entropy_spread", "onset", "test_set_noise", "best_of_k")
    assert sorted(p.name for p in figs.iterdir()) == sorted(f"{s}.{e}" for s in stems for e in ("png", "pdf"))
    assert images(out.read_text()) == images(alone.read_text()) and len(images(alone.read_text())) == len(stems)


def many_groups_sweep(root):
    """24 bit-flip groups (6 models x 2 activations x 2 onsets) of 2 runs each, labels of 80+
    characters: the sweep every figure of ``write_figures`` draws from."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 40)
    for m in range(6):
        for activation in ("relu", "a_smooth_activation"):
            for onset in (0, 2):
                config = fake_config(**{"source.name": "bitflip", "source.vary": ["bitflip"],
                                        "model.name": f"a_deliberately_long_model_name_{m:02d}",
                                        "model.width": 8 * 2**m, "model.activation": activation},
                                     onset_epoch=onset, output_root=str(root), sweep_name="many")
                write_group(config, random_logits(rng, 2, 40, 3), labels, [metrics_rows(rng, 3) for _ in range(2)])
    return root / "many"


def _style(handle):
    """What tells a legend entry apart: colour, line style and hatch (of a line, a bar, a
    histogram's outline, or the data line of error bars)."""
    from matplotlib.colors import to_hex

    if isinstance(handle, tuple):  # a BarContainer's first bar, an ErrorbarContainer's data line
        handle = handle.patches[0] if hasattr(handle, "patches") else handle[0]
    if hasattr(handle, "get_hatch"):
        color = handle.get_facecolor() if handle.get_fill() else handle.get_edgecolor()
        return to_hex(color), handle.get_linestyle(), handle.get_hatch()
    return to_hex(handle.get_color()), handle.get_linestyle(), None


def test_every_figure_stays_readable_with_many_groups_and_long_labels(tmp_path):
    """Every figure, drawn for 24 groups with long labels: no layout warning, every panel keeps
    a usable size, no legend covers a panel or another legend, tick labels do not run into each
    other, and no two entries of a legend share colour, line style and hatch."""
    import warnings

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.transforms import Bbox

    from analysis import shamir
    from analysis.figures import write_figures
    from analysis.load import load_sweep
    from analysis.render import collected
    from analysis.tables import summary_frame

    sweep = load_sweep(many_groups_sweep(tmp_path))
    frame = summary_frame(sweep, 5, 0)
    keys = sweep.display_keys
    assert len(sweep.groups) == 24 and min(len(g.label(keys)) for g in sweep.groups) >= 80
    cka = pd.DataFrame([{**{k: row[k] for k in keys}, "layer": layer, "cka_mean": 0.9, "cka_sd": 0.01,
                         "n_runs": 2, "n_pairs": 1, "estimator": "standard", "probe_size": 40}
                        for _, row in frame.iterrows() for layer in ("fc1", "fc2")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with collected() as drawn:
            write_figures(sweep, frame, tmp_path, cka)
        drawn.append(("cka_heatmap", report.cka_heatmap(report.ReportInputs(sweep, frame, cka))[0]))
        stems = [stem for stem, _ in drawn]
        assert stems == ["variability", "cka", "cross_entropy_spread", "onset", "instability",
                         "prediction_difference", "test_set_noise", "best_of_k", "cka_heatmap"]
        assert shamir.has_pd_structure(sweep)
        for stem, fig in drawn:
            renderer = FigureCanvasAgg(fig).get_renderer()
            fig.draw(renderer)
            panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
            for ax in panels:
                styles = [_style(h) for h in ax.get_legend_handles_labels()[0]]
                assert len(set(styles)) == len(styles), (stem, "two groups look alike")
                box = ax.get_window_extent(renderer)
                assert box.height >= 100 and box.width >= 150, (stem, box)
                for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
                    boxes = [t.get_window_extent(renderer) for t in ticks if t.get_visible() and t.get_text()]
                    assert not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:])), (stem, "tick labels")
            legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
            boxes = [legend.get_window_extent(renderer) for legend in legends]
            texts = [t for t in [getattr(fig, "_suptitle", None)] + [a.title for a in panels] if t and t.get_text()]
            for legend, box in zip(legends, boxes):
                for covered in [ax.get_window_extent(renderer) for ax in panels] + \
                               [t.get_window_extent(renderer) for t in texts]:
                    overlap = Bbox.intersection(box, covered)
                    assert overlap is None or overlap.width * overlap.height < 1, (stem, "legend over a panel or title")
            assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), (stem, "legends")
