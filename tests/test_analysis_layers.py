"""The analysis is layered: ``analysis.render`` is the leaf every section renders through, and
no section reaches back up into ``analysis.figures`` (which imports the sections)."""

import ast
from pathlib import Path

import analysis
from analysis import lm, metrics

PACKAGE = Path(analysis.__file__).parent
# The modules that assemble sections; every other module is a section or below one.
ASSEMBLERS = {"figures", "paper", "report", "__main__", "__init__"}


def analysis_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            module = node.module
            names |= {f"{module}.{a.name}" if module == "analysis" else module for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return {n.split(".", 2)[1] for n in names if n.startswith("analysis.")}


def test_render_is_a_leaf_and_no_section_imports_an_assembler():
    assert analysis_imports(PACKAGE / "render.py") == set()
    for path in PACKAGE.glob("*.py"):
        if path.stem not in ASSEMBLERS:
            assert not analysis_imports(path) & ASSEMBLERS, path.name


def test_one_disagreement_and_one_log_cosh():
    assert lm.disagreement is metrics.disagreement and lm.log_cosh is metrics.log_cosh
