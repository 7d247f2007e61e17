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
    ceiling = benchmark.serving_ceiling_table(
        benchmark.serving_ceiling(data, rows))
    if ceiling:
        parts += ["", ceiling]
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


def f0_agc_cost(source="benchmarks/results_agc_cost.json"):
    """AGC's per-step cost on each side, two models stepping alternately
    in one process per side (`benchmarks/agc_cost.py`)."""
    from benchmarks import agc_cost
    data = _load(source)
    rows = data["rows"]
    return "\n".join([
        _summary().cpu_line(rows) + ".", "",
        f"Batch {rows[0]['batch']} x {rows[0]['size']} px, AGC clip factor "
        f"{rows[0]['clip_factor']}, {rows[0]['warmup']} warm-up steps of "
        "each model, then pairs of whole steps in alternating order; then "
        "pairs of optimizer updates, with and without AGC, of the same "
        f"fixed gradients (normal, scale {rows[0]['grad_scale']:g}).", "",
        agc_cost.table(rows), "", agc_cost.verdict(rows), "",
        _provenance(source)])


def f0_remat(source="benchmarks/results_remat.json"):
    """`remat="auto"` by memory: F0 training at a large batch in a
    memory-limited cgroup, auto against remat off
    (`benchmarks/remat_memory.py`)."""
    from benchmarks import remat_memory
    data = _load(source)
    return "\n".join(remat_memory.table(data["rows"]) + ["",
                                                          _provenance(source)])


def _summary():
    from benchmarks import summary
    return summary


def f0_peers(source="benchmarks/results_peers.json"):
    """keras_nfnets against timm (eager, channels_last) and ONNX Runtime,
    interleaved in one run: ratios to the best peer, the CPU named."""
    summary = _summary()
    rows = _load(source)
    s = summary.summarize(rows)
    failed = summary.failed_lines(rows)
    return "\n".join([summary.cpu_line(rows) + ".", "",
                      summary.ratio_table(s), *([""] + failed if failed
                                                 else []),
                      "", _provenance(source)])


def f0_targets(source="benchmarks/results_peers.json",
               agc_source="benchmarks/results_agc_cost.json"):
    """Issues 16's and 30's targets, held or not, in the peer run; AGC's
    line from `make bench-agc` (measured inside one process per side)
    where that run is recorded, instead of the peer run's difference of
    two medians taken in different processes."""
    from benchmarks import agc_cost
    summary = _summary()
    lines = summary.targets(summary.summarize(_load(source)))
    sources = [source]
    agc = ((REPO / agc_source).exists()
           and agc_cost.target(_load(agc_source)["rows"]))
    if agc:
        lines = [agc if line["target"] == agc["target"] else line
                 for line in lines]
        sources.append(agc_source)
    return "\n".join([summary.targets_table(lines)] + [
        part for s in sources for part in ("", _provenance(s))])


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


def _kernels(data):
    """", oneDNN kernels" / ", Eigen kernels" where a record says which
    CPU kernels TensorFlow ran (`onednn`); "" in older records."""
    if "onednn" not in data:
        return ""
    return ", oneDNN kernels" if data["onednn"] else ", Eigen kernels"


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
             f"{data['tensorflow']}{_kernels(data)} on {cpu['model']} "
             f"({cpu['isa']}): "
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


def _agc_per_step(source, field=None):
    """AGC's per-step share in the peer run: (our step s with, without,
    timm eager's with, without), each None where the run lacks the row;
    with `field` (e.g. "first_step_s"), that field of the four rows."""
    summary = _summary()
    by = {(r["mode"], r["label"]): r for r in summary.summarize(
        _load(source))}

    def step(name):
        row = by.get(("train", name))
        if not row:
            return None
        return row[field] if field else row["batch"] / row["images_per_s"]
    timm = summary.PEER_NAMES["timm"]
    return (step("keras_nfnets (defaults)"), step("keras_nfnets, no AGC"),
            step(timm), step(timm + ", no AGC"))


