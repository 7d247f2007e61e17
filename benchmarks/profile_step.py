"""Where NFNet's training step spends its time: one `tf.profiler` trace of
a warmed-up `train_on_batch` step, summed by TensorFlow op type.

    python benchmarks/profile_step.py --variant F0 --batch 8 --size 192

Prints the op types by total time (summed over threads, so the total can
exceed the wall time on several cores) and the step's wall time.
"""

import argparse
import collections
import glob
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def op_times(logdir):
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"),
                     recursive=True)[0]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        meta = plane.event_metadata
        for line in plane.lines:
            if "tf_Compute" not in line.name and "Executor" not in line.name \
                    and "tf_" not in line.name:
                continue
            for ev in line.events:
                name = meta[ev.metadata_id].name
                # "layer/op_name:OpType" -> OpType
                op_type = name.rsplit(":", 1)[-1] if ":" in name else name
                totals[op_type] += ev.duration_ps / 1e12
    return totals


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--variant", default="F0")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--remat", action="store_true")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    import numpy as np
    import keras
    import tensorflow as tf
    import keras_nfnets
    model = keras_nfnets.NFNet(args.variant, weights=None,
                               input_shape=(args.size, args.size, 3),
                               classifier_activation=None, remat=args.remat)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype(
        "float32")
    y = rng.integers(0, 1000, (args.batch,))
    for _ in range(2):
        model.train_on_batch(x, y)
    logdir = tempfile.mkdtemp()
    tf.profiler.experimental.start(logdir)
    t = time.perf_counter()
    model.train_on_batch(x, y)
    wall = time.perf_counter() - t
    tf.profiler.experimental.stop()
    totals = op_times(logdir)
    total = sum(totals.values())
    print(f"step wall {wall:.2f} s; op time summed over threads {total:.2f} s")
    print("| op type | s | share |")
    print("| --- | --- | --- |")
    for name, s in totals.most_common(args.top):
        print(f"| {name} | {s:.3f} | {s / total:.1%} |")


if __name__ == "__main__":
    main()
