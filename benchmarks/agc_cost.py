"""AGC's per-step cost on each side, measured inside one process per side.

Across processes, this shared machine's speed drifts by more than AGC
costs (the peer run's `--compare_agc` rows differ by round). Here each
side trains two copies of its model in one process, one with adaptive
gradient clipping and one without, and alternates their steps (after
warm-up, `--steps` pairs, the order flipped every pair), so a drift falls
on both alike:

  * keras_nfnets: NFNet-F0 compiled with `agc_clipping=0.01` (the
    package's AGC, the non-finite skip included) and with
    `agc_clipping=None`, `train_on_batch` as in benchmark.py;
  * timm: `dm_nfnet_f0` with `timm.utils.adaptive_clip_grad(...,
    clip_factor=0.01)` before the optimizer step and without, as in
    peers.py.

Both: Nesterov SGD (0.1, momentum 0.9), batch 8 x 192 px. A side's
overhead is the median over pairs of (step with AGC / step without) - 1.

Even within a process, a whole step on this shared machine varies by more
than AGC costs, so each side also times what AGC adds where it adds it,
the optimizer's update: the same fixed gradients (normal, scale 1e-3, one
seed) handed to each model's update with AGC and without (Keras:
`optimizer.apply` in a `tf.function`; timm: `adaptive_clip_grad` then
`SGD.step()`, against `SGD.step()`), `--update_reps` pairs, alternating.
AGC's cost per step is the median over pairs of (update with AGC - update
without), as a share of the side's median step without AGC; the verdict
compares the two sides' shares.

The sides run one after the other, each in a fresh process (torch is
never imported next to TensorFlow).

    python benchmarks/agc_cost.py --out benchmarks/results_agc_cost.json
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark  # noqa: E402  (no TensorFlow or torch at import)
import peers  # noqa: E402
import summary  # noqa: E402

SIDES = ("keras_nfnets", "timm")
CLIP = 0.01
#: The scale of the fixed gradients the update measurement hands over.
GRAD_SCALE = 1e-3


def alternate(steps, on, off, warmup, prepare=None):
    """Times `on()` and `off()` alternately: `warmup` calls of each, then
    `steps` pairs, the order flipped every pair; `prepare()`, if given,
    runs untimed before every call. Returns the two lists of seconds."""
    prepare = prepare or (lambda: None)
    for _ in range(warmup):
        prepare()
        on()
        prepare()
        off()
    times = {"on": [], "off": []}
    calls = (("on", on), ("off", off))
    for i in range(steps):
        for name, fn in (calls if i % 2 == 0 else calls[::-1]):
            prepare()
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times["on"], times["off"]


def overhead(on, off):
    """The median over pairs of on / off, minus one."""
    return statistics.median(a / b for a, b in zip(on, off)) - 1


def quartiles(on, off):
    """The first and third quartiles over pairs of on / off, minus one: how
    far single pairs scatter around `overhead`."""
    q = statistics.quantiles([a / b for a, b in zip(on, off)], n=4)
    return q[0] - 1, q[2] - 1


def added(on, off):
    """The median over pairs of on - off (seconds)."""
    return statistics.median(a - b for a, b in zip(on, off))


def _fixed_gradients(shapes):
    """Normal gradients of `shapes` (scale `GRAD_SCALE`, seed 0), float32
    numpy arrays: the same values whatever the framework."""
    import numpy as np
    rng = np.random.default_rng(0)
    return [np.asarray(rng.standard_normal(tuple(s), dtype="float32")
                       * GRAD_SCALE, dtype="float32")  # () too: an array
            for s in shapes]


def keras_steps(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import keras
    import keras_nfnets
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype(
        "float32")
    y = rng.integers(0, 1000, (args.batch,))
    steps, models = {}, {}
    for name, clip in (("on", CLIP), ("off", None)):
        keras.utils.set_random_seed(0)
        model = keras_nfnets.NFNet(args.variant, weights=None,
                                   input_shape=(args.size, args.size, 3),
                                   classifier_activation=None)
        model.compile(**benchmark.sgd_training(), agc_clipping=clip)
        steps[name] = (lambda m: lambda: m.train_on_batch(x, y))(model)
        models[name] = model
    import tensorflow as tf
    return (steps, (lambda: keras_updates(models)),
            f"tensorflow {tf.__version__}, keras {keras.__version__}")


def keras_updates(models):
    """`{"on": fn, "off": fn}`: each model's `optimizer.apply` of the same
    fixed gradients, traced once (`tf.function`, TensorFlow); no prepare
    step (`apply` does not change the gradients it is given)."""
    import keras
    import tensorflow as tf
    if keras.backend.backend() != "tensorflow":
        raise SystemExit("agc_cost.py: the update measurement runs on the "
                         "TensorFlow backend")
    shapes = [v.shape for v in models["on"].trainable_variables]
    grads = [tf.constant(g) for g in _fixed_gradients(shapes)]

    def update(model):
        optimizer, variables = model.optimizer, model.trainable_variables
        apply = tf.function(lambda g: optimizer.apply(g, variables))
        return lambda: apply(grads)

    return {name: update(model) for name, model in models.items()}, None


def timm_steps(args):
    import numpy as np
    import torch
    import timm
    x = torch.from_numpy(peers.images(args.batch, args.size))
    y = torch.from_numpy(np.random.default_rng(0).integers(
        0, 1000, (args.batch,)))
    steps, models = {}, {}
    for name, clip in (("on", CLIP), ("off", 0.0)):
        torch.manual_seed(0)
        model = timm.create_model(args.timm_model, pretrained=False).train()
        steps[name] = peers.timm_train_step(model, model, x, y, clip)
        models[name] = model
    return (steps, (lambda: timm_updates(models)),
            f"torch {torch.__version__}, timm {timm.__version__}")


def timm_updates(models):
    """`{"on": fn, "off": fn}`: `adaptive_clip_grad` then a Nesterov
    `SGD.step()` (as `peers.timm_train_step`), and the step alone, on each
    model's parameters; and the prepare step that writes the same fixed
    gradients into every `.grad` before each call (the clip rescales them
    in place)."""
    import torch
    from timm.utils import adaptive_clip_grad
    params = {name: [p for p in m.parameters() if p.requires_grad]
              for name, m in models.items()}
    grads = [torch.from_numpy(g) for g in _fixed_gradients(
        [p.shape for p in params["on"]])]
    for ps in params.values():
        for p, g in zip(ps, grads):
            p.grad = g.clone()
    opts = {name: peers.timm_sgd(ps) for name, ps in params.items()}

    def prepare():
        with torch.no_grad():
            for ps in params.values():
                for p, g in zip(ps, grads):
                    p.grad.copy_(g)

    def on():
        adaptive_clip_grad(params["on"], clip_factor=CLIP)
        opts["on"].step()

    return {"on": on, "off": opts["off"].step}, prepare


def run_side(args):
    """One side's measurement in this process; a RESULT line."""
    steps, make_updates, framework = (
        keras_steps if args.side == "keras_nfnets" else timm_steps)(args)
    on, off = alternate(args.steps, steps["on"], steps["off"], args.warmup)
    # After the steps: the fixed gradients move the weights anywhere.
    updates, prepare = make_updates()
    u_on, u_off = alternate(args.update_reps, updates["on"], updates["off"],
                            args.warmup, prepare)
    off_median, update_added = statistics.median(off), added(u_on, u_off)
    result = dict(side=args.side, framework=framework, batch=args.batch,
                  size=args.size, clip_factor=CLIP, warmup=args.warmup,
                  steps=args.steps, on_s=[round(t, 4) for t in on],
                  off_s=[round(t, 4) for t in off],
                  on_median_s=statistics.median(on), off_median_s=off_median,
                  overhead=overhead(on, off),
                  overhead_quartiles=quartiles(on, off) if len(on) > 1
                  else None,
                  update_reps=args.update_reps, grad_scale=GRAD_SCALE,
                  update_on_s=[round(t, 5) for t in u_on],
                  update_off_s=[round(t, 5) for t in u_off],
                  update_on_median_s=statistics.median(u_on),
                  update_off_median_s=statistics.median(u_off),
                  update_added_s=update_added,
                  update_share=update_added / off_median,
                  cpu=peers.cpu_info(), peak_rss_gb=peers.peak_rss_gb())
    print("RESULT " + json.dumps(result), flush=True)