def f0_agc(source="benchmarks/results_agc_graph.json",
           first_step_source="benchmarks/results_first_step.json",
           peers_source="benchmarks/results_peers.json"):
    """What AGC adds to NFNet-F0's training: the traced train step's
    graph, before and after the clip was batched (benchmarks/agc_graph.py),
    the first step (benchmarks/first_step.py's agc_off rows) and the steady
    step against timm's own AGC (the peer run's rows without AGC)."""
    data = _load(source)
    runs = data["runs"]
    lines = [_summary().cpu_line(runs) + ".", "",
             f"NFNet-F0's train step traced at batch {data['batch']} x "
             f"{data['size']} px (`tf.function` of `train_step`: graph "
             "nodes, with the functions it calls, do not depend on the "
             "machine's load; the trace times do).", "",
             "| package | configuration | graph nodes | AGC's nodes (vs "
             "AGC off) | per clipped variable | trace s | of it the "
             "optimizer update s |", "| --- | --- | --- | --- | --- | --- "
             "| --- |"]
    names = {"agc": "AGC (defaults)", "skip_only": "non-finite skip only",
             "off": "AGC off"}
    any_off = next((r for r in runs if r["config"] == "off"), None)
    borrowed = False
    for label in dict.fromkeys(r["label"] for r in runs):
        rows = {r["config"]: r for r in runs if r["label"] == label}
        off = rows.get("off")
        if off is None and any_off is not None:
            # AGC off is plain SGD: no AGC code runs in it.
            off, borrowed = any_off, True
        for config in ("agc", "skip_only", "off"):
            r = rows.get(config)
            if r is None:
                continue
            extra = (r["total_nodes"] - off["total_nodes"]
                     if off and config != "off" else None)
            per = (f"{extra / r['clipped_variables']:.1f}"
                   if extra is not None and r["clipped_variables"] else "-")
            lines.append(
                f"| {label} | {names[config]} | {r['total_nodes']} | "
                f"{'-' if extra is None else extra} | {per} | "
                f"{r['trace_s']:.1f} | {r.get('trace_update_s', 0):.1f} |")
    if borrowed:
        lines += ["", f"A package without its own AGC off row is compared "
                      f"with the AGC off row of `{any_off['label']}` (the "
                      "step without AGC runs no AGC code)."]
    lines += ["", _provenance(source)]
    first = {r["config"]: r for r in _load(first_step_source)["runs"]}
    on, off = first.get("defaults"), first.get("agc_off")
    if on and off:
        d_on, d_off = on["durations_s"], off["durations_s"]

        def delta(key):
            return d_on.get(key, 0.0) - d_off.get(key, 0.0)
        share_off = off["first_step_s_since_start"]
        trace = sum(delta(k) for k in (
            "trace_start_s", "trace_forward_s", "trace_gradient_s",
            "trace_update_s", "trace_done_s"))
        text = (f"First step from process start, AGC on against off "
                f"(`first_step.py` rows `defaults` and `agc_off`): "
                f"{on['first_step_s_since_start']:.1f} s against "
                f"{off['first_step_s_since_start']:.1f} s, AGC's share "
                f"{on['first_step_s_since_start'] - share_off:+.1f}"
                f" s (tracing {trace:+.1f} s, of it the optimizer update "
                f"{delta('trace_update_s'):+.1f} s; grappler "
                f"{delta('grappler_end_s'):+.1f} s")
        nodes = (on["grappler"].get("nodes_before"),
                 off["grappler"].get("nodes_before"))
        if None not in nodes:
            text += (f", on a graph of {nodes[0]} nodes against "
                     f"{nodes[1]}")
        text += ")"
        skip = first.get("agc_skip_only")
        if skip:
            text += (f"; with the non-finite skip alone "
                     f"{skip['first_step_s_since_start']:.1f} s")
            if skip["grappler"].get("nodes_before") is not None:
                text += f" ({skip['grappler']['nodes_before']} nodes)"
        lines += ["", text + ".", "", _provenance(first_step_source)]
    ours, ours_off, timm, timm_off = _agc_per_step(peers_source)
    if ours and timm and timm_off:
        text = (f"Steady training step with AGC against without it "
                f"(the peer run, medians over rounds): timm eager "
                f"{timm:.2f} against {timm_off:.2f} s/step "
                f"({100 * (timm / timm_off - 1):+.1f} %); keras_nfnets ")
        text += (f"{ours:.2f} against {ours_off:.2f} s/step "
                 f"({100 * (ours / ours_off - 1):+.1f} %)" if ours_off else
                 f"{ours:.2f} s/step with AGC, and not run without it "
                 "(`--compare_agc` was not in this run)")
        first, first_off, _, _ = _agc_per_step(peers_source, "first_step_s")
        if first_off:
            text += (f". First step from process start in the same run: "
                     f"keras_nfnets {first:.1f} s with AGC against "
                     f"{first_off:.1f} s without ({first - first_off:+.1f} s)")
        lines += ["", text + ".", "", _provenance(peers_source)]
    return "\n".join(lines)


TABLES = {"f0_cpu": f0_cpu, "f0_backends": f0_backends,
          "f0_serving": f0_serving, "f0_int8": f0_int8,
          "f0_peers": f0_peers,
          "f0_contended": f0_contended, "f0_targets": f0_targets, "f0_roofline": f0_roofline,
          "f0_profile": f0_profile, "f0_first_step": f0_first_step,
          "f0_agc": f0_agc, "f0_agc_cost": f0_agc_cost}


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


