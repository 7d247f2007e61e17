"""Summaries of a benchmark run's rows (benchmarks/benchmark.py's JSON):
one line per configuration, medians over rounds, each keras_nfnets
configuration's ratio to the best peer of its precision (fp32 rows against
fp32 peers, bf16 against bf16: fp32 is the headline), the peers that
failed and why, and a roofline floor from the matmul rate. Pure Python: benchmark.py prints these tables and
render_docs.py renders the same ones into README.md / docs/.
"""

import statistics

PEER_NAMES = {"timm": "timm eager",
              "timm_channels_last": "timm channels_last",
              "timm_compile": "timm torch.compile",
              "onnxruntime": "ONNX Runtime (timm export)",
              "openvino": "OpenVINO (timm, from PyTorch)"}
# The speed-ups over the best peer that issue 30 asks for, per mode:
# training at keras_nfnets' defaults, and inference of the recommended
# serving route (judged in the serving table, benchmark.py).
TARGET_RATIOS = {"train": 1.0, "infer": 1.2}
TARGET_RATIO = TARGET_RATIOS["train"]


def is_peer(row):
    return row.get("impl", "keras_nfnets") != "keras_nfnets"


def precision_class(row):
    """"fp32", "bf16" or "fp16": what a row computes in (keras_nfnets'
    `mixed_bfloat16` and timm's bf16 autocast are both "bf16")."""
    precision = row.get("precision") or "float32"
    if "bfloat16" in precision:
        return "bf16"
    return "fp16" if "float16" in precision else "fp32"


def label(row):
    """A configuration's name: the peer's, or keras_nfnets with what
    differs from its defaults."""
    impl = row.get("impl", "keras_nfnets")
    if impl != "keras_nfnets":
        name = PEER_NAMES.get(impl, impl)
        extras = []
        if (row.get("memory_format") == "channels_last"
                and impl != "timm_channels_last"):
            extras.append("channels_last")
        if row.get("compile") and impl != "timm_compile":
            extras.append("torch.compile")
        if extras:
            name = ("timm " if impl == "timm" else name + " + ") + \
                " + ".join(extras)
        if precision_class(row) == "bf16":
            name += ", bf16" if impl == "openvino" else ", bf16 autocast"
        if row.get("mode") == "train" and row.get("agc_clipping") is None:
            name += ", no AGC"
        return name
    parts = []
    if row.get("backend", "tensorflow") != "tensorflow":
        parts.append(row["backend"])
    if (row.get("precision") or "float32") != "float32":
        parts.append(row["precision"])
    if row.get("remat_arg", "auto") != "auto":
        parts.append(f"remat {row['remat_arg']}")
    if row.get("tf_threads"):
        intra, inter = row["tf_threads"].split(":")
        parts += [f"TF {kind} threads {n}" for kind, n in
                  (("intra-op", intra), ("inter-op", inter)) if n != "0"]
    if row.get("allocator", "default") != "default":
        parts.append(f"{row['allocator']} allocator")
    if row.get("mode") == "train" and "agc_clipping" in row and (
            row["agc_clipping"] is None):
        parts.append("no AGC")
    if row.get("jit"):
        parts.append("XLA")
    if row.get("grouped_conv") == "native":
        parts.append("native grouped conv")
    return "keras_nfnets" + (f", {', '.join(parts)}" if parts
                             else " (defaults)")


def summarize(rows):
    """One dict per (mode, configuration), in first-seen order: medians
    over rounds, `ratio` to the best peer of that mode and precision
    (keras_nfnets rows; None without such peers) and `vs` (the ratio to
    each of those peers). Error rows (a peer that failed) are left out:
    `failed_lines` names them."""
    groups = {}
    for row in rows:
        if "images_per_s" not in row:
            continue
        groups.setdefault((row["mode"], label(row)), []).append(row)
    out = []
    for (mode, name), rs in groups.items():
        rs = sorted(rs, key=lambda r: r.get("round", 0))
        mfus = [r["mfu"] for r in rs if r.get("mfu") is not None]
        out.append(dict(
            mode=mode, label=name, peer=is_peer(rs[0]),
            precision=precision_class(rs[0]),
            batch=rs[0]["batch"], size=rs[0]["size"],
            images_per_s=statistics.median(r["images_per_s"] for r in rs),
            rounds=[r["images_per_s"] for r in rs],
            peak_rss_gb=max(r["peak_rss_gb"] for r in rs),
            # Resident before the first step (runtime + model + input), in
            # the rounds' median; None for runs before it was recorded.
            base_rss_gb=(statistics.median(
                r["rss_before_first_step_gb"] for r in rs)
                if all(r.get("rss_before_first_step_gb") is not None
                       for r in rs) else None),
            first_step_s=statistics.median(
                r["first_step_s_since_start"] for r in rs),
            matmul_gflops=statistics.median(r["matmul_gflops"] for r in rs),
            mfu=statistics.median(mfus) if mfus else None,
            flops_per_image=rs[0].get("flops_per_image")))
    for mode, precision in {(s["mode"], s["precision"]) for s in out}:
        peers = [s for s in out if s["mode"] == mode and s["peer"]
                 and s["precision"] == precision]
        best = max(peers, key=lambda s: s["images_per_s"], default=None)
        for s in out:
            if s["mode"] != mode or s["precision"] != precision:
                continue
            s["best_peer"] = best["label"] if best else None
            s["ratio"] = (s["images_per_s"] / best["images_per_s"]
                          if best else None)
            s["vs"] = {p["label"]: s["images_per_s"] / p["images_per_s"]
                       for p in peers}
    return out


