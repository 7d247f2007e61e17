"""Where NFNet's training step spends its time: one `tf.profiler` trace of
a warmed-up `train_on_batch` step (the package's defaults: SGD with
Nesterov momentum, AGC 0.01, `remat="auto"`), summed by TensorFlow op type
and by what the op is for.

    python benchmarks/profile_step.py --variant F0 --batch 8 --size 192
    python benchmarks/profile_step.py --out benchmarks/profile_f0.json

An op's time is its event on TensorFlow's inter-op ("tf_Compute") threads:
the wall time of that op, including the intra-op threads it fans out to.
Ops on different inter-op threads overlap, so the sum can exceed the step's
wall time on several cores. `--out` writes the step's wall time, the CPU,
and the time per op (scope-normalized name and type), from which
`categorize` and render_docs.py build the tables.
"""

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

_CONV = "Conv2D (forward, and own k x k gradients where used)"
_CONV_DX = "Conv2DBackpropInput (TensorFlow's gradient kernels)"
_CONV_DW = "Conv2DBackpropFilter (TensorFlow's gradient kernels)"
_MATMUL = "MatMul (1x1 convolutions and gradients, SE, classifier)"
CONV_TYPES = {"Conv2D": _CONV, "_FusedConv2D": _CONV,
              "DepthwiseConv2dNative": _CONV,
              "Conv2DBackpropInput": _CONV_DX,
              "Conv2DBackpropFilter": _CONV_DW,
              "MatMul": _MATMUL, "_FusedMatMul": _MATMUL,
              "BatchMatMulV2": _MATMUL}
SPLIT_TYPES = {"Split", "SplitV", "ConcatV2", "Concat", "Slice"}
# A WSConv2D layer's scope: stem_conv0, conv1b_3, final_conv_1, ...
CONV_SCOPE = re.compile(r"(^|/)(stem_)?(final_)?conv\w*?(_\d+)?/[^/]+$")
CATEGORIES = (_CONV, _CONV_DX, _CONV_DW, _MATMUL,
              "grouped-conv split / concat",
              "optimizer: momentum update and AGC",
              "GELU and its derivative",
              "weight standardization (+ bias) in conv layers",
              "other elementwise and reductions")


def normalize(name):
    """An op name with instance suffixes dropped, so the same op of each
    block and call sums together: `nfnet_f0_1/nf_block_3/conv1_1/split_2`
    -> `nfnet_f0/nf_block/conv1/split`."""
    return "/".join(re.sub(r"(_\d+)+$", "", part)
                    for part in name.split("/"))


PHASES = ("forward", "backward", "recomputed forward (remat)",
          "optimizer update and AGC", "other (loss, finiteness checks, "
          "unscoped gradient ops)")
# The first scope of a layer inside an NFBlock, as TensorFlow names the
# ops it recomputes in the backward pass (outside the model's scope).
_BLOCK_LAYER = re.compile(r"^(conv\w*|gelu|squeeze_excite|stochastic_depth"
                          r"|skip_gain|relu|silu|act\w*)(/|$)", re.I)


def phase(name):
    """Which part of the step an op belongs to, from its scope: the
    model's forward (`nfnet_f0/...`), autodiff's backward
    (`gradient_tape/...`), a block's forward recomputed by remat in the
    backward pass (a block layer's scope without the model's:
    `conv1b/...`, `Gelu/...`), the optimizer's update (`cond/then/...`)."""
    lower = name.lower()
    if lower.startswith("gradient_tape/"):
        return PHASES[1]
    if lower.startswith("cond/") or re.search(r"(^|/)(sgd|agc)/", lower):
        return PHASES[3]
    if lower.split("/", 1)[0].startswith("nfnet"):
        return PHASES[0]
    if "/" in name and _BLOCK_LAYER.match(name):
        return PHASES[2]
    return PHASES[4]


def base_type(op_type):
    """An op type without the prefix of TensorFlow's oneDNN kernels (where
    oneDNN is on, e.g. on CPUs with AVX512_VNNI or AMX):
    `_MklNativeConv2D` -> `Conv2D`, `_MklNativeFusedConv2D` ->
    `_FusedConv2D`, `_MklMatMul` -> `MatMul`; other types as they are."""
    match = re.fullmatch(r"_Mkl(?:Native)?(Fused)?(\w+)", op_type)
    if not match:
        return op_type
    return ("_Fused" if match.group(1) else "") + match.group(2)