# When no GPU run is committed: the day and machine on which that was
# last said (the harness was written on a machine without a GPU).
GPU_NOT_MEASURED = dict(
    date="2026-12-05",
    machine="the project's CPU machine class, which has no GPU (none was "
            "lent to the session that wrote the harness)")


def f0_gpu(source="benchmarks/results_gpu.json"):
    """keras_nfnets on JAX against timm on CUDA (`make bench-gpu`,
    benchmarks/gpu.py), or that it was not measured."""
    if not (REPO / source).exists():
        return (f"Not measured: no GPU was available. `make bench-gpu` on a "
                f"machine with one writes `{source}`, and this block renders "
                f"it.\n\nSource: `{source}` (not present), not measured "
                f"{GPU_NOT_MEASURED['date']} on "
                f"{GPU_NOT_MEASURED['machine']}; command: `make bench-gpu "
                f"(benchmarks/gpu.py --device cuda --out {source})`.")
    from benchmarks import gpu
    data = _load(source)
    meta = json.loads((REPO / "benchmarks" / "sources.json").read_text())
    provenance = (_provenance(source) if source in meta else
                  f"Source: `{source}`, measured {data['date']} on "
                  f"{data['gpus']}; command: `{data['command']}`.")
    return "\n".join([gpu.device_line(data), "", gpu.table(data["rows"]),
                      "", provenance])


def _conv_gradients_table(data):
    out = ["| layer | batch x px x channels in → out | forward: Conv2D ms | "
           "forward: own ms | gradients: TF kernels ms | gradients: own ms "
           "| own / TF, forward + gradients |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in data["rows"]:
        ms = r["ms"]
        # Like with like: the own 3x3 gradients are timed as one function
        # (both gradients, which may run side by side), so TF's are too.
        tf_grads = ms.get("TF input + weight gradients",
                          ms["TF input gradient"] + ms["TF weight gradient"])
        if r["kernel"] == 1:
            own_fwd = ms["own forward (MatMul)"]
            own_grads = (ms["own input gradient (MatMul)"]
                         + ms["own weight gradient (MatMul)"])
        else:
            own_fwd = ms["forward convolution"]
            own_grads = ms["own input + weight gradients (convolutions)"]
        ratio = (own_fwd + own_grads) / (ms["forward convolution"]
                                         + tf_grads)
        out.append(
            f"| {r['layer']} | {r['batch']} x {r['spatial']} x "
            f"{r['in_channels']} → {r['out_channels']} | "
            f"{ms['forward convolution']:.1f} | {own_fwd:.1f} | "
            f"{tf_grads:.1f} | {own_grads:.1f} | {ratio:.2f}× |")
    cpu = data["cpu"]
    out += ["", f"TensorFlow {data['tensorflow']}{_kernels(data)} on "
            f"{cpu.get('model')} "
            f"({cpu.get('isa')}); medians of {data['repeats']} calls, "
            f"{data['rounds']} interleaved rounds. The own 3x3 gradients "
            "are `same_conv_with_conv_gradients`' backward pass (input and "
            "weight gradient together, with its transposes) against "
            "`Conv2DBackpropInput` and `Conv2DBackpropFilter` in one "
            "function; the 1x1 rows sum the kernels timed one by one."]
    return "\n".join(out)


def f0_conv_gradients(source="benchmarks/results_conv_gradients.json"):
    """The convolution kernels of F0's training step, TensorFlow's against
    keras_nfnets' own formulations (benchmarks/conv_gradients.py)."""
    return "\n".join([_conv_gradients_table(_load(source)), "",
                      _provenance(source)])


TABLES["f0_conv_gradients"] = f0_conv_gradients

TABLES["f0_conv_gradients_onednn"] = lambda: f0_conv_gradients(
    "benchmarks/results_conv_gradients_onednn.json")
# The same peer and serving runs on the AVX2 CPU (TensorFlow's Eigen kernels).
TABLES["f0_peers_avx2"] = lambda: f0_peers("benchmarks/results_peers_avx2.json")
TABLES["f0_serving_avx2"] = lambda: f0_serving(
    "benchmarks/results_serving_avx2.json")
TABLES["f0_gpu"] = f0_gpu
TABLES["f0_remat"] = f0_remat
TABLES["f0_remat_avx2"] = lambda: f0_remat(
    "benchmarks/results_remat_avx2.json")
TABLES["f0_remat_share035"] = lambda: f0_remat(
    "benchmarks/results_remat_share035.json")


def f0_serving_profile(source="benchmarks/results_serving_profile.json"):
    """OpenVINO's time op class by op class in the folded export and in
    timm's model, and Winograd for the stride-1 3x3 convolutions
    (benchmarks/serving_profile.py)."""
    from benchmarks import serving_profile
    return "\n".join([serving_profile.tables(_load(source)), "",
                      _provenance(source)])


TABLES["f0_serving_profile"] = f0_serving_profile


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
