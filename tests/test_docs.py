"""The docs' measured numbers come from committed results.

Each measured table in README.md and docs/*.md is rendered by
`python -m benchmarks.render_docs` from a committed JSON file between
`<!-- render:NAME -->` markers; this test fails when a rendered block
disagrees with its source, or when a measured figure (img/s, GB, s/step)
stands in README.md outside a rendered block."""

import importlib
import re
import sys

from conftest import REPO

sys.path.insert(0, str(REPO))
render_docs = importlib.import_module("benchmarks.render_docs")

# A measured figure: a number with a throughput / memory / step-time unit.
# Targets (written after >=, <=, ≥, ≤, <, >) and the machine's size are not
# measurements.
MEASURED = re.compile(
    r"(?<![≥≤<>=] )(?<![≥≤<>=\d.])(\d+(?:\.\d+)?(?:\s*[-/]\s*\d+(?:\.\d+)?)?)"
    r"\s*(img/s|GB|s/step)\b")
MACHINE = re.compile(r"\b24 GB\b")
SCANNED = ["README.md"]


def test_rendered_blocks_match_their_sources():
    assert render_docs.stale() == [], (
        "run `python -m benchmarks.render_docs` and commit the result")


def test_every_rendered_block_names_date_machine_and_command():
    for rel in render_docs.DOCS:
        for match in render_docs.BLOCK.finditer((REPO / rel).read_text()):
            body = match.group("body")
            assert "Source: `benchmarks/" in body, (rel, match.group("name"))
            assert re.search(r"measured \d{4}-\d{2}-\d{2} on ", body)
            assert "command: `" in body


def _outside_blocks(text):
    return render_docs.BLOCK.sub("", text)


def test_no_measured_figure_outside_a_rendered_block():
    found = []
    for rel in SCANNED:
        for lineno, line in enumerate(
                _outside_blocks((REPO / rel).read_text()).splitlines(), 1):
            line = MACHINE.sub("", line)
            found += [f"{rel}: {m.group(0)!r} in {line.strip()[:80]!r}"
                      for m in MEASURED.finditer(line)]
    assert not found, ("measured figures with no rendered source:\n"
                       + "\n".join(found))


def test_render_detects_a_number_that_disagrees(tmp_path):
    text = (REPO / "README.md").read_text()
    block = next(render_docs.BLOCK.finditer(text))
    body = block.group("body")
    number = re.search(r"\d+\.\d\d", body).group(0)
    tampered = text.replace(body, body.replace(number, "99.99", 1), 1)
    assert render_docs.render(tampered) != tampered
    assert render_docs.render(text) == text


def test_docstrings_carry_no_measured_figures():
    import ast  # pylint: disable=import-outside-toplevel
    found = []
    for path in sorted((REPO / "keras_nfnets").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                 ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node) or ""
                found += [f"{path.name}: {m.group(0)!r}"
                          for m in MEASURED.finditer(MACHINE.sub("", doc))]
    assert not found, "measured numbers go stale in docstrings: " + ", ".join(
        found)
