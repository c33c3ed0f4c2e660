"""What the figures and the HTML report say about runs whose numbers must not be read as a
spread: diverged runs, rows of one run, a source that varied nothing, a control that is not
bitwise identical; and the page's header (the command that remade it) and column glossary.

    python -m pytest tests/test_report_warnings.py -q
"""

from __future__ import annotations

import html
import re

import numpy as np
import pytest

from analysis import report
from analysis.__main__ import main, parser
from analysis.figures import write_figures
from analysis.load import load_sweep
from analysis.render import collected
from analysis.tables import summary_frame
from fake_runs import fake_config, metrics_rows, random_logits, write_group

N, C = 60, 4


def _group(root, name, source, lr, logits, metrics=None, sweep="s", **params):
    vary = [] if source == "none" else [source]
    config = fake_config(**{"source.name": source, "source.vary": vary, "optimizer.lr": lr, **params},
                         output_root=str(root), sweep_name=sweep)
    labels = np.random.default_rng(7).integers(0, C, N)
    return write_group(config, logits, labels, metrics)


def _diverging_metrics(runs):
    """Per-epoch cross-entropy that explodes to 1e23, then NaN: a run on its way to diverging."""
    return [[{"epoch": 1, "test_cross_entropy": 1e23, "test_accuracy": 25.0},
             {"epoch": 2, "test_cross_entropy": float("nan"), "test_accuracy": 25.0}] for _ in range(runs)]


def mixed_sweep(root):
    """lr=0.1: 3 healthy runs; lr=10000: 3 runs with NaN logits; lr=0.5: one run; a source=none
    control of 2 bitwise-identical runs (SD exactly 0)."""
    rng = np.random.default_rng(0)
    _group(root, "ok", "init", 0.1, random_logits(rng, 3, N, C), [metrics_rows(rng, 2) for _ in range(3)])
    _group(root, "nan", "init", 10000.0, np.full((3, N, C), np.nan, np.float32), _diverging_metrics(3))
    _group(root, "one", "init", 0.5, random_logits(rng, 1, N, C), [metrics_rows(rng, 2)])
    same = random_logits(rng, 1, N, C)
    _group(root, "control", "none", 0.1, np.concatenate([same, same]), [metrics_rows(rng, 2)] * 2)
    return root / "s"


def _texts_by_row(ax, labelled):
    """{tick label (of ``labelled``, whose y axis ``ax`` shares): text drawn on that bar's row}."""
    rows = {round(t.get_position()[1]): t.get_text() for t in labelled.get_yticklabels()}
    # An annotation's row is the point it labels (its own position is an offset from it).
    return {rows[round(getattr(t, "xy", t.get_position())[1])]: t.get_text() for t in ax.texts}


def test_figures_name_diverged_groups_and_rows_without_an_sd(tmp_path):
    sweep = load_sweep(mixed_sweep(tmp_path))
    frame = summary_frame(sweep, 5, 0)
    with collected() as drawn:
        write_figures(sweep, frame, tmp_path)
    figures = dict(drawn)
    assert list(figures) == ["variability", "cross_entropy_spread", "test_set_noise", "best_of_k"]
    labels = {f"init, optimizer.lr={lr}" for lr in (0.1, 0.5, 10000.0)} | {"none, optimizer.lr=0.1"}
    nan, ok = "init, optimizer.lr=10000.0", "init, optimizer.lr=0.1"

    # Variability: no bar is left empty without saying why; a true 0 says 0.
    accuracy, cross_entropy = figures["variability"].axes
    expected = {nan: "diverged (all 3 runs)", "init, optimizer.lr=0.5": "n/a (1 run)", "none, optimizer.lr=0.1": "0"}
    assert _texts_by_row(accuracy, accuracy) == _texts_by_row(cross_entropy, accuracy) == expected
    assert {t.get_text() for t in accuracy.get_yticklabels()} == labels

    # Spread over epochs: the diverging group is named in the legend, its 1e23 not drawn.
    spread = figures["cross_entropy_spread"]
    legend = [t.get_text() for t in spread.legends[0].get_texts()]
    assert f"{nan} (3 of 3 runs diverged: not drawn)" in legend
    drawn_values = np.concatenate([line.get_ydata() for ax in spread.axes for line in ax.get_lines()])
    assert np.nanmax(drawn_values) < 10

    # Test-set noise and best of k: the diverged group is left out, and the figure says so.
    for stem in ("test_set_noise", "best_of_k"):
        fig = figures[stem]
        shown = {t.get_text() for ax in fig.axes for t in ax.get_yticklabels()}
        shown |= {t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()}
        assert ok in shown and nan not in shown, stem
        assert fig._supxlabel.get_text().replace("\n", " ").startswith(
            f"Left out, runs diverged (chance-level argmax of NaN logits): {nan} (3 of 3 runs)"), stem
    assert len(figures["best_of_k"].axes[0].get_lines()) == 2  # lr=0.1 and the control: no NaN-logit curve


