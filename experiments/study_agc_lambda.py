"""Study 3 (issue 9): the AGC clipping threshold lambda at a small and a
large batch size.

The small NF-ResNet of `experiments.common`, `model.fit` on 20,000 CIFAR-10
images for 2 epochs, lr = 0.4 * batch / 256 (a learning rate at which
clipping should matter), at batch 64 and 1024, with
lambda in {0.005, 0.01, 0.02, 0.04, 0.08, 0.16} and with no clipping
(reference). Held-out accuracy on 2,000 test images ->
docs/study/study_agc_lambda.{csv,png}.

    python -m experiments.study_agc_lambda
    python -m experiments.study_agc_lambda --plot-only
"""

import argparse

from experiments import common

NAME = "study_agc_lambda"
LAMBDAS = [0.005, 0.01, 0.02, 0.04, 0.08, 0.16]


def plot(rows, out_dir=common.OUT_DIR):
    plt = common.plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = ["tab:blue", "tab:red", "tab:green"]
    for color, b in zip(colors, sorted({r["batch_size"] for r in rows})):
        rs = [r for r in rows if r["batch_size"] == b]
        clipped = sorted((r for r in rs if r["clipping"] != "off"),
                         key=lambda r: float(r["clipping"]))
        xs = [float(r["clipping"]) for r in clipped]
        ys = [r["test_acc"] for r in clipped]
        ax.plot(xs, ys, "o-", color=color,
                label=f"batch {b}, lr {clipped[0]['lr']:g}")
        for r in clipped:
            if r["diverged"]:
                ax.annotate("diverged", (float(r["clipping"]), r["test_acc"]),
                            fontsize=7, color=color)
        off = [r for r in rs if r["clipping"] == "off"]
        if off:
            o = off[0]
            ax.axhline(o["test_acc"], color=color, ls=":", lw=1,
                       label=f"batch {b}, no clipping: {o['test_acc']:.3f}"
                       + (" (diverged)" if o["diverged"] else ""))
    ax.set_xscale("log")
    ax.set_xlabel("AGC threshold $\\lambda$")
    ax.set_ylabel("held-out accuracy (2,000 images)")
    r0 = rows[0]
    ax.set_title(f"NF-ResNet, CIFAR-10 {r0['n_train']} images x "
                 f"{r0['epochs']} epochs, lr = {r0['base_lr']:g} x batch/256",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / f"{NAME}.png", dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 1024])
    p.add_argument("--n-train", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--base-lr", type=float, default=0.4)
    p.add_argument("--plot-only", action="store_true")
    args = p.parse_args(argv)
    if args.plot_only:
        return plot(common.read_csv(common.OUT_DIR / f"{NAME}.csv"))
    jobs = [dict(arch="nf_resnet", batch_size=b, base_lr=args.base_lr,
                 epochs=args.epochs, n_train=args.n_train, clipping=lam)
            for b in args.batch_sizes for lam in [None] + LAMBDAS]
    rows = common.run_all(NAME, jobs, common.cached_data())
    plot(rows)
    return rows


if __name__ == "__main__":
    main()
