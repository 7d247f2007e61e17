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

SIDES = ("keras_nfnets", "timm")
CLIP = 0.01


def alternate(steps, on, off, warmup):
    """Times `on()` and `off()` alternately: `warmup` calls of each, then
    `steps` pairs, the order flipped every pair. Returns the two lists of
    seconds."""
    for _ in range(warmup):
        on()
        off()
    times = {"on": [], "off": []}
    calls = (("on", on), ("off", off))
    for i in range(steps):
        for name, fn in (calls if i % 2 == 0 else calls[::-1]):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times["on"], times["off"]


def overhead(on, off):
    """The median over pairs of on / off, minus one."""
    return statistics.median(a / b for a, b in zip(on, off)) - 1


def keras_steps(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import keras
    import keras_nfnets
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype(
        "float32")
    y = rng.integers(0, 1000, (args.batch,))
    steps = {}
    for name, clip in (("on", CLIP), ("off", None)):
        keras.utils.set_random_seed(0)
        model = keras_nfnets.NFNet(args.variant, weights=None,
                                   input_shape=(args.size, args.size, 3),
                                   classifier_activation=None)
        model.compile(**benchmark.sgd_training(), agc_clipping=clip)
        steps[name] = (lambda m: lambda: m.train_on_batch(x, y))(model)
    import tensorflow as tf
    return steps, f"tensorflow {tf.__version__}, keras {keras.__version__}"


def timm_steps(args):
    import numpy as np
    import torch
    import timm
    x = torch.from_numpy(peers.images(args.batch, args.size))
    y = torch.from_numpy(np.random.default_rng(0).integers(
        0, 1000, (args.batch,)))
    steps = {}
    for name, clip in (("on", CLIP), ("off", 0.0)):
        torch.manual_seed(0)
        model = timm.create_model(args.timm_model, pretrained=False).train()
        steps[name] = peers.timm_train_step(model, model, x, y, clip)
    return steps, f"torch {torch.__version__}, timm {timm.__version__}"


def run_side(args):
    """One side's measurement in this process; a RESULT line."""
    steps, framework = (keras_steps if args.side == "keras_nfnets"
                        else timm_steps)(args)
    on, off = alternate(args.steps, steps["on"], steps["off"], args.warmup)
    result = dict(side=args.side, framework=framework, batch=args.batch,
                  size=args.size, clip_factor=CLIP, warmup=args.warmup,
                  steps=args.steps, on_s=[round(t, 4) for t in on],
                  off_s=[round(t, 4) for t in off],
                  on_median_s=statistics.median(on),
                  off_median_s=statistics.median(off),
                  overhead=overhead(on, off), cpu=peers.cpu_info(),
                  peak_rss_gb=peers.peak_rss_gb())
    print("RESULT " + json.dumps(result), flush=True)


def table(rows):
    """Markdown: each side's step with and without AGC and the overhead."""
    lines = ["| side | step with AGC s (median) | without s (median) | "
             "AGC's per-step overhead (median of pairs) | pairs |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['side']} | {r['on_median_s']:.2f} | "
                     f"{r['off_median_s']:.2f} | "
                     f"{100 * r['overhead']:+.1f} % | {r['steps']} |")
    return "\n".join(lines)


def verdict(rows):
    """Issue 30's line: keras_nfnets' overhead at most timm's."""
    by = {r["side"]: r for r in rows}
    if set(by) != set(SIDES):
        return None
    ours, theirs = by["keras_nfnets"]["overhead"], by["timm"]["overhead"]
    return (f"AGC's per-step overhead: keras_nfnets {100 * ours:+.1f} %, "
            f"timm {100 * theirs:+.1f} %; target (keras_nfnets' at most "
            f"timm's): {'met' if ours <= theirs else 'not met'}.")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", choices=SIDES, default=None,
                   help="measure one side in this process (the run spawns "
                        "one process per side)")
    p.add_argument("--variant", default="F0")
    p.add_argument("--timm_model", default=peers.TIMM_MODEL)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.batch < 1:
        p.error("--steps, --warmup and --batch must be >= 1")
    if args.side:
        return run_side(args)
    rows = []
    for side in SIDES:
        cmd = [sys.executable, os.path.abspath(__file__), "--side", side,
               "--variant", args.variant, "--timm_model", args.timm_model,
               "--batch", str(args.batch), "--size", str(args.size),
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
        out = subprocess.run(cmd, capture_output=True, text=True,
                             env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        line = next((l for l in out.stdout.splitlines()
                     if l.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{side} failed (exit {out.returncode}):\n"
                             f"{out.stderr[-3000:]}")
        rows.append(json.loads(line[len("RESULT "):]))
        print(f"{side}: with AGC {rows[-1]['on_median_s']:.2f} s, without "
              f"{rows[-1]['off_median_s']:.2f} s, overhead "
              f"{100 * rows[-1]['overhead']:+.1f} %", flush=True)
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
