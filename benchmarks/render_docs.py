"""Renders the measured tables of README.md and docs/ from committed results.

Every measured table in the docs sits between marker comments,

    <!-- render:NAME -->
    ...generated text...
    <!-- /render:NAME -->

and is produced here from a committed JSON file (`benchmarks/*.json`), with
the date, machine and command that made it (`benchmarks/sources.json`).
Nothing between the markers is edited by hand:

    python -m benchmarks.render_docs          # rewrite the blocks
    python -m benchmarks.render_docs --check  # exit 1 if one is stale

The repository URL has one home, the comment on README.md's first line
(`<!-- repository: https://github.com/OWNER/keras_nfnets ... -->`); the
same run writes it into every GitHub and Colab link to the repository in
README.md, docs/*.md and colab/*.ipynb (badges, install commands).

`tests/integration/test_docs.py` runs the check, and fails on a measured figure (img/s,
GB, MB, s/step, s, min, %) in README.md or docs/*.md outside a rendered
block.
"""

import argparse
import json
import pathlib
import re
import statistics
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(str(p.relative_to(REPO))
                             for p in (REPO / "docs").glob("*.md"))]
NOTEBOOKS = sorted(str(p.relative_to(REPO))
                   for p in (REPO / "colab").glob("*.ipynb"))
HOME = re.compile(r"<!-- repository: https://github\.com/"
                  r"(?P<slug>[\w.-]+/[\w.-]+?)[\s)]")
# A link to this repository: github.com/OWNER/keras_nfnets or Colab's
# colab.research.google.com/github/OWNER/keras_nfnets.
REPO_LINK = re.compile(r"(?P<host>(?<![\w.])github\.com/|"
                       r"colab\.research\.google\.com/github/)"
                       r"[\w.-]+/keras_nfnets\b")
BLOCK = re.compile(r"(<!-- render:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)"
                   r"(<!-- /render:(?P=name) -->)", re.S)


def _load(source):
    return json.loads((REPO / source).read_text())


def _provenance(source):
    meta = json.loads((REPO / "benchmarks" / "sources.json").read_text())[
        source]
    return (f"Source: `{source}` (log `{meta['log']}`), measured "
            f"{meta['date']} on {meta['machine']}; command: "
            f"`{meta['command']}`.")


def _groups(rows, key):
    out = {}
    for row in rows:
        out.setdefault(key(row), []).append(row)
    return out


def _median(rows, field):
    return statistics.median(r[field] for r in rows)


def f0_cpu(source="benchmarks/results.json"):
    """NFNet-F0 training and inference on the CPU machine, per allocator:
    median over rounds (and each round), the largest peak RSS."""
    rows = _load(source)
    lines = ["| mode | allocator | batch x px | img/s (median; per round) "
             "| peak RSS GB | first step s | GFLOP/img | matmul GFLOP/s "
             "| MFU |", "| --- | --- | --- | --- | --- | --- | --- | --- "
             "| --- |"]
    groups = _groups(rows, lambda r: (r["mode"], r["allocator"], r["batch"],
                                      r["size"]))
    for (mode, allocator, batch, size), rs in groups.items():
        rounds = ", ".join(f"{r['images_per_s']:.2f}"
                           for r in sorted(rs, key=lambda r: r["round"]))
        lines.append(
            f"| {mode} | {allocator} | {batch} x {size} | "
            f"{_median(rs, 'images_per_s'):.2f} ({rounds}) | "
            f"{max(r['peak_rss_gb'] for r in rs):.2f} | "
            f"{_median(rs, 'first_step_s_since_start'):.1f} | "
            f"{rs[0]['flops_per_image'] / 1e9:.2f} | "
            f"{_median(rs, 'matmul_gflops'):.0f} | "
            f"{100 * _median(rs, 'mfu'):.0f} % |")
    return "\n".join(lines + ["", _provenance(source)])


def f0_backends(source="benchmarks/results_backends.json"):
    """NFNet-F0 training (batch 8 at 192 px) per Keras backend."""
    rows = _load(source)
    lines = ["| backend | img/s (median; per round) | peak RSS GB "
             "| first step s |", "| --- | --- | --- | --- |"]
    for backend, rs in _groups(rows, lambda r: r["backend"]).items():
        rounds = ", ".join(f"{r['images_per_s']:.2f}"
                           for r in sorted(rs, key=lambda r: r["round"]))
        lines.append(
            f"| {backend} | {_median(rs, 'images_per_s'):.2f} ({rounds}) | "
            f"{max(r['peak_rss_gb'] for r in rs):.2f} | "
            f"{_median(rs, 'first_step_s_since_start'):.1f} |")
    return "\n".join(lines + ["", _provenance(source)])


