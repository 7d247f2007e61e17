"""The docs' measured numbers come from committed results.

Each measured table in README.md and docs/*.md is rendered by
`python -m benchmarks.render_docs` from a committed JSON file between
`<!-- render:NAME -->` markers; this test fails when a rendered block
disagrees with its source, when a measured figure (img/s, GB, MB, s/step,
s, ms, min, %) stands in README.md or docs/*.md outside a rendered block, or
when a table column of measurements (top-1, speed, memory, time) outside a
rendered block has figures and does not say they are published. docs/study/
has its own CSVs and is not scanned. The repository URL has one home,
README.md's first line, and every link to the repository must agree."""

import importlib
import re
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))
render_docs = importlib.import_module("benchmarks.render_docs")

# A measured figure: a number with a throughput / memory / time / share unit
# (`~20 min`, `2 min 42 s`, `40.3%`, `3.46 img/s`, `2.6 GB`). Targets
# (written after >=, <=, ≥, ≤, <, >) and the machine's size are not
# measurements; nor is a number inside a word (`F0s`, `v4-32`).
NUMBER = (r"(?<![≥≤<>=] )(?<![≥≤<>=\w.,])"
          r"(\d+(?:[.,]\d+)*(?:\s*[-–/]\s*\d+(?:\.\d+)?)?)")
MEASURED = re.compile(
    NUMBER + r"\s*(?:(img/s|s/step|GB|MB|min|ms|s)\b|(%))")
# Docstrings: speeds, memory and step times (a docstring may name a
# library's constant in MB or a timeout in s).
DOCSTRING_MEASURED = re.compile(NUMBER + r"\s*(img/s|GB|s/step)\b")
MACHINE = re.compile(r"\b24 GB\b")
SCANNED = render_docs.DOCS
# A table column of measurements; outside a rendered block its header must
# say the figures are published (and whose), e.g. "published top-1 (timm)".
MEASURED_COLUMN = re.compile(
    r"top-1|top-5|accuracy|img/s|\bGB\b|\bMB\b|speed|time|memory|RSS|MFU"
    r"|(?:^|\s)(?:s|ms|min)$",
    re.I)


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


def stray_figures(text):
    """The measured figures in `text` outside its rendered blocks."""
    found = []
    for line in _outside_blocks(text).splitlines():
        line = MACHINE.sub("", line).replace("->", "→")
        found += [f"{m.group(0)!r} in {line.strip()[:80]!r}"
                  for m in MEASURED.finditer(line)]
    return found


def unsourced_columns(text):
    """Table columns of measurements, outside rendered blocks, that hold
    figures under a header that does not say `published`."""
    found = []
    lines = _outside_blocks(text).splitlines()
    for i, line in enumerate(lines[:-1]):
        if not (line.startswith("|") and re.match(r"\|\s*:?-{3}",
                                                   lines[i + 1])):
            continue
        header = [c.strip() for c in line.strip("|").split("|")]
        rows = []
        for row in lines[i + 2:]:
            if not row.startswith("|"):
                break
            rows.append([c.strip() for c in row.strip("|").split("|")])
        for col, name in enumerate(header):
            if not MEASURED_COLUMN.search(name) or "published" in name:
                continue
            cells = [r[col] for r in rows if col < len(r)]
            if any(re.search(r"\d", c) for c in cells):
                found.append(f"column {name!r} of the table {line[:60]!r}")
    return found


def test_no_measured_figure_outside_a_rendered_block():
    found = [f"{rel}: {hit}" for rel in SCANNED
             for hit in stray_figures((REPO / rel).read_text())]
    assert not found, ("measured figures with no rendered source:\n"
                       + "\n".join(found))


def test_measurement_columns_are_rendered_or_published():
    found = [f"{rel}: {hit}" for rel in SCANNED
             for hit in unsourced_columns((REPO / rel).read_text())]
    assert not found, ("table columns of measurements with no rendered "
                       "source and no 'published' in the header:\n"
                       + "\n".join(found))


@pytest.mark.parametrize("line", [
    "On 2 CPU cores it reached **40.3% top-1** in a few minutes.",
    "32.3% on all 10,000 test images", "600 steps, 2 min 42 s",
    "(`python -m experiments.agc_stability`, ~20 min on 2 CPU cores)",
    "the measured 1.8-2.2 img/s", "peak RSS 4.23 -> 3.27 GB",
    "a first step of 19 s", "every step pays ~1.1 s of page faults",
    "0.29 GB of kernels", "286 MB of weights", "about 30 s per notebook"])
def test_the_scan_catches_a_stray_measured_figure(line):
    assert stray_figures(f"intro\n\n{line}\n"), line


@pytest.mark.parametrize("line", [
    "training ≥ 1.2 img/s, inference ≥ 2.5 img/s, first step ≤ 30 s",
    "2 cores, 24 GB, shared", "AGC λ = 0.01, weight decay 2e-5",
    "360 epochs at batch 4096, 192 / 256 px", "NFNet-F0s and v4-32 slices",
    "logits within a relative 1e-4", "F0's size (285,976,842 bytes)"])
def test_the_scan_leaves_constants_and_targets_alone(line):
    assert not stray_figures(f"intro\n\n{line}\n"), line


def test_an_unpublished_accuracy_column_is_caught():
    table = ("| model | top-1 |\n| --- | ---: |\n| F0 | 83.6 |\n")
    assert unsourced_columns(table)
    assert not unsourced_columns(table.replace("top-1", "published top-1"))
    assert not unsourced_columns(table.replace("83.6", "—"))
    assert unsourced_columns("| op | s |\n| --- | --- |\n| conv | 1.46 |\n")
    assert unsourced_columns(
        "| step | first step s |\n| --- | --- |\n| a | 20.7 |\n")


def test_rendered_figures_are_not_stray():
    text = (REPO / "README.md").read_text()
    assert MEASURED.search(text), "README.md should render a measured table"
    assert not stray_figures(text)


def test_the_repository_url_has_one_home():
    slug = render_docs.repository_slug()
    links = []
    for rel in render_docs.DOCS + render_docs.NOTEBOOKS:
        links += [(rel, m.group(0)) for m in
                  render_docs.REPO_LINK.finditer((REPO / rel).read_text())]
    assert links, "the badges and install commands link to the repository"
    assert all(link.endswith("/" + slug) for _, link in links), links
    # A link that disagrees with the home is stale and gets rewritten.
    text = "see https://github.com/someone/keras_nfnets and more"
    assert render_docs.render_links(text, slug) == text.replace(
        "someone/keras_nfnets", slug)


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
                          for m in DOCSTRING_MEASURED.finditer(
                              MACHINE.sub("", doc))]
    assert not found, "measured numbers go stale in docstrings: " + ", ".join(
        found)


def test_the_readme_stays_a_short_user_readme():
    # Issue 21: at most ~250 lines, with Install, License and Citation;
    # details belong in docs/.
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 260
    for section in ("## Install", "## License", "## Citation"):
        assert f"\n{section}\n" in text, section
