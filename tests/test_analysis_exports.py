"""What ``python -m analysis SWEEP --csv FILE --latex FILE`` writes: the numbers with the notes the
terminal prints beside them, nothing at all when no run is finished, and refused options."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pandas as pd
import pytest

from analysis import __main__ as cli
from analysis.render import format_number, style_groups
from fake_runs import fake_config, random_logits, write_group, write_run
from nondet import records

N, C = 60, 4


@pytest.fixture
def noted_sweep(tmp_path):
    """Three rows: init (all fine), shuffle (one of 4 replicates missing) and dropout (every run
    diverged: one constant prediction, so SDs and disagreement are 0), and a run directory whose
    configuration cannot be read (a note on the whole sweep)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, C, N)

    def config(source):
        return fake_config(**{"source.name": source, "source.vary": [source]}, output_root=str(tmp_path),
                           sweep_name="sweep", **{"model.dropout": 0.1})

    write_group(config("init"), random_logits(rng, 3, N, C), labels)
    shuffle = write_group(config("shuffle"), random_logits(rng, 4, N, C), labels)
    shutil.rmtree(shuffle[2])
    diverged = np.full((3, N, C), np.nan, dtype=np.float32)
    write_group(config("dropout"), diverged, labels)
    broken = tmp_path / "sweep" / "stray" / "r0000"
    write_run(broken, config("init"), random_logits(rng, 1, N, C)[0], labels)
    (broken / records.CONFIG_FILE).unlink()  # done, but config.yaml is gone: no row is its own
    return tmp_path / "sweep"


def test_csv_and_latex_carry_each_rows_notes(noted_sweep, tmp_path, capsys):
    csv, tex = tmp_path / "t.csv", tmp_path / "t.tex"
    assert cli.main([str(noted_sweep), "--csv", str(csv), "--latex", str(tex), "--bootstrap", "100"]) == 0
    terminal = capsys.readouterr().out
    table = pd.read_csv(csv, keep_default_na=False).set_index("source.name")
    assert list(table.columns[:2]) == ["n_runs", "n_diverged"] and table.columns[-1] == "notes"
    assert table["n_diverged"].to_dict() == {"init": 0, "shuffle": 0, "dropout": 3}
    # The diverged row's zeros read as perfect reproducibility: its notes say they mean nothing.
    assert table.loc["dropout", "accuracy_sd"] == 0.0 and table.loc["dropout", "disagreement"] == 0.0
    assert "3 of 3 runs diverged" in table.loc["dropout", "notes"]
    assert "every metric of this row is NaN or meaningless" in table.loc["dropout", "notes"]
    assert "1 of 4 replicates have no run directory (2)" in table.loc["shuffle", "notes"]
    assert "diverged" not in table.loc["shuffle", "notes"] and "replicates" not in table.loc["dropout", "notes"]
    # A note on the whole sweep (a run no row can claim) is on every row; every note is the terminal's.
    for notes in table["notes"]:
        assert "no readable configuration" in notes and "stray" in notes
        for note in notes.split(" | "):
            if "no readable configuration" not in note:
                assert note in terminal, note

    text = tex.read_text()
    rows = [line for line in text.splitlines() if line.endswith(r"\\") and "&" in line]
    # A row is marked where it has notes of its own (init's statistics may have one on these logits).
    init_noted = any(n.startswith("init: ") for n in table.loc["init", "notes"].split(" | "))
    assert [r.split(" & ")[0] for r in rows] == [
        "Source", "init" + r"$^\dagger$" * init_noted, r"shuffle$^\dagger$", r"dropout$^\dagger$"]
    tabular_end = text.index(r"\end{tabular}")
    assert text.index("3 of 3 runs diverged") > tabular_end and text.index("no readable configuration") > tabular_end
    assert_balanced(text)


