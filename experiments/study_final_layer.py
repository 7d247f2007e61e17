"""Study 4 (issue 9): clipping the final (classifier) layer or not.

The small NF-ResNet of `experiments.common`, AGC lambda = 0.01, compiled with
the default `agc_exclude` (classifier kernel `linear/kernel` not clipped, as
DeepMind) versus `agc_exclude=()` (every variable clipped), `model.fit` on
20,000 CIFAR-10 images for 2 epochs at batch 256, lr = 0.4 (base_lr 0.4),
seeds 0, 1 and 2; and the same comparison on the small NFNet of
agc_stability (`--arch nfnet`, seeds 0 and 1). Held-out accuracy ->
docs/study/study_final_layer_<arch>.csv, docs/study/study_final_layer.png.

    python -m experiments.study_final_layer
    python -m experiments.study_final_layer --arch nfnet --seeds 0 1
    python -m experiments.study_final_layer --plot-only
"""

import argparse

import numpy as np

from experiments import common

NAME = "study_final_layer"


def plot(out_dir=common.OUT_DIR):
    plt = common.plt()
    archs = [a for a in ("nf_resnet", "nfnet")
             if (out_dir / f"{NAME}_{a}.csv").exists()]
    fig, axes = plt.subplots(1, len(archs), figsize=(5.5 * len(archs), 4),
                             squeeze=False)
    for ax, arch in zip(axes[0], archs):
        _panel(ax, common.read_csv(out_dir / f"{NAME}_{arch}.csv"), arch)
    fig.tight_layout()
    fig.savefig(out_dir / f"{NAME}.png", dpi=110)


def _panel(ax, rows, arch):
    labels = ["final layer unclipped\n(default)", "final layer clipped\n(agc_exclude=())"]
    for i, mode in enumerate(("unclipped", "clipped")):
        rs = [r for r in rows if r["final_layer"] == mode]
        accs = [r["test_acc"] for r in rs]
        ax.bar(i, np.mean(accs), color="lightgray", edgecolor="k", width=0.6)
        for r in rs:
            ax.plot(i, r["test_acc"], "o", color="tab:blue")
            ax.annotate(f"seed {r['seed']}: {r['test_acc']:.3f}",
                        (i, r["test_acc"]), textcoords="offset points",
                        xytext=(8, 0), fontsize=7)
    ax.set_xticks([0, 1], labels, fontsize=8)
    ax.set_ylabel("held-out accuracy (bar: mean over seeds)")
    r0 = rows[0]
    ax.set_title(f"{'NF-ResNet' if arch == 'nf_resnet' else 'NFNet'}, AGC 0.01, batch {r0['batch_size']}, lr "
                 f"{r0['lr']:g}, {r0['n_train']} images x {r0['epochs']} ep",
                 fontsize=9)
    lo = min(r["test_acc"] for r in rows)
    ax.set_ylim(max(0, lo - 0.1), None)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--n-train", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--base-lr", type=float, default=0.4)
    p.add_argument("--arch", default="nf_resnet",
                   choices=["nf_resnet", "nfnet"])
    p.add_argument("--plot-only", action="store_true")
    args = p.parse_args(argv)
    if args.plot_only:
        return plot()
    jobs = [dict(arch=args.arch, batch_size=args.batch_size,
                 base_lr=args.base_lr, epochs=args.epochs,
                 n_train=args.n_train, seed=seed, clipping=0.01,
                 agc_exclude=excl, extra={"final_layer": mode})
            for seed in args.seeds
            for mode, excl in (("unclipped", None), ("clipped", ()))]
    rows = common.run_all(f"{NAME}_{args.arch}", jobs, common.cached_data())
    plot()
    return rows


if __name__ == "__main__":
    main()
