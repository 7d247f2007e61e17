"""How much of NFNet-F0's traced train step is AGC: graph nodes and
tracing time of the step with AGC, with its non-finite skip alone, and
without either.

Node counts do not depend on the machine's load (the timings do): each
configuration builds the model, traces `model.train_step` with
`tf.function` (the step `fit` runs: forward, autodiff, the optimizer's
update) and counts the nodes of the traced function and of the functions
it calls (the skip's `cond` branches). The train function's graph as
grappler receives it, with the `cond` lowered, is counted by
benchmarks/first_step.py (`nodes_before`); this script needs no first
execution, so it also runs against another version of the package:

    python benchmarks/agc_graph.py --out benchmarks/results_agc_graph.json
    # the package as it was at a commit, into the same file:
    git archive COMMIT keras_nfnets | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old python benchmarks/agc_graph.py --label COMMIT \\
        --out benchmarks/results_agc_graph.json

Configurations (one fresh process each): `agc` (`compile`'s default: AGC
0.01 with the non-finite skip), `skip_only` (`AGC(SGD, clipping=None)`),
`off` (`agc_clipping=None`: plain SGD).
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402  (no TensorFlow at import)

CONFIGS = ("agc", "skip_only", "off")


def graph_nodes(concrete):
    """Nodes of a concrete function's graph and of its function library."""
    graph = concrete.graph.as_graph_def()
    return len(graph.node), sum(len(f.node_def)
                                for f in graph.library.function)


def run_child(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import keras
    import keras_nfnets
    from keras_nfnets.optim import agc
    size = args.size
    model = keras_nfnets.NFNet(args.variant, weights=None,
                               input_shape=(size, size, 3),
                               classifier_activation=None)
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)
    kwargs = {}
    if args.child == "skip_only":
        optimizer = agc.AGC(optimizer, clipping=None)
    if args.child != "agc":
        kwargs["agc_clipping"] = None
    model.compile(optimizer=optimizer, loss=keras.losses.
                  SparseCategoricalCrossentropy(from_logits=True), **kwargs)
    model.optimizer.build(model.trainable_variables)
    times = {}
    apply_gradients = model.optimizer.apply_gradients

    def timed(*a, **k):
        t = time.perf_counter()
        out = apply_gradients(*a, **k)
        times["trace_update_s"] = round(time.perf_counter() - t, 3)
        return out

    model.optimizer.apply_gradients = timed
    step = tf.function(lambda x, y: model.train_step((x, y)))
    t = time.perf_counter()
    concrete = step.get_concrete_function(
        tf.TensorSpec((args.batch, size, size, 3), "float32"),
        tf.TensorSpec((args.batch,), "int64"))
    times["trace_s"] = round(time.perf_counter() - t, 3)
    outer, library = graph_nodes(concrete)
    opt = model.optimizer
    clipped = (sum(opt.clip_mask) if getattr(opt, "clipping", None)
               else 0)
    print("RESULT " + json.dumps(dict(
        config=args.child, variant=args.variant, size=size,
        batch=args.batch, variables=len(model.trainable_variables),
        clipped_variables=clipped, nodes=outer, library_nodes=library,
        total_nodes=outer + library, package=os.path.dirname(
            keras_nfnets.__file__),
        keras=keras.__version__, tensorflow=tf.__version__,
        cpu=peers.cpu_info(), **times)), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="F0")
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--label", default="this commit",
                   help="what version of the package the rows are of")
    p.add_argument("--out", default=None,
                   help="JSON file; rows of another --label are kept")
    p.add_argument("--child", choices=CONFIGS, default=None)
    args = p.parse_args(argv)
    if args.child:
        run_child(args)
        return
    rows = []
    if args.out and os.path.exists(args.out):
        with open(args.out) as f:
            rows = [r for r in json.load(f)["runs"]
                    if r["label"] != args.label]
    for name in args.configs.split(","):
        if name not in CONFIGS:
            raise SystemExit(f"unknown configuration {name!r}; known: "
                             + ", ".join(CONFIGS))
        cmd = [sys.executable, os.path.abspath(__file__), "--child", name,
               "--variant", args.variant, "--size", str(args.size),
               "--batch", str(args.batch)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [l for l in out.stdout.splitlines()
                 if l.startswith("RESULT ")]
        if out.returncode or not lines:
            raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
        row = dict(json.loads(lines[-1][len("RESULT "):]), label=args.label)
        rows.append(row)
        print(f"{args.label}: {name:9s} {row['total_nodes']} nodes "
              f"({row['nodes']} + {row['library_nodes']} in called "
              f"functions), trace {row['trace_s']:.1f} s, of it the "
              f"update {row.get('trace_update_s', 0):.1f} s", flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(dict(variant=args.variant, size=args.size,
                               batch=args.batch, runs=rows), f, indent=1)


if __name__ == "__main__":
    main()
