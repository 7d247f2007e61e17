"""Lists the tensors live at the peak of one NFNet-F0 training step.

    python benchmarks/live_tensors.py [--batch 8] [--size 192] [--top 30]

Runs two warm-up steps, records a third with `tf.profiler` (host tracer
level 3 records every allocation and free of TensorFlow's CPU allocator,
with the op that made it), replays the allocations in time order, and
prints the live bytes at the peak grouped by op name, largest first. This
is how the scheduling problems in docs/performance.md (session 2) were
found. Uses the default (oneDNN) allocator.
"""

import argparse
import collections
import glob
import os
import re
import tempfile


def live_at_peak(xplane_path):
    """(peak bytes, {op: [bytes, count]}) over the allocator events."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as f:
        space.ParseFromString(f.read())
    events = []
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        stat_names = {k: v.name for k, v in plane.stat_metadata.items()}
        for line in plane.lines:
            for ev in line.events:
                kind = names.get(ev.metadata_id)
                if kind not in ("MemoryAllocation", "MemoryDeallocation"):
                    continue
                stats = {}
                for st in ev.stats:
                    value = (stat_names.get(st.ref_value) if st.ref_value
                             else st.str_value or st.int64_value
                             or st.uint64_value)
                    stats[stat_names.get(st.metadata_id)] = value
                events.append((line.timestamp_ns * 1000 + ev.offset_ps,
                               kind, stats))
    events.sort(key=lambda e: e[0])
    live, current, peak, at_peak = {}, 0, 0, {}
    for _, kind, st in events:
        addr = st.get("addr")
        if kind == "MemoryAllocation":
            size = st.get("requested_bytes", 0)
            live[addr] = (size, str(st.get("tf_op") or ""))
            current += size
            if current > peak:
                peak, at_peak = current, dict(live)
        elif addr in live:
            current -= live.pop(addr)[0]
    groups = collections.defaultdict(lambda: [0, 0])
    for size, op in at_peak.values():
        key = re.sub(r"_\d+(?=/|$)", "", op) or "(unnamed)"
        groups[key][0] += size
        groups[key][1] += 1
    return peak, groups


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--top", type=int, default=30)
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import keras
    import tensorflow as tf
    import keras_nfnets
    model = keras_nfnets.NFNet("F0", weights=None,
                               input_shape=(args.size, args.size, 3),
                               classifier_activation=None)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch, args.size, args.size, 3))
    x = x.astype("float32")
    y = rng.integers(0, 1000, (args.batch,))
    model.train_on_batch(x, y)
    model.train_on_batch(x, y)
    logdir = tempfile.mkdtemp(prefix="live_tensors_")
    tf.profiler.experimental.start(
        logdir, options=tf.profiler.experimental.ProfilerOptions(
            host_tracer_level=3))
    model.train_on_batch(x, y)
    tf.profiler.experimental.stop()
    path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"),
                     recursive=True)[0]
    peak, groups = live_at_peak(path)
    print(f"transient tensors at the step's peak: {peak / 1e6:.1f} MB "
          "(weights and optimizer state not included)")
    for op, (size, count) in sorted(groups.items(),
                                    key=lambda kv: -kv[1][0])[:args.top]:
        print(f"{size / 1e6:8.1f} MB {count:4d}  {op}")


if __name__ == "__main__":
    main()