def test_a_figure_the_runs_leave_empty_is_not_drawn_and_the_report_says_why(tmp_path, capsys):
    """Every group diverged: no figure file and no image, one line per absent figure instead. A
    sweep of mixed groups: the page embeds exactly the figures --figures wrote."""
    rng = np.random.default_rng(1)
    _group(tmp_path, "nan", "init", 10000.0, np.full((2, N, C), np.nan, np.float32), _diverging_metrics(2), sweep="d")
    _group(tmp_path, "one", "init", 0.5, random_logits(rng, 1, N, C), [metrics_rows(rng, 2)], sweep="d")
    figs, out = tmp_path / "figs", tmp_path / "d.html"
    assert main([str(tmp_path / "d"), "--figures", str(figs), "--report", str(out), "--bootstrap", "100"]) == 0
    text = html.unescape(out.read_text())
    assert list(figs.iterdir()) == [] and "<img" not in text
    absent = re.findall(r'<p class="absent">No (.*?) figure \(<code>(\w+)\.png</code>\): (.*?)</p>', text)
    assert [stem for _, stem, _ in absent] == ["variability", "cross_entropy_spread", "test_set_noise", "best_of_k"]
    assert "every group has one run or runs that all diverged" in absent[0][2]
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("No ")]
    assert [line.split(".png")[0] for line in said] == [f"No {stem}" for _, stem, _ in absent]  # --figures says it too

    mixed, figs = mixed_sweep(tmp_path), tmp_path / "figs_mixed"
    out = tmp_path / "mixed.html"
    assert main([str(mixed), "--figures", str(figs), "--report", str(out), "--bootstrap", "100"]) == 0
    text = html.unescape(out.read_text())
    assert text.count("<img") == len(list(figs.glob("*.png"))) == 4 and 'class="absent"' not in text
    assert ("Left out, runs diverged (chance-level argmax of NaN logits): init, optimizer.lr=10000.0 "
            "(3 of 3 runs).") in text  # in the captions of test-set noise and best of k
    capsys.readouterr()


def test_the_header_warns_of_diverged_runs_an_inert_source_and_a_varying_control(tmp_path):
    """Badges and a "Read first" list above the table; diverged runs are not counted finished
    and the run list calls them diverged."""
    rng = np.random.default_rng(2)
    _group(tmp_path, "nan", "init", 10000.0, np.full((2, N, C), np.nan, np.float32))
    same = random_logits(rng, 1, N, C)
    _group(tmp_path, "inert", "init", 0.1, np.concatenate([same, same, same]))  # init varied nothing
    _group(tmp_path, "control", "none", 0.1, random_logits(rng, 2, N, C))  # the control differs
    sweep = load_sweep(tmp_path / "s")
    page = report.render(report.ReportInputs(sweep, summary_frame(sweep, 5, 0), n_boot=5), figure_functions=[])
    top = page.split('<h2 id="table">', 1)[0]
    badges = re.findall(r"<span[^>]*>(.*?)</span>", top.split('<p class="counts">', 1)[1].split("</p>", 1)[0])
    assert badges == ["5 finished", "3 groups", "2 diverged", "1 varied nothing", "1 control not identical"]
    first = html.unescape(top.split('<div class="readfirst">', 1)[1])
    assert "Runs diverged" in first and "init, optimizer.lr=10000.0 (2 of 2 runs)" in first
    assert "source varied nothing: the row's spread is not that source's</strong>: init, optimizer.lr=0.1." in first
    assert "not bitwise identical" in first and "none, optimizer.lr=0.1." in first
    statuses = re.findall(r"<tr><td>[^<]*</td><td>\d+</td><td>(\w+)</td>",
                          page.split('<table class="runs">', 1)[1])
    assert sorted(statuses) == ["diverged"] * 2 + ["done"] * 5