def assert_balanced(tex: str) -> None:
    """Every environment ends in the order it began, every brace closes, math is closed: what a
    LaTeX run would trip on first (pdflatex itself is not required here)."""
    stack = []
    for kind, name in re.findall(r"\\(begin|end)\{([^}]*)\}", tex):
        if kind == "begin":
            stack.append(name)
        else:
            assert stack and stack.pop() == name, name
    assert not stack
    body = "\n".join(line.split("%")[0] if not line.startswith("%") else "" for line in
                     re.sub(r"\\%", "", tex).splitlines())  # comments are not typeset
    plain = re.sub(r"\\[{}$&%#_]", "", body)
    depth = 0
    for c in plain:
        depth += {"{": 1, "}": -1}.get(c, 0)
        assert depth >= 0
    assert depth == 0 and plain.count("$") % 2 == 0
    assert not re.search(r"(?<!\\)[_#&%]", plain.replace("&", "")), "an unescaped special character"


def test_no_finished_run_writes_nothing_and_keeps_earlier_files(tmp_path, capsys):
    empty = tmp_path / "empty"
    write_run(empty / "r0000", fake_config(output_root=str(tmp_path)), result=False)  # unfinished
    outputs = {o: tmp_path / f"earlier.{o}" for o in ("csv", "latex", "report")}
    for path in outputs.values():
        path.write_text("an earlier analysis")
    args = [f"--{o}={p}" for o, p in outputs.items()] + ["--figures", str(tmp_path / "figs")]
    assert cli.main([str(empty), *args]) == 1
    assert all(p.read_text() == "an earlier analysis" for p in outputs.values())
    assert not (tmp_path / "figs").exists() or not any((tmp_path / "figs").iterdir())
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("No finished run below") and "nothing written" in line and "--csv" in line


def test_figures_of_no_group_draw_nothing(tmp_path):
    from matplotlib.figure import Figure

    from analysis.figures import write_figures
    from analysis.load import load_sweep
    from analysis.tables import summary_frame

    axes = Figure().subplots()
    style_groups(axes, n=0)  # was StopIteration from an empty cycler
    sweep = load_sweep(tmp_path)
    assert write_figures(sweep, summary_frame(sweep), tmp_path / "figs") == []


@pytest.mark.parametrize("args, where", [
    (["--seed", "-1"], "--seed"), (["--bootstrap", "0"], ">= 100"), (["--bootstrap", "1"], ">= 100"),
    (["--bootstrap", "-5"], ">= 100"), (["--cka-runs", "1"], "--cka-runs"), (["--cka-probe", "0"], "--cka-probe"),
    (["--cka-batch", "1"], "--cka-batch"), (["--cka-estimator", "debiased", "--cka-probe", "3"], ">= 4"),
])
def test_out_of_range_options_are_refused_in_one_line(tmp_path, capsys, args, where):
    with pytest.raises(SystemExit) as stop:
        cli.main([str(tmp_path), *args])
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert where in line and "out of range" in line


def test_large_numbers_are_scientific_and_normal_ones_unchanged():
    assert format_number(1.3e35, 4) == "1.30e+35" and format_number(-2.5e7, 2) == "-2.50e+07"
    assert format_number(1.3e35, 0) == "1.30e+35" and format_number(float("inf"), 4) == "inf"
    assert format_number(68.4375, 2) == "68.44" and format_number(0.86031, 4) == "0.8603"
    assert format_number(999999.0, 2) == "999999.00" and format_number(8, 0) == "8"
    assert format_number(3e-7, 4) == "3.0e-07" and format_number(float("nan"), 2) == "n/a"


def test_the_readme_quick_start_table_is_formatted_as_before():
    """Every number of the README's quick-start table is what ``format_number`` writes for it."""
    from pathlib import Path

    from analysis.tables import MARKDOWN_COLUMNS

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    lines = [line for line in readme.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    decimals = {h: d for _, h, d, _ in MARKDOWN_COLUMNS}
    checked = 0
    for line in lines[1:4]:
        for name, cell in zip(header, (c.strip() for c in line.strip("|").split("|"))):
            for number in cell.split(" ± ") if name in decimals else []:
                assert format_number(float(number), decimals[name]) == number, (name, number)
                checked += 1
    assert checked == 3 * 10