def _spread(r):
    q = r.get("overhead_quartiles")
    return (f" ({100 * q[0]:+.1f} to {100 * q[1]:+.1f})" if q else "")


def table(rows):
    """Markdown: each side's whole step with and without AGC (median of
    pairs, and the pairs' quartiles), its update with and without, and
    AGC's cost in the update as a share of the step."""
    lines = ["| side | step with AGC s | without s | whole step: overhead, "
             "median of pairs (quartiles) | update with AGC ms | without ms "
             "| AGC's cost in the update ms | share of the step without "
             "AGC | pairs (steps / updates) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(
            f"| {r['side']} | {r['on_median_s']:.2f} | "
            f"{r['off_median_s']:.2f} | {100 * r['overhead']:+.1f} %"
            f"{_spread(r)} | {1000 * r['update_on_median_s']:.0f} | "
            f"{1000 * r['update_off_median_s']:.0f} | "
            f"{1000 * r['update_added_s']:+.0f} | "
            f"{100 * r['update_share']:+.1f} % | {r['steps']} / "
            f"{r['update_reps']} |")
    return "\n".join(lines)


def target(rows):
    """Issue 30's line, as a row of `summary.targets`: keras_nfnets' AGC
    costs it at most the share of its step that timm's AGC costs timm (the
    update measurement); `None` without both sides."""
    by = {r["side"]: r for r in rows}
    if set(by) != set(SIDES):
        return None
    ours, theirs = by["keras_nfnets"], by["timm"]
    return dict(
        target=summary.AGC_TARGET,
        measured=(f"{100 * ours['update_share']:+.1f} % of the step, in the "
                  f"update (timm: {100 * theirs['update_share']:+.1f} %); "
                  f"whole steps, median of pairs: "
                  f"{100 * ours['overhead']:+.1f} % (timm: "
                  f"{100 * theirs['overhead']:+.1f} %)"),
        holds=ours["update_share"] <= theirs["update_share"])


