"""Where CPU inference time goes, op by op, in OpenVINO: the folded
NFNet's IR (`model.export(format="openvino")`) and timm's model converted
by OpenVINO, profiled by the CPU plugin's own counters, and what a
Winograd F(2, 3) formulation of the stride-1 3x3 convolutions could save.

    python benchmarks/serving_profile.py --out benchmarks/results_serving_profile.json

Each IR is made by a process of its own (TensorFlow and PyTorch are never
in one process) and both are profiled in this one, interleaved over
`--rounds`, at each batch (static shapes), compiled with
`{"INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": "YES"}`. An executed
node's time is the plugin's `real_time`; its FLOPs (multiply-adds x 2,
convolutions and matrix products) come from the compiled graph's shapes.

The Winograd rows take every distinct stride-1 3x3 convolution shape of
the folded IR and time, in one process and interleaved, OpenVINO's own
convolution against F(2, 3) written as OpenVINO ops (input transform as
slices and adds, the 16 x groups products as one batched `MatMul`, output
transform as adds and a transpose); the `MatMul` node's own time is what
the formulation would cost if its transforms were free, and so is F(4, 3)'s
`MatMul` alone (its 36 x groups products, transforms left out). The
network rows put those times in place of the profiled convolutions'.
"""

import argparse
import collections
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = 1.2

# One class for the linear layers on pooled features (squeeze-excite and
# classifier), which one IR runs as FullyConnected and the other as 1x1
# convolutions on a 1 x 1 input.
LINEAR = "linear on pooled features"
# Every compiled model: fp32 (OpenVINO's default is bf16 on a CPU with bf16
# arithmetic) and the plugin's per-node counters.
CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": "YES"}
# F(2, 3)'s matrices (Lavin and Gray, 2016): Y = A^T [(G g G^T) * (B^T d B)] A.
WINOGRAD_G = ((1, 0, 0), (.5, .5, .5), (.5, -.5, .5), (0, 0, 1))


def export_ir(which, path, variant, size):
    """Writes one IR: "ours" (the folded model, NHWC input) or "timm"
    (timm's model converted from PyTorch, NCHW input)."""
    import openvino as ov  # pylint: disable=import-outside-toplevel
    if which == "ours":
        import keras_nfnets  # pylint: disable=import-outside-toplevel
        model = keras_nfnets.NFNet(variant, weights=None,
                                   input_shape=(size, size, 3))
        folded = keras_nfnets.fold_weight_standardization(model)
        folded.export(path, format="openvino", verbose=False)
        return
    import torch  # pylint: disable=import-outside-toplevel
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import peers  # pylint: disable=import-outside-toplevel
    # The serving peer's model, made as the peer run makes it.
    # pylint: disable-next=protected-access
    model = peers._timm_model(argparse.Namespace(
        model=peers.TIMM_MODEL, impl="timm", channels_last=False)).eval()
    with torch.no_grad():
        converted = ov.convert_model(
            model, example_input=torch.zeros(1, 3, size, size))
    # fp16 weight compression would change the model's numbers.
    ov.save_model(converted, path, compress_to_fp16=False)


def _dims(shape):
    return [int(v) for v in re.findall(r"\d+", str(shape))]


def node_kind(layer_type, ins, out):
    """(class, FLOPs, convolution shape) of an executed node from its
    compiled input and output shapes: convolutions as "Conv 1x1",
    "GroupConv 3x3, stride 2" ..., with (in channels, out channels, output
    spatial size, groups, kernel, stride); matrix products, and 1x1
    convolutions on a 1 x 1 input, as `LINEAR` with their FLOPs; any other
    node by its type, with no FLOPs."""
    if layer_type in ("FullyConnected", "MatMul") and ins:
        size = 1
        for d in _dims(out):
            size *= d
        return LINEAR, 2 * size * _dims(ins[0])[-1], None
    if layer_type not in ("Convolution", "GroupConvolution") or len(ins) < 2:
        return layer_type, 0, None
    x, w, y = _dims(ins[0]), _dims(ins[1]), _dims(out)
    if len(w) == 5:  # groups, out / group, in / group, kh, kw
        groups, cin_g, (kh, kw) = w[0], w[2], w[3:]
    else:
        groups, cin_g, (kh, kw) = 1, w[1], w[2:]
    stride = x[2] // y[2]
    name = ("GroupConv" if groups > 1 else "Conv") + f" {kh}x{kw}"
    if kh > 1:
        name += f", stride {stride}"
    flops = 2 * y[0] * y[1] * y[2] * y[3] * cin_g * kh * kw
    if y[2:] == [1, 1] and kh == kw == 1:
        return LINEAR, flops, None
    return name, flops, (x[1], y[1], y[2], groups, kh, stride)


