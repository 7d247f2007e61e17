"""Study 1 (issue 9): NF-ResNet vs BN-ResNet across batch sizes.

The small NF-ResNet of `experiments.common` (AGC lambda=0.01, the package
default, classifier kernel unclipped; and, as a second NF arm, with AGC
off) and a BN-ResNet of the same depth and width, trained with `model.fit`
on the same 20,000 CIFAR-10 images for the same number of epochs (3) at batch 8, 64, 256 and 1024, lr = 0.1 * batch / 256
(DeepMind's scaling), no dropout / stochastic depth in either. Held-out
accuracy on 2,000 test images -> docs/study/study_bn_vs_nf.{csv,png}.

    python -m experiments.study_bn_vs_nf
    python -m experiments.study_bn_vs_nf --plot-only
"""

import argparse

from experiments import common

NAME = "study_bn_vs_nf"


def plot(rows, out_dir=common.OUT_DIR):
    plt = common.plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for arch, clip, color, label in (
            ("nf_resnet", 0.01, "tab:blue", "NF-ResNet, AGC 0.01"),
            ("nf_resnet", "off", "tab:green", "NF-ResNet, no clipping"),
            ("bn_resnet", "off", "tab:orange", "BN-ResNet")):
        rs = sorted((r for r in rows if r["arch"] == arch
                     and str(r["clipping"]) == str(clip)),
                    key=lambda r: r["batch_size"])
        ax.plot([r["batch_size"] for r in rs], [r["test_acc"] for r in rs],
                "o-", color=color, label=label)
        for r in rs:
            ax.annotate(f"{r['test_acc']:.3f}", (r["batch_size"], r["test_acc"]),
                        textcoords="offset points", xytext=(0, 6),
                        fontsize=7, color=color, ha="center")
    ax.set_xscale("log", base=2)
    ax.axhline(0.1, color="gray", ls="--", lw=0.8)
    r0 = rows[0]
    ax.set_xlabel("batch size (lr = 0.1 x batch/256)")
    ax.set_ylabel("held-out accuracy (2,000 images)")
    ax.set_title(f"CIFAR-10, {r0['n_train']} train images x {r0['epochs']} "
                 "epochs, seed 0", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / f"{NAME}.png", dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+",
                   default=[8, 64, 256, 1024])
    p.add_argument("--n-train", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--base-lr", type=float, default=0.1)
    p.add_argument("--plot-only", action="store_true")
    args = p.parse_args(argv)
    if args.plot_only:
        return plot(common.read_csv(common.OUT_DIR / f"{NAME}.csv"))
    jobs = [dict(arch=arch, batch_size=b, base_lr=args.base_lr,
                 epochs=args.epochs, n_train=args.n_train, clipping=clip)
            for b in args.batch_sizes
            for arch, clip in (("nf_resnet", "default"), ("nf_resnet", None),
                               ("bn_resnet", None))]
    rows = common.run_all(NAME, jobs, common.cached_data())
    plot(rows)
    return rows


if __name__ == "__main__":
    main()
