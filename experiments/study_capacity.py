"""Study 6 (issue 20): where to add capacity, depth and width per stage.

NFNets keep ResNet's four stages but put their capacity in the third: depth
pattern (1, 2, 6, 3) x N, width pattern (256, 512, 1536, 1536). This study
takes the small NFNet of `experiments.common` (the demo's layout:
`training/demo_data/nfnet_demo.json`, stage widths 32/64/96/128, group
width 16, SE, final conv x2) with one block per stage as the baseline, and
adds a fixed extra budget to one stage at a time:

* depth arms: one extra block in stage 1, 2, 3 or 4;
* width arms: stage 1, 2, 3 or 4 widened (a multiple of 32, so that the
  bottleneck is whole groups of 16) to the width whose parameter count is
  closest to the mean of the four depth arms' (matched parameters; the
  FLOPs of every arm are recorded too, from `keras_nfnets.flops`).

Every arm is trained with `model.fit` (`NFNetSGD`, `WarmupCosineDecay`, the
package's AGC for NFNets, lambda 0.01, with the classifier kernel and the
zero-initialised skip gains unclipped: clipped, the skip gains stay ~0 in
runs this short and switch every residual branch off, see study_skip_gain;
`--clip-skip-gains` clips them as the package's default does)
from the same seeds on the same CIFAR-10 images; held-out accuracy on
2,000 test images, train accuracy (inference mode) and wall time per run
-> docs/study/study_capacity.csv (rewritten after every run; a rerun skips
the arms already there), docs/study/study_capacity.png.

    python -m experiments.study_capacity               # wall time: REPORT.md
    python -m experiments.study_capacity --arms baseline "depth: stage 3"
    python -m experiments.study_capacity --plot-only   # PNG + summary
"""

import math

import numpy as np

from experiments import common

NAME = "study_capacity"
BASE_DEPTH = (1, 1, 1, 1)
BASE_WIDTH = (32, 64, 96, 128)
WIDTH_STEP = 32   # expansion 0.5 x group width 16
MAX_WIDTH = 512
DEPTH_ARMS = [f"depth: stage {i}" for i in range(1, 5)]
WIDTH_ARMS = [f"width: stage {i}" for i in range(1, 5)]
ARMS = ["baseline"] + DEPTH_ARMS + WIDTH_ARMS


def _with(pattern, stage, value):
    out = list(pattern)
    out[stage] = value
    return tuple(out)


def build(depth, width, seed=0):
    return common.nfnet(seed, depth=depth, width=width)


def counts(depth, width):
    """(parameters, FLOPs per 32x32 image) of the arm's model."""
    from keras_nfnets import flops  # pylint: disable=import-outside-toplevel
    model = build(depth, width)
    return model.count_params(), flops.count_flops(model)


def plan(arms=ARMS):
    """{arm: (depth, width)} for the requested arms. The width arms need
    the depth arms' mean parameter count (built, not trained)."""
    out = {"baseline": (BASE_DEPTH, BASE_WIDTH)}
    for i in range(4):
        out[DEPTH_ARMS[i]] = (_with(BASE_DEPTH, i, BASE_DEPTH[i] + 1),
                              BASE_WIDTH)
    if any(a in WIDTH_ARMS for a in arms):
        target = np.mean([counts(*out[a])[0] for a in DEPTH_ARMS])
        for i in range(4):
            best = None
            for w in range(BASE_WIDTH[i] + WIDTH_STEP, MAX_WIDTH + 1,
                           WIDTH_STEP):
                params = counts(BASE_DEPTH, _with(BASE_WIDTH, i, w))[0]
                if best is None or abs(params - target) < abs(best[1] - target):
                    best = (w, params)
                if params > target:
                    break
            out[WIDTH_ARMS[i]] = (BASE_DEPTH, _with(BASE_WIDTH, i, best[0]))
    unknown = [a for a in arms if a not in out]
    if unknown:
        raise SystemExit(f"unknown arms {unknown}; known: {ARMS}")
    return {a: out[a] for a in arms}


# ------------------------------------------------------------ summary

