"""The convolution kernels of NFNet-F0's training step, one layer shape at a
time: TensorFlow's forward convolution and its two gradient kernels
(`Conv2DBackpropInput`, `Conv2DBackpropFilter`) against the formulations
keras_nfnets' training step uses on TensorFlow (`runtime.own_conv_gradients`):
a 1x1 stride-1 convolution as matrix products, a stride-1 "same" k x k
convolution with both gradients as forward convolutions
(`layers.ws_conv.same_conv_with_conv_gradients`).

    python benchmarks/conv_gradients.py --out benchmarks/results_conv_gradients.json

Each kernel runs inside a `tf.function` on fixed random tensors, warmed up,
then timed `--repeats` times (median); all kernels of a shape are timed in
one process, interleaved over `--rounds`. The record says whether
TensorFlow's kernels were oneDNN's (`onednn`; TensorFlow's default on x86
CPUs with AVX512_VNNI, AVX512_BF16 or AMX) or Eigen's. The shapes are F0's at batch 8 x
192 px: its grouped 3x3 convolutions (one group, 128 channels, as the CPU
split runs them) at each stage's resolution, and its 1x1 convolutions.
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# (what, batch, spatial, in channels, out channels, kernel)
SHAPES = [
    ("3x3 group, stage 1", 8, 48, 128, 128, 3),
    ("3x3 group, stage 2", 8, 24, 128, 128, 3),
    ("3x3 group, stage 3", 8, 12, 128, 128, 3),
    ("3x3 group, stage 4", 8, 6, 128, 128, 3),
    ("1x1 conv0, stage 1", 8, 48, 256, 128, 1),
    ("1x1 conv2, stage 1", 8, 48, 128, 256, 1),
    ("1x1 conv0, stage 3", 8, 12, 1536, 768, 1),
    ("1x1 conv2, stage 3", 8, 12, 768, 1536, 1),
]


def kernels(tf, n, h, cin, cout, k):
    """`{name: (fn, args)}` for one layer shape."""
    # pylint: disable-next=import-outside-toplevel
    from keras_nfnets.layers import ws_conv
    x = tf.random.normal((n, h, h, cin))
    w = tf.random.normal((k, k, cin, cout))
    dy = tf.random.normal((n, h, h, cout))
    strides = [1, 1, 1, 1]
    out = {
        "forward convolution": (lambda x, w: tf.nn.conv2d(
            x, w, 1, "SAME"), (x, w)),
        "TF input gradient": (lambda dy, w: tf.raw_ops.Conv2DBackpropInput(
            input_sizes=[n, h, h, cin], filter=w, out_backprop=dy,
            strides=strides, padding="SAME"), (dy, w)),
        "TF weight gradient": (lambda x, dy: tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=[k, k, cin, cout], out_backprop=dy,
            strides=strides, padding="SAME"), (x, dy)),
    }
    if k == 1:
        rows = tf.reshape(x, (-1, cin))
        drows = tf.reshape(dy, (-1, cout))
        w2 = tf.reshape(w, (cin, cout))
        out["own forward (MatMul)"] = (tf.matmul, (rows, w2))
        out["own input gradient (MatMul)"] = (
            lambda d, w: tf.matmul(d, w, transpose_b=True), (drows, w2))
        out["own weight gradient (MatMul)"] = (
            lambda r, d: tf.matmul(r, d, transpose_a=True), (rows, drows))
    else:
        def grads(x, w, dy):
            with tf.GradientTape() as tape:
                tape.watch([x, w])
                y = ws_conv.same_conv_with_conv_gradients(x, w)
            return tape.gradient(y, [x, w], output_gradients=dy)
        out["own input + weight gradients (convolutions)"] = (
            lambda x, w, dy: grads(x, w, dy), (x, w, dy))
        out["TF input + weight gradients"] = (
            lambda x, w, dy: [out["TF input gradient"][0](dy, w),
                              out["TF weight gradient"][0](x, dy)],
            (x, w, dy))
    return out


def time_one(tf, fn, args, repeats):
    f = tf.function(fn)
    for _ in range(2):
        r = f(*args)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        r = f(*args)
        for t_ in tf.nest.flatten(r):
            t_.numpy()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--layers", default=None,
                   help="names from SHAPES, separated by \";\" (default: all)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    shapes = SHAPES
    if args.layers:
        wanted = args.layers.split(";")
        unknown = set(wanted) - {s[0] for s in SHAPES}
        if unknown:
            raise SystemExit(f"unknown layers {sorted(unknown)}; known: "
                             f"{[s[0] for s in SHAPES]}")
        shapes = [s for s in SHAPES if s[0] in wanted]
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import peers  # pylint: disable=import-outside-toplevel
    rows = []
    for what, n, h, cin, cout, k in shapes:
        ks = kernels(tf, n, h, cin, cout, k)
        times = {name: [] for name in ks}
        for _ in range(args.rounds):
            for name, (fn, fargs) in ks.items():
                times[name].append(time_one(tf, fn, fargs, args.repeats))
        row = dict(layer=what, batch=n, spatial=h, in_channels=cin,
                   out_channels=cout, kernel=k,
                   ms={name: 1000 * statistics.median(v)
                       for name, v in times.items()})
        rows.append(row)
        print(what, {name: round(v, 2) for name, v in row["ms"].items()},
              flush=True)
    from keras_nfnets import compat  # pylint: disable=import-outside-toplevel
    result = dict(tensorflow=tf.__version__, cpu=peers.cpu_info(),
                  onednn=compat.tensorflow_uses_onednn(),
                  rounds=args.rounds, repeats=args.repeats, rows=rows)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