def compile_ir(core, model, batch, shape):
    model.reshape({model.inputs[0]: [batch, *shape]})
    return core.compile_model(model, "CPU", CONFIG)


def profile_once(request, x, repeats):
    """{node: (type, seconds per call)} and the median wall time per call."""
    acc = collections.defaultdict(float)
    types = {}
    walls = []
    for _ in range(repeats):
        t = time.perf_counter()
        request.infer({0: x})
        walls.append(time.perf_counter() - t)
        for p in request.profiling_info:
            if p.status == p.Status.EXECUTED:
                acc[p.node_name] += p.real_time.total_seconds() / repeats
                types[p.node_name] = p.node_type
    return {k: (types[k], v) for k, v in acc.items()}, statistics.median(walls)


def node_shapes(compiled):
    """{node: (input shapes, output shape)} of a compiled model's runtime
    graph."""
    out = {}
    for node in compiled.get_runtime_model().get_ordered_ops():
        ins = [str(node.get_input_partial_shape(i))
               for i in range(node.get_input_size())]
        outs = ([str(node.get_output_partial_shape(0))]
                if node.get_output_size() else [""])
        out[node.get_friendly_name()] = (ins, outs[0])
    return out


def by_class(times, shapes):
    """Per op class: seconds, FLOPs, node count; and the stride-1 3x3
    convolutions one by one (their shape key and seconds)."""
    classes = {}
    s1 = []
    for name, (ntype, sec) in times.items():
        key, flops, conv = node_kind(ntype, *shapes.get(name, ([], "")))
        row = classes.setdefault(key, dict(s=0.0, flops=0, nodes=0))
        row["s"] += sec
        row["flops"] += flops
        row["nodes"] += 1
        if conv and conv[4] == 3 and conv[5] == 1:
            s1.append(dict(shape=list(conv[:4]), s=sec))
    return classes, s1


def winograd_weights(w):
    """U = G g G^T for weights (groups, out, in, 3, 3), as (16 x groups,
    out, in) in the order the product takes them."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    g = np.array(WINOGRAD_G, np.float64)
    u = np.einsum("ak,goikl,bl->abgoi", g, w.astype(np.float64), g)
    return u.reshape(16 * w.shape[0], w.shape[1], w.shape[2]).astype(
        np.float32)


def direct_model(n, cin, h, w):
    """OpenVINO's own grouped convolution, stride 1, "same" padding."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import openvino as ov  # pylint: disable=import-outside-toplevel
    import openvino.opset13 as op  # pylint: disable=import-outside-toplevel
    x = op.parameter([n, cin, h, h], np.float32)
    y = op.group_convolution(x, op.constant(w), [1, 1], [1, 1], [1, 1],
                             [1, 1])
    return ov.Model([y], [x])


