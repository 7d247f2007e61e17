"""Study 5 (issue 9): dropout and stochastic depth on vs off for the NF
network, with the BN-ResNet as the reference for BatchNorm's implicit
regularisation.

A small training set (4,000 CIFAR-10 images) trained for 15 epochs so that
the networks overfit; `model.fit` at batch 64, lr = 0.1 * 64/256, seeds 0
and 1. NF-ResNet (AGC 0.01) with: nothing; dropout 0.3 before the
classifier; stochastic depth 0.2 (DeepMind's schedule: linear over blocks);
both; and the BN-ResNet with neither. Train accuracy (inference mode) and
held-out accuracy on 2,000 test images ->
docs/study/study_regularization.csv. `--no-agc` repeats it with AGC off
for the NF-ResNet (-> study_regularization_noagc.csv; see
study_skip_gain: AGC 0.01 keeps this network's zero-initialised skip gains
near 0 in short runs). The PNG shows every CSV present.

    python -m experiments.study_regularization
    python -m experiments.study_regularization --no-agc
    python -m experiments.study_regularization --plot-only
"""

import argparse

import numpy as np

from experiments import common

NAME = "study_regularization"
CONFIGS = [
    ("NF: none", "nf_resnet", dict(drop_rate=0.0, stochdepth_rate=0.0)),
    ("NF: dropout 0.3", "nf_resnet", dict(drop_rate=0.3, stochdepth_rate=0.0)),
    ("NF: stoch. depth 0.2", "nf_resnet",
     dict(drop_rate=0.0, stochdepth_rate=0.2)),
    ("NF: both", "nf_resnet", dict(drop_rate=0.3, stochdepth_rate=0.2)),
    ("BN: none", "bn_resnet", dict(drop_rate=0.0)),
]


def plot(out_dir=common.OUT_DIR):
    plt = common.plt()
    files = [(f, t) for f, t in ((f"{NAME}.csv", "NF with AGC 0.01 (default)"),
                                 (f"{NAME}_noagc.csv", "NF with AGC off"))
             if (out_dir / f).exists()]
    fig, axes = plt.subplots(1, len(files), figsize=(7.5 * len(files), 4),
                             squeeze=False)
    for ax, (f, title) in zip(axes[0], files):
        _panel(ax, common.read_csv(out_dir / f), title)
    fig.tight_layout()
    fig.savefig(out_dir / f"{NAME}.png", dpi=110)


def _panel(ax, rows, title):
    names = [c[0] for c in CONFIGS if any(r["config"] == c[0] for r in rows)]
    for i, name in enumerate(names):
        rs = [r for r in rows if r["config"] == name]
        te = [r["test_acc"] for r in rs]
        tr = [r["train_acc"] for r in rs]
        ax.bar(i - 0.2, np.mean(tr), 0.4, color="tab:gray",
               label="train acc" if i == 0 else None)
        ax.bar(i + 0.2, np.mean(te), 0.4, color="tab:blue",
               label="held-out acc" if i == 0 else None)
        ax.plot([i + 0.2] * len(te), te, "k.", ms=4)
        ax.plot([i - 0.2] * len(tr), tr, "k.", ms=4)
        ax.annotate(f"{np.mean(te):.3f}", (i + 0.2, np.mean(te)),
                    textcoords="offset points", xytext=(0, 3), fontsize=7,
                    ha="center")
        ax.annotate(f"{np.mean(tr):.3f}", (i - 0.2, np.mean(tr)),
                    textcoords="offset points", xytext=(0, 3), fontsize=7,
                    ha="center")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    r0 = rows[0]
    ax.set_ylabel("accuracy (bars: mean over seeds, dots: seeds)")
    ax.set_title(f"{title}: {r0['n_train']} CIFAR-10 images x {r0['epochs']} epochs, "
                 f"batch {r0['batch_size']}, lr {r0['lr']:g}", fontsize=9)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, loc="upper left")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--base-lr", type=float, default=0.1)
    p.add_argument("--no-agc", action="store_true",
                   help="NF-ResNet with agc_clipping=None")
    p.add_argument("--plot-only", action="store_true")
    args = p.parse_args(argv)
    if args.plot_only:
        return plot()
    jobs = [dict(arch=arch, batch_size=args.batch_size, base_lr=args.base_lr,
                 epochs=args.epochs, n_train=args.n_train, seed=seed,
                 model_kwargs=kw, extra={"config": name},
                 clipping=None if args.no_agc else "default")
            for seed in args.seeds for name, arch, kw in CONFIGS]
    rows = common.run_all(NAME + ("_noagc" if args.no_agc else ""), jobs,
                          common.cached_data())
    plot()
    return rows


if __name__ == "__main__":
    main()
