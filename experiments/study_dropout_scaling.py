"""Study 7 (issue 20): does the best dropout rate grow with model size?

The F-series raises the dropout rate before the classifier with depth
(F0 0.2, F1 0.3, F2-F3 0.4, F4-F7 0.5; stochastic depth 0.1 throughout, as
`keras_nfnets.NFNET_VARIANTS` sets it), because without batch norm larger
models need more explicit regularisation. This study scales the small
NFNet of `experiments.common` (the demo's layout,
`training/demo_data/nfnet_demo.json`, depths (1, 1, 2, 1)) the way the
F-series does, depth multiplier N = 1, 2 (, 3): depths (1, 1, 2, 1) x N,
same widths, and trains each size with dropout {0, 0.2, 0.4} and stochastic
depth 0.1 in an overfitting regime (1,000 CIFAR-10 images, 13 epochs),
`model.fit` with `NFNetSGD`, `WarmupCosineDecay` and the package's AGC for
NFNets, lambda 0.01, with the classifier kernel and the zero-initialised
skip gains unclipped (clipped, the skip gains stay ~0 in runs this short
and switch every residual branch off, see study_skip_gain;
`--clip-skip-gains` clips them as the package's default does). Held-out accuracy
on 2,000 test images, train accuracy (inference mode on the 1,000 training
images) and wall time per run -> docs/study/study_dropout_scaling.csv
(rewritten after every run; a rerun skips the runs already there),
docs/study/study_dropout_scaling.png.

    python -m experiments.study_dropout_scaling              # wall time: REPORT.md
    python -m experiments.study_dropout_scaling --sizes 1 2 3
    python -m experiments.study_dropout_scaling --plot-only  # PNG + summary
"""

import math

from experiments import common

NAME = "study_dropout_scaling"
BASE_DEPTH = (1, 1, 2, 1)
RATES = (0.0, 0.2, 0.4)
STOCHDEPTH = 0.1   # the F-series' (NFNetConfig.stochdepth_rate)


def depth_for(n):
    return tuple(n * d for d in BASE_DEPTH)


# ------------------------------------------------------------ summary