def f0_serving(source="benchmarks/results_serving.json"):
    """NFNet-F0 CPU inference per route: the Keras model, its folded copy,
    the folded copy's float and int8 exports, and the peers at the same
    batches, with each route's ratio to the best peer and the recommended
    route (`benchmark.py --serving`)."""
    from benchmarks import benchmark
    summary = _summary()
    data = _load(source)
    rows = benchmark.serving_rows(data)
    parts = []
    if any(r.get("cpu") for r in data["runs"]):
        parts += [summary.cpu_line(data["runs"]) + ".", ""]
    parts += [f"NFNet-F0 at {data['size']} px.", "",
              benchmark.serving_table(rows)]
    lines = benchmark.serving_lines(benchmark.serving_recommendation(rows))
    if lines:
        parts += ["", " ".join(lines)]
    if data.get("note"):
        parts += ["", f"Note: {data['note']}."]
    return "\n".join(parts + ["", _provenance(source)])


def f0_int8(source="benchmarks/results_int8.json"):
    """The int8 exports' accuracy change on the demo model's held-out
    images (`benchmarks/int8_accuracy.py`)."""
    data = _load(source)
    metrics = data["demo_metrics"]
    model = data["model"][:1].upper() + data["model"][1:]
    lines = [f"{model}, {data['held_out_images']} held-out images "
             f"at {data['image_size']} px; full-integer exports calibrated "
             f"on {data['calibration_images']} images of the "
             f"{data['calibration_from']}. The demo run's own held-out "
             f"top-1 (EMA weights, metrics.json): "
             f"{100 * metrics['top1']:.1f} %.", "",
             "| route | precision | top-1 % | change, points | agreement "
             "with fp32 Keras % | mean abs logit change | largest abs logit "
             "change | file MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    base = data["rows"][0]["top1"]
    for r in data["rows"]:
        size = "-" if r.get("file_mb") is None else f"{r['file_mb']:.2f}"
        lines.append(
            f"| {r['format']} | {r['precision']} | {100 * r['top1']:.1f} | "
            f"{100 * (r['top1'] - base):+.1f} | "
            f"{100 * r['agreement']:.1f} | {r['mean_abs_logit_diff']:.4f} | "
            f"{r['max_abs_logit_diff']:.3f} | {size} |")
    lines += ["", f"Mean abs logit of the fp32 model: "
                  f"{data['rows'][0]['mean_abs_logit']:.3f}."]
    return "\n".join(lines + ["", _provenance(source)])


def _summary():
    from benchmarks import summary
    return summary


def f0_peers(source="benchmarks/results_peers.json"):
    """keras_nfnets against timm (eager, channels_last) and ONNX Runtime,
    interleaved in one run: ratios to the best peer, the CPU named."""
    summary = _summary()
    rows = _load(source)
    s = summary.summarize(rows)
    return "\n".join([summary.cpu_line(rows) + ".", "",
                      summary.ratio_table(s), "", _provenance(source)])


def f0_targets(source="benchmarks/results_peers.json"):
    """Issue 16's targets, held or not, in the peer run."""
    summary = _summary()
    rows = _load(source)
    return "\n".join([summary.targets_table(summary.targets(
        summary.summarize(rows))), "", _provenance(source)])


def f0_contended(source="benchmarks/results_contended.json"):
    """The same comparison with a busy loop pinned to one of the cores."""
    return f0_peers(source)


def f0_roofline(source="benchmarks/results_peers.json"):
    """The compute floor of each step at the measured matmul rate, and the
    MFU the 1.5x target would need."""
    summary = _summary()
    rows = _load(source)
    lines = summary.roofline(summary.summarize(rows), rows)
    return "\n".join([summary.roofline_table(lines), "",
                      _provenance(source)])


def f0_profile(source="benchmarks/profile_f0.json", top=12):
    """One profiled F0 training step (benchmarks/profile_step.py), by what
    the ops are for and by op type."""
    from benchmarks import profile_step
    data = _load(source)
    ops = data["ops"]
    total = sum(o["s"] for o in ops)
    cpu = data["cpu"]
    lines = [f"F0 training step, batch {data['batch']} x {data['size']} px, "
             f"remat {data['remat']}, AGC {data['agc_clipping']}, TensorFlow "
             f"{data['tensorflow']} on {cpu['model']} ({cpu['isa']}): "
             f"{data['wall_s']:.2f} s wall when profiled (unprofiled steps "
             + ", ".join(f"{v:.2f}" for v in data["unprofiled_step_s"])
             + f" s), {total:.2f} s of op time summed over TensorFlow's "
             "inter-op threads.", "",
             "| what for | op s | share |", "| --- | --- | --- |"]
    for name, sec in profile_step.by_category(ops).most_common():
        lines.append(f"| {name} | {sec:.2f} | {100 * sec / total:.1f} % |")
    lines += ["", "| phase | op s | share |", "| --- | --- | --- |"]
    for name, sec in profile_step.by_phase(ops).most_common():
        lines.append(f"| {name} | {sec:.2f} | {100 * sec / total:.1f} % |")
    lines += ["", "| op type | op s | share |", "| --- | --- | --- |"]
    for name, sec in profile_step.by_type(ops).most_common(top):
        lines.append(f"| {name} | {sec:.2f} | {100 * sec / total:.1f} % |")
    return "\n".join(lines + ["", _provenance(source)])


def f0_first_step(source="benchmarks/results_first_step.json"):
    """The first training step from process start, phase by phase, per
    configuration (benchmarks/first_step.py), the defaults' phases and
    grappler passes, and what the fastest first step costs later."""
    from benchmarks import first_step
    summary = _summary()
    runs = _load(source)["runs"]
    parts = [summary.cpu_line(runs) + ".", "", first_step.table(runs)]
    notes = [f"{r['config']}: {r['note']}" for r in runs if r.get("note")]
    if notes:
        parts += ["", "Notes: " + "; ".join(notes) + "."]
    defaults = next((r for r in runs if r["config"] == "defaults"), None)
    if defaults is not None:
        base = defaults["steady_step_median_s"]

        def said(r):
            change = 100 * (r["steady_step_median_s"] / base - 1)
            return (f"{r['config']} ({r['description']}), "
                    f"{r['first_step_s_since_start']:.1f} s against the "
                    f"defaults' {defaults['first_step_s_since_start']:.1f} "
                    f"s, steady step {r['steady_step_median_s']:.2f} s "
                    f"against {base:.2f} s ({change:+.0f} %), peak RSS "
                    f"{r['peak_rss_gb']:.2f} GB against "
                    f"{defaults['peak_rss_gb']:.2f} GB")
        knobs = [r for r in runs if "diagnostic" not in r["description"]]
        best = min(knobs, key=lambda r: r["first_step_s_since_start"])
        lines = [f"The shortest first step: {said(best)}."]
        level = [r for r in knobs if r["steady_step_median_s"] <= 1.02 * base
                 and r is not defaults]
        if level and min(level, key=lambda r: r[
                "first_step_s_since_start"]) is not best:
            lines.append("The shortest with no slower steady step: "
                         + said(min(level, key=lambda r: r[
                             "first_step_s_since_start"])) + ".")
        parts += ["", " ".join(lines), "",
                  "The defaults, phase by phase:", "",
                  first_step.phase_table(defaults)]
        if defaults["grappler"]["pass_ms"]:
            parts += ["", f"Grappler in the defaults run: "
                          f"{defaults['grappler']['total_ms'] / 1000:.1f} s "
                          f"summed over its passes, on a graph of "
                          f"{defaults['grappler']['nodes_before']} nodes.", "",
                      first_step.pass_table(defaults)]
    return "\n".join(parts + ["", _provenance(source)])


TABLES = {"f0_cpu": f0_cpu, "f0_backends": f0_backends,
          "f0_serving": f0_serving, "f0_int8": f0_int8,
          "f0_peers": f0_peers,
          "f0_contended": f0_contended, "f0_targets": f0_targets, "f0_roofline": f0_roofline,
          "f0_profile": f0_profile, "f0_first_step": f0_first_step}


def repository_slug():
    """`OWNER/NAME` from the comment on README.md's first line."""
    first = (REPO / "README.md").read_text().split("\n", 1)[0]
    match = HOME.match(first + "\n")
    if match is None:
        raise ValueError("README.md's first line must be the comment "
                         "`<!-- repository: https://github.com/OWNER/NAME "
                         "... -->`, the one home of the repository URL")
    return match.group("slug")


def render_links(text, slug=None):
    """`text` with every link to the repository pointing at `slug`."""
    slug = slug or repository_slug()
    return REPO_LINK.sub(lambda m: m.group("host") + slug, text)


def render(text):
    """`text` with every render block regenerated and every repository
    link written from README.md's first line."""
    text = render_links(text)
    def replace(match):
        name = match.group("name")
        if name not in TABLES:
            raise KeyError(f"unknown render block {name!r}; known: "
                           f"{sorted(TABLES)}")
        return match.group(1) + TABLES[name]() + "\n" + match.group(4)
    return BLOCK.sub(replace, text)


def stale(paths=None):
    """The docs whose rendered blocks or repository links differ from their
    sources."""
    out = []
    for rel in paths or DOCS + NOTEBOOKS:
        text = (REPO / rel).read_text()
        new = render_links(text) if rel.endswith(".ipynb") else render(text)
        if new != text:
            out.append(rel)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true",
                   help="only report stale blocks (exit 1 if any)")
    args = p.parse_args(argv)
    if args.check:
        bad = stale()
        for rel in bad:
            print(f"{rel}: a rendered block or repository link differs from "
                  "its source; run "
                  "python -m benchmarks.render_docs")
        return 1 if bad else 0
    for rel in DOCS + NOTEBOOKS:
        path = REPO / rel
        text = path.read_text()
        new = render_links(text) if rel.endswith(".ipynb") else render(text)
        if new != text:
            path.write_text(new)
            print(f"rendered {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