def cpu_line(rows):
    """The machine in words, from the rows' `cpu` records."""
    cpus = [r["cpu"] for r in rows if r.get("cpu")]
    if not cpus:
        return "CPU not recorded"
    c = cpus[0]
    models = sorted({x["model"] for x in cpus})
    loads = [x["loadavg_1min"] for x in cpus if "loadavg_1min" in x]
    line = (f"CPU: {' / '.join(models)}, {c.get('usable_cpus')} usable of "
            f"{c.get('logical_cpus')} logical CPUs, {c['isa']}")
    if loads:
        line += (f"; load average at each process start "
                 f"{min(loads):.1f}-{max(loads):.1f}")
    contended = [r["contended"] for r in rows if r.get("contended")]
    if contended:
        line += (f"; contended: a busy-loop process pinned to CPU "
                 f"{contended[0]['cpu']} throughout")
    return line


def _fmt(v, spec, none="-"):
    return none if v is None else format(v, spec)


def ratio_table(summary):
    """Markdown: each configuration, its ratio to the best peer."""
    lines = ["| mode | configuration | batch x px | img/s, median (per round) "
             "| ratio to best peer | peak RSS GB | first step s | MFU |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in sorted(summary, key=lambda s: (
            s["mode"] != "train", s.get("precision", "fp32") != "fp32",
            s["peer"])):
        rounds = ", ".join(f"{v:.2f}" for v in s["rounds"])
        ratio = ("peer" if s["peer"] and s["label"] != s["best_peer"]
                 else "best peer" if s["peer"]
                 else _fmt(s["ratio"], ".2f") + "×")
        lines.append(
            f"| {s['mode']} | {s['label']} | {s['batch']} x {s['size']} | "
            f"{s['images_per_s']:.2f} ({rounds}) | {ratio} | "
            f"{s['peak_rss_gb']:.2f} | {s['first_step_s']:.1f} | "
            f"{_fmt(s['mfu'] and 100 * s['mfu'], '.0f')} % |")
    return "\n".join(lines)


def failed_lines(rows):
    """One line per configuration that failed (a peer's error rows): its
    mode, name, in how many of the run's processes, and the reason."""
    failed = {}
    for row in rows:
        if row.get("error"):
            failed.setdefault((row.get("mode"), label(row), row["error"]),
                              []).append(row)
    return [f"{mode} {name}: not measured, failed in {len(rs)} "
            f"process{'es' if len(rs) > 1 else ''} of the run: {error}"
            for (mode, name, error), rs in failed.items()]


def ratio_lines(summary):
    """One line per keras_nfnets configuration: its ratio to each peer."""
    out = []
    for s in summary:
        if s["peer"] or not s.get("vs"):
            continue
        vs = ", ".join(f"{v:.2f}× {name}" for name, v in s["vs"].items())
        out.append(f"{s['mode']:5s} {s['label']}: {s['ratio']:.2f}× the best "
                   f"peer ({s['best_peer']}); {vs}")
    return out


def roofline(summary, rows):
    """Per mode: the step's model FLOPs, the compute floor at the
    process's fp32 matmul rate, and the step time the mode's target
    (`TARGET_RATIOS`: × the best peer) needs, as the MFU that would take:
    over 100 %, no fp32 implementation reaches it on that CPU."""
    out = []
    for mode in ("train", "infer"):
        ours = [s for s in summary if s["mode"] == mode and not s["peer"]
                and s["label"] == "keras_nfnets (defaults)"]
        if not ours:
            continue
        s = ours[0]
        peers = [p for p in summary if p["mode"] == mode and p["peer"]
                 and p.get("precision") == s.get("precision")]
        if not peers or not s["flops_per_image"]:
            continue
        best = max(peers, key=lambda p: p["images_per_s"])
        factor = 3 if mode == "train" else 1
        work = factor * s["flops_per_image"] * s["batch"] / 1e9
        rate = s["matmul_gflops"]
        peer_s = s["batch"] / best["images_per_s"]
        need_s = peer_s / TARGET_RATIOS[mode]
        out.append(dict(
            mode=mode, gflop_per_step=work, matmul_gflops=rate,
            floor_s=work / rate, ours_s=s["batch"] / s["images_per_s"],
            ours_mfu=s["mfu"], best_peer=best["label"], peer_s=peer_s,
            peer_mfu=best["mfu"], target=TARGET_RATIOS[mode],
            target_s=need_s, target_mfu=work / need_s / rate))
    return out