def winograd_model(n, cin, h, w):
    """The same convolution as Winograd F(2, 3) in OpenVINO ops (`h` even)."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import openvino as ov  # pylint: disable=import-outside-toplevel
    import openvino.opset13 as op  # pylint: disable=import-outside-toplevel
    groups, cout_g, cin_g = w.shape[:3]
    t, c = h // 2, lambda v: op.constant(np.array(v, np.int64))
    x = op.parameter([n, cin, h, h], np.float32)
    xp = op.pad(x, c([0, 0, 1, 1]), c([0, 0, 1, 1]), "constant")

    def rows(v, axis, i):  # elements i, i + 2, ... along a spatial axis
        begin, end, step = [0] * 4, [n, cin, h + 2, h + 2], [1] * 4
        begin[axis], end[axis], step[axis] = i, i + 2 * t - 1, 2
        return op.strided_slice(v, c(begin), c(end), c(step), [0] * 4,
                                [0] * 4)

    def b_t(d):  # B^T d along one axis: d0 - d2, d1 + d2, d2 - d1, d1 - d3
        return [op.subtract(d[0], d[2]), op.add(d[1], d[2]),
                op.subtract(d[2], d[1]), op.subtract(d[1], d[3])]

    v = [e for r in b_t([rows(xp, 2, i) for i in range(4)])
         for e in b_t([rows(r, 3, j) for j in range(4)])]
    v = op.concat([op.unsqueeze(e, c([0])) for e in v], 0)
    v = op.reshape(v, c([16, n, groups, cin_g, t * t]), False)
    v = op.transpose(v, c([0, 2, 3, 1, 4]))
    v = op.reshape(v, c([16 * groups, cin_g, n * t * t]), False)
    m = op.matmul(op.constant(winograd_weights(w)), v, False, False)
    m = op.reshape(m, c([4, 4, groups * cout_g * n * t * t]), False)

    def take(v, i):
        return op.gather(v, c([i]), c(0))

    def a_t(d):  # A^T d along one axis: d0 + d1 + d2, d1 - d2 - d3
        return [op.add(op.add(d[0], d[1]), d[2]),
                op.subtract(op.subtract(d[1], d[2]), d[3])]

    rows_a = a_t([op.squeeze(take(m, a), c([0])) for a in range(4)])
    y = op.concat([e for r in rows_a
                   for e in a_t([take(r, b) for b in range(4)])], 0)
    y = op.reshape(y, c([2, 2, groups, cout_g, n, t, t]), False)
    y = op.transpose(y, c([4, 2, 3, 5, 0, 6, 1]))
    return ov.Model([op.reshape(y, c([n, groups * cout_g, h, h]), False)],
                    [x])


def products_model(n, cin, h, w, m):
    """F(m, 3)'s products alone, on its transformed input: (m + 2)^2 x
    groups matrix products over ceil(h / m)^2 tiles per image (the input
    padded to whole tiles), transforms left out (their cost is not in this
    time)."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import openvino as ov  # pylint: disable=import-outside-toplevel
    import openvino.opset13 as op  # pylint: disable=import-outside-toplevel
    groups, cout_g, cin_g = w.shape[:3]
    k = (m + 2) ** 2 * groups
    v = op.parameter([k, cin_g, n * (-(-h // m)) ** 2], np.float32)
    u = np.random.default_rng(0).standard_normal((k, cout_g, cin_g))
    return ov.Model([op.matmul(op.constant(u.astype(np.float32)), v, False,
                               False)], [v])


def winograd_rows(core, shapes, batches, rounds, repeats):
    """Per (shape, batch): OpenVINO's convolution, F(2, 3) as ops, and
    that formulation's matrix products alone, in ms (medians over
    interleaved rounds), with the largest difference from the
    convolution's output relative to its largest value."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    rows = []
    for cin, cout, h, groups in shapes:
        w = (rng.standard_normal((groups, cout // groups, cin // groups, 3, 3))
             / np.sqrt(9 * cin / groups)).astype(np.float32)
        for n in batches:
            x = rng.standard_normal((n, cin, h, h)).astype(np.float32)
            models = dict(direct=direct_model(n, cin, h, w),
                          winograd=winograd_model(n, cin, h, w),
                          f43=products_model(n, cin, h, w, 4))
            requests = {name: core.compile_model(
                model, "CPU", CONFIG).create_infer_request()
                for name, model in models.items()}
            inputs = {name: x if name != "f43" else rng.standard_normal(
                models[name].inputs[0].shape).astype(np.float32)
                for name in models}
            outs = {k: requests[k].infer({0: inputs[k]})[0].copy()
                    for k in ("direct", "winograd")}
            ms = collections.defaultdict(list)
            for i in range(rounds):
                for name in sorted(requests, reverse=i % 2 == 1):
                    times, wall = profile_once(requests[name], inputs[name],
                                               repeats)
                    ms[name].append(1e3 * wall)
                    if name != "direct":
                        ms[f"{name}_matmul"].append(1e3 * sum(
                            s for t, s in times.values()
                            if t in ("MatMul", "FullyConnected")))
            diff = np.abs(outs["winograd"] - outs["direct"]).max()
            rows.append(dict(
                in_channels=cin, out_channels=cout, spatial=h, groups=groups,
                batch=n, rel_diff=float(diff / np.abs(outs["direct"]).max()),
                direct_ms=statistics.median(ms["direct"]),
                winograd_ms=statistics.median(ms["winograd"]),
                matmul_ms=statistics.median(ms["winograd_matmul"]),
                f43_matmul_ms=statistics.median(ms["f43_matmul"]),
                gflops=2 * n * h * h * cout * (cin // groups) * 9 / 1e9))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def network_bounds(profiles, wino, batches):
    """Per batch: ours and timm's profiled time, and ours with every
    stride-1 3x3 convolution at its shape's Winograd time (as ops; matrix
    products alone), against timm's."""
    out = []
    for n in batches:
        ours, timm = profiles["ours"][str(n)], profiles["timm"][str(n)]
        total = sum(r["s"] for r in ours["classes"].values())
        ratio = {(tuple(r[k] for k in ("in_channels", "out_channels",
                                        "spatial", "groups"))): r
                 for r in wino if r["batch"] == n}
        saved = collections.Counter()
        for conv in ours["stride1_3x3"]:
            r = ratio[tuple(conv["shape"])]
            for what, field in (("as_ops", "winograd_ms"),
                                ("matmul_only", "matmul_ms"),
                                ("f43_matmul_only", "f43_matmul_ms")):
                saved[what] += conv["s"] * (1 - r[field] / r["direct_ms"])
        peer = sum(r["s"] for r in timm["classes"].values())
        out.append(dict(
            batch=n, ours_ms=1e3 * total, timm_ms=1e3 * peer,
            stride1_3x3_ms=1e3 * sum(c["s"] for c in ours["stride1_3x3"]),
            ratio=peer / total,
            **{f"ratio_winograd_{k}": peer / (total - v)
               for k, v in saved.items()}))
    return out


def _cell(classes, key, total):
    row = classes.get(key)
    if row is None:
        return "-"
    rate = (f", {row['flops'] / row['s'] / 1e9:.0f} GFLOP/s"
            if row["flops"] else "")
    return f"{1e3 * row['s']:.1f} ({100 * row['s'] / total:.1f} %){rate}"


def tables(data):
    """The record as markdown: the op classes of both IRs per batch, the
    Winograd rows, and the network with each formulation."""
    batches = [str(n) for n in data["batches"]]
    prof = data["profiles"]
    keys = sorted({k for side in prof.values() for n in batches
                   for k in side[n]["classes"]},
                  key=lambda k: -prof["ours"][batches[-1]]["classes"].get(
                      k, {"s": 0})["s"])
    head = "| op class | GFLOP per image |"
    rule = "| --- | --- |"
    for n in batches:
        head += f" batch {n}: ours ms (share), rate | timm ms (share), rate |"
        rule += " --- | --- |"
    out = [head, rule]
    totals = {(side, n): sum(r["s"] for r in prof[side][n]["classes"].values())
              for side in prof for n in batches}
    for key in keys:
        flops = max(prof[side][n]["classes"].get(key, {"flops": 0})["flops"]
                    / int(n) for side in prof for n in batches)
        line = f"| {key} | {flops / 1e9:.2f} |" if flops else f"| {key} | - |"
        for n in batches:
            line += "".join(
                f" {_cell(prof[side][n]['classes'], key, totals[side, n])} |"
                for side in ("ours", "timm"))
        out.append(line)
    line = "| all executed nodes | |"
    for n in batches:
        line += "".join(f" {1e3 * totals[side, n]:.1f} (100 %) |"
                        for side in ("ours", "timm"))
    out.append(line)
    cpu = data["cpu"]
    out += ["", f"OpenVINO {data['openvino']} on {cpu.get('model')} "
            f"({cpu.get('isa')}), fp32 (`INFERENCE_PRECISION_HINT` f32), "
            f"NFNet-{data['variant']} at {data['size']} px, static batch; "
            f"`{LINEAR}`: the squeeze-excite layers and the classifier "
            "(`FullyConnected` nodes in one IR, 1x1 convolutions on a 1 x 1 "
            "input in the other); "
            f"node times are the CPU plugin's counters, medians over "
            f"{data['rounds']} interleaved rounds of {data['repeats']} calls. "
            f"This process's fp32 ceiling (the fastest of five 2048 x 2048 "
            f"numpy products): {data['ceiling_gflops']:.0f} GFLOP/s.", "",
            "| stride-1 3x3 convolution (channels in → out, output px, "
            "groups) | batch | OpenVINO's convolution ms (GFLOP/s) | "
            "F(2, 3) as OpenVINO ops ms | its MatMul alone ms | "
            "F(4, 3)'s MatMul alone ms | F(2, 3) difference (relative) |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in data["winograd"]:
        out.append(
            f"| {r['in_channels']} → {r['out_channels']}, {r['spatial']} px, "
            f"{r['groups']} | {r['batch']} | {r['direct_ms']:.2f} "
            f"({r['gflops'] / r['direct_ms'] * 1e3:.0f}) | "
            f"{r['winograd_ms']:.2f} | {r['matmul_ms']:.2f} | "
            f"{r['f43_matmul_ms']:.2f} | {r['rel_diff']:.1e} |")
    out += ["", "| batch | ours ms | timm ms | ours against timm | stride-1 "
            "3x3 convolutions ms (share of ours) | with F(2, 3) as OpenVINO "
            "ops | with F(2, 3)'s MatMul alone | with F(4, 3)'s MatMul alone "
            "| target |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in data["network"]:
        out.append(
            f"| {r['batch']} | {r['ours_ms']:.1f} | {r['timm_ms']:.1f} | "
            f"{r['ratio']:.2f}× | {r['stride1_3x3_ms']:.1f} "
            f"({100 * r['stride1_3x3_ms'] / r['ours_ms']:.0f} %) | "
            f"{r.get('ratio_winograd_as_ops', r['ratio']):.2f}× | "
            f"{r.get('ratio_winograd_matmul_only', r['ratio']):.2f}× | "
            f"{r.get('ratio_winograd_f43_matmul_only', r['ratio']):.2f}× | "
            f"{data['target']}× |")
    slower = sum(r["winograd_ms"] > r["direct_ms"] for r in data["winograd"])
    best = {r["batch"]: max(v for k, v in r.items()
                            if k.startswith("ratio_winograd"))
            for r in data["network"]}
    out += ["", f"F(2, 3) as OpenVINO ops is slower than OpenVINO's "
            f"convolution in {slower} of {len(data['winograd'])} "
            "shape-and-batch rows. The fastest formulation, transforms free, "
            "would put ours at " + ", ".join(
                f"{v:.3f}× timm's at batch {n}" for n, v in best.items())
            + f": the {data['target']}× target is "
            + ("within reach at every batch only if the transforms cost "
               "nothing." if all(v >= data["target"] for v in best.values())
               else "out of reach at batch " + ", ".join(
                   str(n) for n, v in best.items() if v < data["target"])
               + " even then.")]
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="F0")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--winograd_rounds", type=int, default=6)
    p.add_argument("--export", choices=("ours", "timm"), default=None,
                   help=argparse.SUPPRESS)  # a child: write one IR
    p.add_argument("--path", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.export:
        export_ir(args.export, args.path, args.variant, args.size)
        return None
    if args.variant != "F0":
        p.error("timm's peer model is F0's (dm_nfnet_f0): --variant F0 only")
    if args.size % 64:
        p.error(f"--size {args.size}: a multiple of 64 (F0's last stage "
                "works at 1/32 of it, and F(2, 3) tiles even sizes)")
    batches = [int(b) for b in args.batches.split(",")]
    import numpy as np  # pylint: disable=import-outside-toplevel
    import openvino as ov  # pylint: disable=import-outside-toplevel
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import peers  # pylint: disable=import-outside-toplevel
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [REPO, os.environ.get("PYTHONPATH", "")]))
    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for which in ("ours", "timm"):
            path = os.path.join(tmp, f"{which}.xml")
            subprocess.run([sys.executable, os.path.abspath(__file__),
                            "--export", which, "--path", path, "--variant",
                            args.variant, "--size", str(args.size)],
                           env=env, check=True)
            models[which] = core.read_model(path)
        layout = {"ours": (args.size, args.size, 3),
                  "timm": (3, args.size, args.size)}
        rng = np.random.default_rng(0)
        profiles = {k: {} for k in models}
        for n in batches:
            compiled = {k: compile_ir(core, m, n, layout[k])
                        for k, m in models.items()}
            requests = {k: c.create_infer_request()
                        for k, c in compiled.items()}
            x = {k: rng.uniform(-2, 2, (n, *layout[k])).astype(np.float32)
                 for k in models}
            for k, r in requests.items():  # warm up
                profile_once(r, x[k], 2)
            runs = collections.defaultdict(list)
            for i in range(args.rounds):
                for k in sorted(requests, reverse=i % 2 == 1):
                    runs[k].append(profile_once(requests[k], x[k],
                                                args.repeats))
            for k in models:
                shapes = node_shapes(compiled[k])
                # Each node's median over the rounds.
                times = {name: (runs[k][0][0][name][0], statistics.median(
                    run[0][name][1] for run in runs[k]))
                    for name in runs[k][0][0]}
                classes, s1 = by_class(times, shapes)
                profiles[k][str(n)] = dict(
                    wall_ms=1e3 * statistics.median(r[1] for r in runs[k]),
                    classes=classes, stride1_3x3=s1)
                print(k, n, f"{profiles[k][str(n)]['wall_ms']:.1f} ms",
                      flush=True)
    shapes = sorted({tuple(c["shape"]) for n in batches
                     for c in profiles["ours"][str(n)]["stride1_3x3"]})
    wino = winograd_rows(core, shapes, batches, args.winograd_rounds,
                         args.repeats)
    result = dict(variant=args.variant, size=args.size, batches=batches,
                  rounds=args.rounds, repeats=args.repeats,
                  winograd_rounds=args.winograd_rounds,
                  openvino=ov.__version__, cpu=peers.cpu_info(),
                  ceiling_gflops=peers.gemm_ceiling_gflops(), target=TARGET,
                  profiles=profiles, winograd=wino,
                  network=network_bounds(profiles, wino, batches))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