def summarize(rows):
    """Per arm: parameters, MFLOPs, held-out and train accuracy (mean,
    per-seed), difference to the baseline with its binomial and seed
    standard errors; and the verdict on "the third stage is the best place
    to add capacity" (rule in `verdict`)."""
    arms = [a for a in ARMS if any(r["arm"] == a for r in rows)]
    n_test = rows[0]["n_test"]
    base = [r for r in rows if r["arm"] == "baseline"]
    out = []
    for arm in arms:
        rs = sorted((r for r in rows if r["arm"] == arm),
                    key=lambda r: r["seed"])
        te, tr = common.arm_stats(rs), common.arm_stats(rs, "train_acc")
        d = common.difference(rs, base, n_test) if base and arm != "baseline" \
            else None
        out.append({"arm": arm, "depth": rs[0]["depth"],
                    "width": rs[0]["width"], "params": rs[0]["params"],
                    "mflops": rs[0]["flops"] / 1e6, "seeds": len(rs),
                    "test": te, "train": tr,
                    "test_per_seed": [r["test_acc"] for r in rs],
                    "vs_baseline": d,
                    "skip_gain": common.arm_stats(
                        rs, "mean_abs_skip_gain")["mean"],
                    "wall_s": float(np.mean([r["wall_seconds"] for r in rs]))})
    return out


def verdict(summary, n_test):
    """Within each family (depth arms, width arms): the best arm by mean
    held-out accuracy, and whether its lead over the runner-up exceeds two
    standard errors (the larger of the binomial and the seed one).
    Confirmed: stage 3 is best in both families by a resolved lead; not
    confirmed: another stage is best by a resolved lead in a family (or
    stage 3 is best in neither); mixed: otherwise."""
    by_arm = {s["arm"]: s for s in summary}
    per_family = {}
    for family, arms in (("depth", DEPTH_ARMS), ("width", WIDTH_ARMS)):
        present = [by_arm[a] for a in arms if a in by_arm]
        if len(present) < 2:
            continue
        ranked = sorted(present, key=lambda s: -s["test"]["mean"])
        top, second = ranked[0], ranked[1]
        lead = top["test"]["mean"] - second["test"]["mean"]
        se = max(math.sqrt(common.binomial_se(top["test"]["mean"], n_test) ** 2
                           + common.binomial_se(second["test"]["mean"],
                                                n_test) ** 2),
                 math.sqrt(top["test"]["sd"] ** 2 / top["seeds"]
                           + second["test"]["sd"] ** 2 / second["seeds"]))
        per_family[family] = {"best": top["arm"], "runner_up": second["arm"],
                              "lead": lead, "se": se,
                              "resolved": lead > 2 * se}
    if not per_family:
        return "n/a", per_family
    stage3 = [f["best"].endswith("stage 3") for f in per_family.values()]
    resolved = [f["resolved"] for f in per_family.values()]
    if all(stage3) and all(resolved) and len(per_family) == 2:
        word = "confirmed"
    elif not any(stage3) or any(r and not s for s, r in zip(stage3, resolved)):
        word = "not confirmed"
    else:
        word = "mixed"
    return word, per_family