def roofline_table(lines):
    head = ["| mode | model GFLOP / step | matmul GFLOP/s | compute floor "
            "s/step (100 % of matmul) | keras_nfnets s/step (MFU) | best peer "
            "s/step (MFU) | target: × the best peer, s/step | MFU it needs |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in lines:
        head.append(
            f"| {r['mode']} | {r['gflop_per_step']:.0f} | "
            f"{r['matmul_gflops']:.0f} | {r['floor_s']:.2f} | "
            f"{r['ours_s']:.2f} ({_fmt(r['ours_mfu'] and 100 * r['ours_mfu'], '.0f')} %) | "
            f"{r['peer_s']:.2f} ({_fmt(r['peer_mfu'] and 100 * r['peer_mfu'], '.0f')} %, "
            f"{r['best_peer']}) | {r['target']}×: {r['target_s']:.2f} | "
            f"{100 * r['target_mfu']:.0f} % |")
    return "\n".join(head)


#: Issue 30's AGC line, as `targets` names it (benchmarks/agc_cost.py
#: measures it inside one process per side and gives the same name).
AGC_TARGET = "AGC's per-step cost ≤ timm's own"


def targets(summary):
    """Issue 30's targets against one run's summary: training at
    keras_nfnets' defaults ≥ `TARGET_RATIO` × the best peer, with its peak
    memory beside timm eager's (issue 16: at most it), and AGC's per-step
    share (AGC on against off, in the same run) at most timm's own; the
    first step against issue 16's 30 s. The serving target is judged in
    the serving table (benchmark.py's `serving_recommendation`)."""
    def find(mode, name):
        return next((s for s in summary if s["mode"] == mode
                     and s["label"] == name), None)
    out = []
    ours = find("train", "keras_nfnets (defaults)")
    timm = find("train", PEER_NAMES["timm"])
    if ours and ours.get("ratio") is not None:
        out.append(dict(
            target=f"training ≥ {TARGET_RATIO}× the best peer",
            measured=f"{ours['ratio']:.2f}× {ours['best_peer']}",
            holds=ours["ratio"] >= TARGET_RATIO))
    if ours and timm:
        measured = (f"{ours['peak_rss_gb']:.2f} GB vs "
                    f"{timm['peak_rss_gb']:.2f} GB "
                    f"({ours['peak_rss_gb'] / timm['peak_rss_gb']:.2f}×)")
        if ours["base_rss_gb"] is not None and timm["base_rss_gb"] is not None:
            # What the training step adds to what the process held before
            # it (the framework's runtime, the model, the batch).
            measured += (
                f"; above the memory before the first step: "
                f"{ours['peak_rss_gb'] - ours['base_rss_gb']:.2f} GB vs "
                f"{timm['peak_rss_gb'] - timm['base_rss_gb']:.2f} GB "
                f"(before it: {ours['base_rss_gb']:.2f} vs "
                f"{timm['base_rss_gb']:.2f} GB)")
        out.append(dict(
            target="peak training memory ≤ timm eager's",
            measured=measured,
            holds=ours["peak_rss_gb"] <= timm["peak_rss_gb"]))
    ours_off = find("train", "keras_nfnets, no AGC")
    timm_off = find("train", PEER_NAMES["timm"] + ", no AGC")
    if ours and ours_off and timm and timm_off:
        share = ours_off["images_per_s"] / ours["images_per_s"] - 1
        peer_share = timm_off["images_per_s"] / timm["images_per_s"] - 1
        out.append(dict(
            target=AGC_TARGET,
            measured=(f"{100 * share:+.1f} % step time (timm: "
                      f"{100 * peer_share:+.1f} %)"),
            holds=share <= peer_share))
    if ours:
        out.append(dict(
            target="first training step ≤ 30 s from process start",
            measured=f"{ours['first_step_s']:.1f} s",
            holds=ours["first_step_s"] <= 30))
    return out


def targets_table(lines):
    out = ["| target | measured (keras_nfnets defaults) | holds |",
           "| --- | --- | --- |"]
    for t in lines:
        out.append(f"| {t['target']} | {t['measured']} | "
                   f"{'yes' if t['holds'] else 'no'} |")
    return "\n".join(out)