def test_the_header_names_the_options_that_shaped_the_page(tmp_path):
    import pandas as pd

    sweep = load_sweep(mixed_sweep(tmp_path))
    frame = summary_frame(sweep, 20, 3)
    out = tmp_path / "r.html"

    def header(inputs):
        page = report.render(inputs, figure_functions=[], out=out)
        return html.unescape(re.search(r"by\s*<code>(.*?)</code>", page).group(1))

    base = f"python -m analysis {sweep.root} --report {out}"
    assert header(report.ReportInputs(sweep, frame)) == base
    assert header(report.ReportInputs(sweep, frame, n_boot=20, seed=3)) == base + " --bootstrap 20 --seed 3"
    cka = pd.DataFrame([{"source.name": "init", "optimizer.lr": 0.1, "layer": "fc1", "cka_mean": 0.9,
                         "cka_sd": 0.01, "n_runs": 3, "n_pairs": 3, "estimator": "debiased", "probe_size": 60}])
    assert header(report.ReportInputs(sweep, frame, cka)) == base + " --cka --cka-probe 60 --cka-estimator debiased"
    # What the command line gave, as it gave it (python -m analysis passes cli_options(args)).
    args = parser().parse_args([str(sweep.root), "--report", str(out), "--cka", "--cka-runs", "5", "--seed", "3",
                                "--csv", "t.csv"])
    assert report.cli_options(args) == ["--seed", "3", "--cka", "--cka-runs", "5"]
    assert report.cli_options(parser().parse_args([str(sweep.root), "--cka-runs", "5"])) == []  # no CKA: no effect
    assert header(report.ReportInputs(sweep, frame, options=report.cli_options(args))).endswith(
        "--report " + str(out) + " --seed 3 --cka --cka-runs 5")


def test_every_column_of_the_table_is_explained_on_the_page(tmp_path):
    sweep = load_sweep(mixed_sweep(tmp_path))
    page = html.unescape(report.render(report.ReportInputs(sweep, summary_frame(sweep, 5, 0), n_boot=5),
                                       figure_functions=[]))
    summary = page.split('<table class="summary">', 1)[1].split("</tbody>", 1)[0]
    headers = re.findall(r"<th[^>]*>(.*?)</th>", summary)[2:]  # after the key columns
    glossary = page.split('<details class="glossary">', 1)[1].split("</details>", 1)[0]
    assert re.findall(r"<dt>(.*?)</dt>", glossary) == headers
    spearman = glossary.split("<dt>Pairwise Spearman ρ</dt><dd>", 1)[1]
    assert spearman.startswith("Spearman rank correlation between two runs' test logits")
    assert "capped at 100%" in glossary and "docs/statistics.md" in glossary
    assert page.index('<details class="glossary">') < page.index("Share of the accuracy variance")


@pytest.mark.parametrize("n_runs, diverged, sd, said", [
    (3, 3, 0.0, "diverged (all 3 runs)"), (1, 0, float("nan"), "n/a (1 run)"), (2, 0, 0.0, "0"),
    (3, 1, float("nan"), "n/a (1 of 3 runs diverged)"), (3, 1, 0.4, "1 of 3 runs diverged"), (3, 0, 0.4, "")])
def test_what_stands_in_place_of_a_bar(n_runs, diverged, sd, said):
    from analysis.figures import _bar_gap

    assert _bar_gap(n_runs, diverged, sd) == said


def test_a_bar_of_partly_diverged_runs_is_hatched_and_labelled(tmp_path):
    """Two healthy runs and one of NaN logits: the accuracy bar counts a chance-level run, so it
    is marked as such (the cross-entropy panel already says n/a)."""
    rng = np.random.default_rng(3)
    _group(tmp_path, "ok", "init", 0.1, random_logits(rng, 3, N, C))
    mixed = np.concatenate([random_logits(rng, 2, N, C), np.full((1, N, C), np.nan, np.float32)])
    _group(tmp_path, "part", "init", 1.0, mixed)
    sweep = load_sweep(tmp_path / "s")
    with collected() as drawn:
        write_figures(sweep, summary_frame(sweep, 5, 0), tmp_path)
    accuracy, cross_entropy = dict(drawn)["variability"].axes
    part = "init, optimizer.lr=1.0"
    assert _texts_by_row(accuracy, accuracy) == {part: "1 of 3 runs diverged"}
    assert _texts_by_row(cross_entropy, accuracy) == {part: "n/a (1 of 3 runs diverged)"}
    rows = {t.get_text(): round(t.get_position()[1]) for t in accuracy.get_yticklabels()}
    hatches = {round(p.get_y() + p.get_height() / 2): p.get_hatch() for p in accuracy.patches}
    assert hatches == {rows[part]: "//", rows["init, optimizer.lr=0.1"]: None}