def _cells(rows):
    out = {}
    for r in rows:
        out.setdefault((r["size_n"], r["drop_rate"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in out.items()}


def _se(a, b, n_test):
    """Two-standard-error scale for a difference of two cells' means: the
    larger of the binomial and the seed standard error."""
    binom = math.sqrt(common.binomial_se(a["mean"], n_test) ** 2
                      + common.binomial_se(b["mean"], n_test) ** 2)
    seed = math.sqrt(a["sd"] ** 2 / a["n"] + b["sd"] ** 2 / b["n"])
    return max(binom, seed)


def best_rates(rows):
    """{N: (best rate, its held-out stats)} by mean held-out accuracy."""
    cells = _cells(rows)
    out = {}
    for n in sorted({k[0] for k in cells}):
        stats = {rate: common.arm_stats(rs) for (m, rate), rs in cells.items()
                 if m == n}
        best = max(stats, key=lambda rate: stats[rate]["mean"])
        out[n] = (best, stats)
    return out


def verdict(rows):
    """Confirmed: the best rate of the largest size is above the smallest
    size's best rate, and at the largest size it beats that smaller rate by
    more than two standard errors; mixed: it is above but within noise;
    not confirmed: it is not above (equal or smaller)."""
    n_test = rows[0]["n_test"]
    best = best_rates(rows)
    sizes = sorted(best)
    if len(sizes) < 2:
        return "n/a", {}
    small, large = sizes[0], sizes[-1]
    r_small, _ = best[small]
    r_large, stats = best[large]
    lead = stats[r_large]["mean"] - stats[r_small]["mean"]
    se = _se(stats[r_large], stats[r_small], n_test)
    info = {"best": {n: best[n][0] for n in sizes}, "small": small,
            "large": large, "lead": lead, "se": se}
    if r_large > r_small:
        word = "confirmed" if lead > 2 * se else "mixed"
    else:
        word = "not confirmed"
    return word, info


def summary_lines(rows):
    """The markdown table and verdict REPORT.md copies (printed by
    `--plot-only`)."""
    n_test = rows[0]["n_test"]
    cells = _cells(rows)
    best = best_rates(rows)
    lines = ["| N (depths) | params | dropout | held-out acc per seed (mean) "
             "| train acc per seed (mean) | gap | vs dropout 0 ± 1 s.e. "
             "(binomial; seeds) | mean \\|skip gain\\| |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (n, rate), rs in sorted(cells.items()):
        te, tr = common.arm_stats(rs), common.arm_stats(rs, "train_acc")
        zero = cells.get((n, 0.0))
        if zero and rate != 0.0:
            d = common.difference(rs, zero, n_test)
            vs = (f"{d['diff']:+.4f} ± {d['binomial_se']:.4f}; "
                  f"{d['seed_se']:.4f}")
        else:
            vs = "—"
        mark = " **best**" if best[n][0] == rate else ""
        lines.append(
            f"| {n} {rs[0]['depth']} | {rs[0]['params']:,} | {rate:g}{mark} | "
            + " / ".join(f"{r['test_acc']:.4f}" for r in rs)
            + f" ({te['mean']:.4f}) | "
            + " / ".join(f"{r['train_acc']:.4f}" for r in rs)
            + f" ({tr['mean']:.4f}) | {tr['mean'] - te['mean']:.4f} | {vs} | "
            f"{common.arm_stats(rs, 'mean_abs_skip_gain')['mean']:.3g} |")
    word, info = verdict(rows)
    if info:
        lines.append(
            "* best rate per size: "
            + ", ".join(f"N={n}: {r:g}" for n, r in info["best"].items())
            + f"; at N={info['large']} its lead over N={info['small']}'s best "
            f"rate {info['lead']:+.4f} (2 s.e. = {2 * info['se']:.4f})")
    lines.append(f"* verdict (best rate grows with size): {word}")
    lines.append(common.wall_time_line(rows))
    return lines


# --------------------------------------------------------------- plot

def plot(rows, out_dir=common.OUT_DIR):
    plt = common.plt()
    cells = _cells(rows)
    sizes = sorted({k[0] for k in cells})
    n_test = rows[0]["n_test"]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    best = best_rates(rows)
    for c, n in zip(colors, sizes):
        rates = sorted(rate for m, rate in cells if m == n)
        te = [common.arm_stats(cells[(n, r)]) for r in rates]
        tr = [common.arm_stats(cells[(n, r)], "train_acc") for r in rates]
        label = f"N={n} {cells[(n, rates[0])][0]['depth']}, " \
                f"{cells[(n, rates[0])][0]['params'] / 1e3:.0f}k params"
        ax0.errorbar(rates, [s["mean"] for s in te],
                     yerr=[common.binomial_se(s["mean"], n_test) for s in te],
                     color=c, marker="o", capsize=3, label=label)
        for r in rates:
            ax0.plot([r] * len(cells[(n, r)]),
                     [x["test_acc"] for x in cells[(n, r)]], ".", color=c,
                     ms=4, alpha=0.6)
        b = best[n][0]
        ax0.plot([b], [best[n][1][b]["mean"]], "*", color=c, ms=13)
        ax1.plot(rates, [a["mean"] - b_["mean"] for a, b_ in zip(tr, te)],
                 color=c, marker="o", label=f"N={n}: train - held-out")
        ax1.plot(rates, [s["mean"] for s in tr], color=c, ls="--", lw=0.8,
                 label=f"N={n}: train acc")
    ax0.set_xlabel("dropout rate before the classifier")
    ax0.set_ylabel("held-out accuracy (mean; dots: seeds;\n"
                   "error bar: binomial s.e.; star: best rate)")
    ax1.set_xlabel("dropout rate before the classifier")
    ax1.set_ylabel("accuracy")
    ax0.legend(fontsize=7)
    ax1.legend(fontsize=7)
    r0 = rows[0]
    word, _ = verdict(rows)
    fig.suptitle(f"Dropout vs model size (small NFNet, depths x N, stoch. "
                 f"depth {r0['stochdepth_rate']:g}): {r0['n_train']} CIFAR-10 "
                 f"images x {r0['epochs']} epochs,\nbatch {r0['batch_size']}, "
                 f"lr {r0['lr']:g}, AGC {r0['clipping']} "
                 f"(skip gains {'' if r0['skip_gains_clipped'] else 'un'}"
                 f"clipped); best rate grows: {word}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / f"{NAME}.png", dpi=110)


# --------------------------------------------------------------- main

def main(argv=None):
    p = common.study_parser(__doc__, seeds=(0, 1), n_train=1000, epochs=13,
                            batch_size=64, base_lr=0.4)
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 2],
                   help="depth multipliers N")
    p.add_argument("--rates", type=float, nargs="+", default=list(RATES))
    p.add_argument("--stochdepth", type=float, default=STOCHDEPTH)
    args = p.parse_args(argv)
    if not args.plot_only:
        jobs = [dict(arch="nfnet", seed=seed, probe=common.nfnet_probe,
                     model_kwargs=dict(drop_rate=rate,
                                       stochdepth_rate=args.stochdepth,
                                       depth=depth_for(n)),
                     extra={"size_n": n, **common.train_extra(args)},
                     **common.train_settings(args))
                for seed in args.seeds for n in args.sizes
                for rate in args.rates]
        common.run_all(NAME, jobs,
                       common.cached_data(args.n_test, args.per_class),
                       out_dir=args.out_dir,
                       resume_key=("size_n", "drop_rate", "stochdepth_rate",
                                   "seed"),
                       max_minutes=args.max_minutes)
    rows = common.read_csv(args.out_dir / f"{NAME}.csv")
    plot(rows, args.out_dir)
    print("\n".join(summary_lines(rows)))
    return rows


if __name__ == "__main__":
    main()
