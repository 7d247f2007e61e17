"""Diagnostic for studies 1 and 3 (issue 9): does AGC freeze the NF-ResNet's
zero-initialised skip gains?

AGC clips a gradient to `lambda * max(||w||, eps)` unit-wise; a scalar
`skip_gain` initialised to 0 (DeepMind's SkipInit) may move at most
`lr * lambda * eps` (1e-5 * lr at lambda = 0.01, eps = 1e-3) per step
(before momentum), so in a short run the residual branches stay switched
off. Three runs of the small NF-ResNet (20,000 CIFAR-10 images, 3 epochs,
batch 256, lr 0.1, seed 0): AGC 0.01 (package default), AGC off, and AGC
0.01 with the skip gains also excluded from clipping. Records the mean
|skip_gain| after training -> docs/study/study_skip_gain.{csv,png}.

    python -m experiments.study_skip_gain
    python -m experiments.study_skip_gain --plot-only
"""

import argparse

import numpy as np

from experiments import common

NAME = "study_skip_gain"


def skip_gain_paths(model):
    return [v.path for v in model.trainable_variables
            if v.path.endswith("skip_gain")]


def exclude_linear_and_skip_gains(model):
    return ("linear/kernel", *skip_gain_paths(model))


def probe(model):
    gains = [float(np.abs(v.numpy())) for v in model.trainable_variables
             if v.path.endswith("skip_gain")]
    return {"mean_abs_skip_gain": float(np.mean(gains)),
            "skip_gains": " ".join(f"{g:.3g}" for g in gains)}


def plot(rows, out_dir=common.OUT_DIR):
    plt = common.plt()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.6))
    names = [r["variant"] for r in rows]
    ax0.bar(range(len(rows)), [r["test_acc"] for r in rows], color="tab:blue")
    ax1.bar(range(len(rows)), [r["mean_abs_skip_gain"] for r in rows],
            color="tab:gray")
    for ax, key, fmt in ((ax0, "test_acc", "{:.3f}"),
                         (ax1, "mean_abs_skip_gain", "{:.2g}")):
        for i, r in enumerate(rows):
            ax.annotate(fmt.format(r[key]), (i, r[key]), ha="center",
                        textcoords="offset points", xytext=(0, 3), fontsize=8)
        ax.set_xticks(range(len(rows)), names, fontsize=7)
    ax0.set_ylabel("held-out accuracy")
    ax1.set_ylabel("mean |skip_gain| after training")
    r0 = rows[0]
    fig.suptitle(f"NF-ResNet, {r0['n_train']} images x {r0['epochs']} epochs,"
                 f" batch {r0['batch_size']}, lr {r0['lr']:g}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / f"{NAME}.png", dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plot-only", action="store_true")
    args = p.parse_args(argv)
    if args.plot_only:
        return plot(common.read_csv(common.OUT_DIR / f"{NAME}.csv"))
    base = dict(arch="nf_resnet", batch_size=256, base_lr=0.1, epochs=3,
                n_train=20000, seed=0, probe=probe)
    jobs = [dict(base, clipping="default",
                 extra={"variant": "AGC 0.01 (default)"}),
            dict(base, clipping=None, extra={"variant": "no clipping"}),
            dict(base, clipping=0.01,
                 agc_exclude=exclude_linear_and_skip_gains,
                 extra={"variant": "AGC 0.01, skip gains unclipped"})]
    rows = common.run_all(NAME, jobs, common.cached_data())
    plot(rows)
    return rows


if __name__ == "__main__":
    main()