def categorize(name, op_type):
    """What an op of a training step is for (a name-based heuristic over
    the Keras layer scopes and the optimizer's), by its type without
    oneDNN's prefix (`base_type`)."""
    lower = name.lower()
    op_type = base_type(op_type)
    if op_type in CONV_TYPES:
        return CONV_TYPES[op_type]
    if op_type in SPLIT_TYPES and "conv" in lower:
        return "grouped-conv split / concat"
    if (re.search(r"(^|/)(sgd|agc|cond/then)", lower)
            or op_type.startswith(("Assign", "ResourceApply"))
            or "clip" in lower):
        return "optimizer: momentum update and AGC"
    if "gelu" in lower or op_type in ("Tanh", "TanhGrad"):
        return "GELU and its derivative"
    if CONV_SCOPE.search(name):
        return "weight standardization (+ bias) in conv layers"
    return "other elementwise and reductions"


def op_times(logdir):
    """{(op name, op type): seconds} over the inter-op threads' op events,
    and {thread line: seconds of all its events} (for reading)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"),
                     recursive=True)[0]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    totals = collections.Counter()
    lines = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        meta = plane.event_metadata
        for line in plane.lines:
            kind = re.sub(r"/\d+$", "", line.name)
            for ev in line.events:
                lines[kind] += ev.duration_ps / 1e12
            if not line.name.startswith("tf_Compute"):
                continue
            for ev in line.events:
                name = meta[ev.metadata_id].name
                # ExecutorState::Process, ParallelFor: not ops.
                if ":" not in name or "::" in name:
                    continue
                op_name, op_type = name.rsplit(":", 1)
                totals[(normalize(op_name), op_type)] += ev.duration_ps / 1e12
    return totals, lines


def by_type(ops):
    out = collections.Counter()
    for op in ops:
        out[op["type"]] += op["s"]
    return out


def by_phase(ops):
    out = collections.Counter({c: 0.0 for c in PHASES})
    for op in ops:
        out[phase(op["name"])] += op["s"]
    return out


def by_category(ops):
    out = collections.Counter({c: 0.0 for c in CATEGORIES})
    for op in ops:
        out[categorize(op["name"], op["type"])] += op["s"]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="F0")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--remat", default="auto", choices=["auto", "on", "off"],
                   help="the model's remat (auto: the default, on for CPU)")
    p.add_argument("--agc_clipping", type=float, default=0.01)
    p.add_argument("--tf_threads", default=None, metavar="INTRA:INTER")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", default=None, help="write the profile as JSON")
    args = p.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import peers
    if args.tf_threads:
        from benchmark import set_tf_threads
        set_tf_threads(args.tf_threads)
    import numpy as np
    import keras
    import tensorflow as tf
    import keras_nfnets
    from keras_nfnets import compat
    model = keras_nfnets.NFNet(args.variant, weights=None,
                               input_shape=(args.size, args.size, 3),
                               classifier_activation=None,
                               remat={"auto": "auto", "on": True,
                                      "off": False}[args.remat])
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        agc_clipping=args.agc_clipping if args.agc_clipping > 0 else None)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype(
        "float32")
    y = rng.integers(0, 1000, (args.batch,))
    unprofiled = []
    for _ in range(3):
        t = time.perf_counter()
        model.train_on_batch(x, y)
        unprofiled.append(time.perf_counter() - t)
    logdir = tempfile.mkdtemp()
    tf.profiler.experimental.start(logdir)
    t = time.perf_counter()
    model.train_on_batch(x, y)
    wall = time.perf_counter() - t
    tf.profiler.experimental.stop()
    totals, lines = op_times(logdir)
    ops = [dict(name=n, type=ty, s=round(s, 6))
           for (n, ty), s in totals.most_common()]
    total = sum(o["s"] for o in ops)
    print(f"step wall {wall:.2f} s (unprofiled: "
          f"{', '.join(f'{v:.2f}' for v in unprofiled)} s); op time summed "
          f"over inter-op threads {total:.2f} s")
    print("| op type | s | share |")
    print("| --- | --- | --- |")
    for name, s in by_type(ops).most_common(args.top):
        print(f"| {name} | {s:.3f} | {s / total:.1%} |")
    print()
    print("| what for | s | share |")
    print("| --- | --- | --- |")
    for name, s in by_category(ops).most_common():
        print(f"| {name} | {s:.3f} | {s / total:.1%} |")
    print()
    print("| phase | s | share |")
    print("| --- | --- | --- |")
    for name, s in by_phase(ops).most_common():
        print(f"| {name} | {s:.3f} | {s / total:.1%} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(variant=args.variant, batch=args.batch,
                           size=args.size, remat=args.remat,
                           agc_clipping=args.agc_clipping,
                           tf_threads=args.tf_threads,
                           tensorflow=tf.__version__,
                           onednn=compat.tensorflow_uses_onednn(),
                           cpu=peers.cpu_info(), wall_s=wall,
                           unprofiled_step_s=unprofiled,
                           thread_lines_s=dict(lines), ops=ops), f, indent=0)


if __name__ == "__main__":
    main()