def summary_lines(rows):
    """The markdown table and verdict REPORT.md copies (printed by
    `--plot-only`)."""
    n_test = rows[0]["n_test"]
    summary = summarize(rows)
    lines = ["| arm | depth | width | params | MFLOPs | held-out acc per seed "
             "(mean) | train acc (mean) | vs baseline ± 1 s.e. (binomial; "
             "seeds) | mean \\|skip gain\\| |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in summary:
        d = s["vs_baseline"]
        vs = "—" if d is None else (f"{d['diff']:+.4f} ± {d['binomial_se']:.4f}"
                                    f"; {d['seed_se']:.4f}")
        lines.append(
            f"| {s['arm']} | {s['depth']} | {s['width']} | {s['params']:,} "
            f"| {s['mflops']:.2f} | "
            + " / ".join(f"{v:.4f}" for v in s["test_per_seed"])
            + f" ({s['test']['mean']:.4f}) | {s['train']['mean']:.4f} | {vs} "
            f"| {s['skip_gain']:.3g} |")
    word, fams = verdict(summary, n_test)
    for family, f in fams.items():
        lines.append(f"* {family} arms: best {f['best']!r}, lead over "
                     f"{f['runner_up']!r} {f['lead']:+.4f} (2 s.e. = "
                     f"{2 * f['se']:.4f}: "
                     f"{'resolved' if f['resolved'] else 'within noise'})")
    lines.append(f"* verdict (third stage best): {word}")
    lines.append(common.wall_time_line(rows))
    return lines


# --------------------------------------------------------------- plot

def plot(rows, out_dir=common.OUT_DIR):
    plt = common.plt()
    summary = summarize(rows)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 4.4),
                                   gridspec_kw={"width_ratios": [1.6, 1]})
    colors = {"baseline": "tab:gray", "depth": "tab:blue", "width": "tab:orange"}
    n_test = rows[0]["n_test"]
    for i, s in enumerate(summary):
        color = colors[s["arm"].split(":")[0]]
        m = s["test"]["mean"]
        ax0.bar(i, m, 0.6, color=color, alpha=0.8,
                yerr=common.binomial_se(m, n_test), capsize=3)
        ax0.plot([i] * s["seeds"], s["test_per_seed"], "k.", ms=4)
        ax0.annotate(f"{m:.3f}\n{s['params'] / 1e3:.0f}k p\n"
                     f"{s['mflops']:.1f} MF", (i, s["test"]["max"]),
                     textcoords="offset points", xytext=(0, 4), fontsize=6.5,
                     ha="center")
        ax1.scatter(s["params"] / 1e3, m, color=color, s=25)
        ax1.annotate(s["arm"].replace("stage ", "s"), (s["params"] / 1e3, m),
                     textcoords="offset points", xytext=(4, 2), fontsize=7)
    base = [s for s in summary if s["arm"] == "baseline"]
    if base:
        ax0.axhline(base[0]["test"]["mean"], color="tab:gray", ls=":", lw=0.8)
    lo = min(s["test"]["min"] for s in summary)
    hi = max(s["test"]["max"] for s in summary)
    ax0.set_ylim(max(0.0, lo - 0.05), hi + 0.06)
    ax0.set_xticks(range(len(summary)),
                   [s["arm"].replace(": ", ":\n") for s in summary], fontsize=7)
    ax0.set_ylabel("held-out accuracy (bar: mean, dots: seeds,\n"
                   "error bar: binomial s.e. of one run)")
    ax1.set_xlabel("parameters (thousands)")
    ax1.set_ylabel("mean held-out accuracy")
    ax1.set_title("blue: +1 block in a stage; orange: wider stage "
                  "(matched params)", fontsize=8)
    r0 = rows[0]
    word, _ = verdict(summary, n_test)
    fig.suptitle(f"Where to add capacity (small NFNet): {r0['n_train']} "
                 f"CIFAR-10 images x {r0['epochs']} epochs,\nbatch "
                 f"{r0['batch_size']}, lr {r0['lr']:g}, AGC {r0['clipping']} "
                 f"(skip gains {'' if r0['skip_gains_clipped'] else 'un'}"
                 f"clipped), {n_test} held-out; third stage best: {word}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / f"{NAME}.png", dpi=110)


# --------------------------------------------------------------- main

def main(argv=None):
    p = common.study_parser(__doc__, seeds=(0, 1, 2), n_train=5000,
                            epochs=2, batch_size=128, base_lr=0.4)
    p.add_argument("--arms", nargs="+", default=ARMS, metavar="ARM",
                   help=f"subset of {ARMS}")
    args = p.parse_args(argv)
    csv_path = args.out_dir / f"{NAME}.csv"
    if not args.plot_only:
        arms = plan(args.arms)
        jobs = [dict(arch="nfnet", seed=seed, probe=common.nfnet_probe,
                     model_kwargs=dict(depth=depth, width=width),
                     extra={"arm": arm, **common.train_extra(args)},
                     **common.train_settings(args))
                for seed in args.seeds for arm, (depth, width) in arms.items()]
        common.run_all(NAME, jobs,
                       common.cached_data(args.n_test, args.per_class),
                       out_dir=args.out_dir, resume_key=("arm", "seed"),
                       max_minutes=args.max_minutes)
    rows = common.read_csv(csv_path)
    plot(rows, args.out_dir)
    print("\n".join(summary_lines(rows)))
    return rows


if __name__ == "__main__":
    main()