def _legend(fig):
    return [t.get_text() for legend in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
            for t in legend.get_texts()]


def _said_under(fig):
    return fig._supxlabel.get_text().replace("\n", " ") if fig._supxlabel else ""


def test_the_paper_figures_leave_out_diverged_groups_and_say_so(tmp_path):
    """Figure 2 (onset), Figure 3 (bit flip over training) and the PD figure: a group of NaN-logit
    runs is not drawn as a spread of 0 but named under the figure, in the legend, and in the
    report's caption; when every group diverged, the figure is absent and the page says why."""
    rng = np.random.default_rng(4)
    nan3 = np.full((3, N, C), np.nan, np.float32)
    for k in (0, 1):  # Figure 2: healthy runs at lr 0.1, diverged ones at lr 1e4
        _group(tmp_path, "ok", "shuffle", 0.1, random_logits(rng, 3, N, C), sweep="onset", onset_epoch=k)
        _group(tmp_path, "nan", "shuffle", 1e4, nan3, sweep="onset", onset_epoch=k)
    for model, metrics in (("linear", [metrics_rows(rng, 2) for _ in range(3)]), ("mlp", _diverging_metrics(3))):
        logits = random_logits(rng, 3, N, C) if model == "linear" else nan3  # Figure 3: the mlp diverged
        _group(tmp_path, model, "bitflip", 0.1, logits, metrics, sweep="flip", **{"model.name": model})
    for activation in ("relu", "smelu"):  # PD: the smelu runs diverged
        logits = random_logits(rng, 3, N, C) if activation == "relu" else nan3
        _group(tmp_path, activation, "init", 0.1, logits, sweep="pd", **{"model.activation": activation})

    expected = {"onset": ("onset", "optimizer.lr=10000.0"), "flip": ("instability", "model.name=mlp"),
                "pd": ("prediction_difference", "model.activation=smelu")}
    for name, (stem, bad) in expected.items():
        sweep = load_sweep(tmp_path / name)
        frame = summary_frame(sweep, 5, 0)
        with collected() as drawn:
            write_figures(sweep, frame, tmp_path / name)
        fig = dict(drawn)[stem]
        page = html.unescape(report.render(report.ReportInputs(sweep, frame, n_boot=5)))
        caption = re.search(rf'alt="{re.escape(report.CAPTIONS[stem])}(.*?)">', page).group(1)
        if stem == "instability":
            assert "model.name=mlp (3 of 3 runs diverged: not drawn)" in _legend(fig)
            drawn_values = np.concatenate([line.get_ydata() for ax in fig.axes for line in ax.get_lines()])
            assert len(drawn_values) and np.nanmax(drawn_values) < 10
            assert caption == " Groups with diverged runs are named in the legend, not drawn."
        else:
            assert not any(bad in label for label in _legend(fig)), stem
            assert _said_under(fig).startswith("Left out, runs diverged (chance-level argmax of NaN logits): "), stem
            assert bad in _said_under(fig) and bad in caption, stem
        if stem == "prediction_difference":
            heights = {t.get_text(): p.get_height() for t, p in zip(fig.axes[0].get_xticklabels(), fig.axes[0].patches)}
            assert np.isfinite(heights["relu"]) and np.isnan(heights.get("smelu", np.nan))

    # Every onset group diverged: no Figure 2, and the page says why.
    for k in (0, 1):
        _group(tmp_path, "nan", "shuffle", 1e4, nan3, sweep="all_nan", onset_epoch=k)
    sweep = load_sweep(tmp_path / "all_nan")
    frame = summary_frame(sweep, 5, 0)
    with collected() as drawn:
        write_figures(sweep, frame, tmp_path / "all_nan")
    assert "onset" not in dict(drawn)
    assert "No Figure 2 (onset) figure (<code>onset.png</code>): no group has two runs or more none of which diverged." in (
        report.absent_figures_html(report.ReportInputs(sweep, frame, n_boot=5)))