def verdict(rows):
    """Issue 30's line in words (see `target`)."""
    line = target(rows)
    if line is None:
        return None
    return (f"AGC's per-step cost: {line['measured']}. Target (keras_nfnets'"
            f" at most timm's, in the update): "
            f"{'met' if line['holds'] else 'not met'}.")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", choices=SIDES, default=None,
                   help="measure one side in this process (the run spawns "
                        "one process per side)")
    p.add_argument("--variant", default="F0")
    p.add_argument("--timm_model", default=peers.TIMM_MODEL)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--update_reps", type=int, default=30,
                   help="pairs of optimizer updates (with and without AGC)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if min(args.steps, args.warmup, args.batch, args.update_reps) < 1:
        p.error("--steps, --warmup, --batch and --update_reps must be >= 1")
    if args.side:
        return run_side(args)
    rows = []
    for side in SIDES:
        cmd = [sys.executable, os.path.abspath(__file__), "--side", side,
               "--variant", args.variant, "--timm_model", args.timm_model,
               "--batch", str(args.batch), "--size", str(args.size),
               "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--update_reps", str(args.update_reps)]
        out = subprocess.run(cmd, capture_output=True, text=True,
                             env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        line = next((l for l in out.stdout.splitlines()
                     if l.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{side} failed (exit {out.returncode}):\n"
                             f"{out.stderr[-3000:]}")
        rows.append(json.loads(line[len("RESULT "):]))
        r = rows[-1]
        print(f"{side}: with AGC {r['on_median_s']:.2f} s, without "
              f"{r['off_median_s']:.2f} s, overhead "
              f"{100 * r['overhead']:+.1f} %; update "
              f"{1000 * r['update_on_median_s']:.0f} vs "
              f"{1000 * r['update_off_median_s']:.0f} ms", flush=True)
    result = dict(command="python benchmarks/agc_cost.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        rows=rows, verdict=verdict(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print(table(rows))
    print(result["verdict"])


if __name__ == "__main__":
    main()
