"""Transfer study (issue 31): which optimizer, AGC threshold, skip-gain
clipping and freezing / layer-wise decay to fine-tune a small NFNet with.

Pretrain the small NFNet of the studies (training/demo_data/nfnet_demo.json,
one block per stage, 32x32) on CIFAR-10 classes 0-4 (1,000 JPEGs each,
`--pre-epochs` epochs, SGD + AGC 0.01 with the skip gains unclipped), once
per seed; then fine-tune it (a new zero-initialised head) on classes 5-9
with 50 or 500 labelled images per class and test on their 1,000 held-out
images (200 per class). Each arm is one `model.fit`, with
`keras_nfnets.AGCMonitor` recording AGC's clip fraction per stage.

Arms: `<optimizer>_<agc>[_<tuning>]`
* optimizer: `sgd` (Nesterov 0.9, lr 0.05 x batch/256... see LR) or `adamw`
  (lr 1e-3, weight decay 0.05), warmup + cosine;
* agc: `off`, `l0.01` and `l0.1` (skip gains clipped: the package's
  default exclusion), `l0.01ns`, `l0.1ns` (skip gains unclipped,
  `SKIP_GAINS`); λ = 0.1 is the candidate default for adaptive optimizers;
* tuning: full (default), `frozen` (stem, stage1, stage2 frozen) or
  `decay` (`LayerDecay`, 0.75 per block).

    python -m experiments.study_finetune --quick     # a few CPU minutes
    python -m experiments.study_finetune             # the full grid
    python -m experiments.study_finetune --plot-only

Writes docs/study/study_finetune.csv (one row per run; resumable),
study_finetune_summary.csv (each arm against `sgd_off` and against its
optimizer's `<optimizer>_off`, binomial and seed errors) and
study_finetune.png / study_finetune_clip.png. The full grid runs, per label
count, each arm's seeds before the next arm (in `FULL_ARMS`'s order).
"""

import argparse
import json
import pathlib
import time

import numpy as np

from experiments import common

NAME = "study_finetune"
LR = {"sgd": 0.05, "adamw": 1e-3}
BATCH = 32
DECAY = 0.75
FROZEN = ("stem", "stage1", "stage2")
AGC = {"off": (None, False), "l0.01": (0.01, True), "l0.01ns": (0.01, False),
       "l0.1": (0.1, True), "l0.1ns": (0.1, False)}
QUICK_ARMS = ("sgd_off", "sgd_l0.01", "sgd_l0.01ns", "adamw_off",
              "adamw_l0.01ns", "adamw_l0.1ns", "sgd_l0.01ns_frozen",
              "sgd_l0.01ns_decay")
# In the order they run (for each label count, both seeds of an arm before
# the next arm), so that a run cut short leaves whole arms, the ones the
# default for adaptive optimizers is chosen from first.
FULL_ARMS = ("sgd_off", "adamw_off", "sgd_l0.01", "adamw_l0.01",
             "adamw_l0.1", "adamw_l0.1ns", "adamw_l0.01ns", "sgd_l0.01ns",
             "sgd_l0.01ns_frozen", "sgd_l0.01ns_decay",
             "adamw_l0.1ns_frozen", "adamw_l0.1ns_decay", "sgd_off_decay")


def split_data(per_class=(1000, 200)):
    """(pretrain, finetune): each `(x_train, y_train, x_test, y_test)`;
    classes 0-4 and 5-9 (labels 0-4)."""
    x_tr, y_tr, x_te, y_te = common.load_data(
        10 * per_class[0], 10 * per_class[1], per_class=per_class)

    def part(lo):
        a, b = (y_tr >= lo) & (y_tr < lo + 5), (y_te >= lo) & (y_te < lo + 5)
        return x_tr[a], y_tr[a] - lo, x_te[b], y_te[b] - lo
    return part(0), part(5)


def few_labels(data, per_class, seed):
    x, y, xt, yt = data
    rng = np.random.default_rng(1000 + seed)
    idx = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class]
                          for c in range(5)])
    return x[idx], y[idx], xt, yt


def build(seed):
    import keras_nfnets  # pylint: disable=import-outside-toplevel
    with open(common.NFNET_CONFIG) as f:
        cfg = json.load(f)
    cfg.update(depth=[1, 1, 1, 1], drop_rate=0.1, stochdepth_rate=0.0)
    return keras_nfnets.NFNet(config=cfg, classes=5, input_shape=(32, 32, 3),
                              include_preprocessing=True,
                              classifier_activation=None, seed=seed)


def optimizer(name, steps, model=None, decay=False):
    import keras  # pylint: disable=import-outside-toplevel
    import keras_nfnets  # pylint: disable=import-outside-toplevel
    schedule = keras_nfnets.WarmupCosineDecay(LR[name], max(1, steps // 10),
                                              steps)
    if name == "sgd":
        opt = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True)
    else:
        opt = keras.optimizers.AdamW(schedule, weight_decay=0.05)
    if decay:
        opt = keras_nfnets.LayerDecay(opt, model, decay=DECAY)
    return opt


def fit(model, opt, clipping, clip_skip, data, epochs, seed):
    import keras  # pylint: disable=import-outside-toplevel
    import keras_nfnets  # pylint: disable=import-outside-toplevel
    callbacks = []
    if clipping:
        exclude = ("linear/kernel",) if clip_skip else (
            "linear/kernel", keras_nfnets.SKIP_GAINS)
        opt = keras_nfnets.AGC(opt, clipping=clipping, exclude=exclude,
                               monitor=True)
        callbacks.append(keras_nfnets.AGCMonitor())
    model.compile(opt, keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=["accuracy"], agc_clipping=None)
    x, y, xt, yt = data
    keras.utils.set_random_seed(seed)
    hist = model.fit(x.astype("float32"), y, batch_size=BATCH, epochs=epochs,
                     shuffle=True, verbose=0, callbacks=callbacks)
    _, acc = model.evaluate(xt.astype("float32"), yt, batch_size=500,
                            verbose=0)
    return float(acc), hist.history


def pretrained(seed, pre, epochs, cache):
    """The weights after pretraining on classes 0-4 (cached per seed)."""
    path = pathlib.Path(cache) / f"pretrain_s{seed}_e{epochs}.weights.h5"
    model = build(seed)
    if path.exists():
        model.load_weights(path)
        return model, None
    steps = len(pre[0]) // BATCH * epochs
    acc, _ = fit(model, optimizer("sgd", steps), 0.01, False, pre, epochs,
                 seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(path)
    return model, acc


def run_arm(arm, source, data, epochs, seed):
    import keras_nfnets  # pylint: disable=import-outside-toplevel
    parts = arm.split("_")
    name, agc, tuning = parts[0], parts[1], (parts[2] if len(parts) > 2
                                             else "full")
    clipping, clip_skip = AGC[agc]
    model = build(seed)
    for layer in model.layers:  # everything but the new head
        if layer.name != "linear" and layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())
    if tuning == "frozen":
        keras_nfnets.freeze_stages(model, FROZEN)
    steps = len(data[0]) // BATCH * epochs
    opt = optimizer(name, steps, model, decay=tuning == "decay")
    start = time.time()
    acc, hist = fit(model, opt, clipping, clip_skip, data, epochs, seed)
    gains = [float(abs(v.numpy())) for v in model.weights
             if v.path.endswith("skip_gain")]
    row = {"arm": arm, "optimizer": name, "agc": agc, "tuning": tuning,
           "clipping": clipping or "off", "skip_gains_clipped": clip_skip,
           "seed": seed, "per_class": len(data[0]) // 5, "epochs": epochs,
           "n_test": len(data[3]), "test_acc": acc,
           "final_loss": float(hist["loss"][-1]),
           "mean_abs_skip_gain": float(np.mean(gains)),
           "train_seconds": round(time.time() - start, 1)}
    for key, values in hist.items():
        if key.startswith("agc_clip_fraction"):
            row[key.replace("agc_clip_fraction", "clip")] = float(
                np.mean(values))
    row["clip_curve"] = json.dumps(
        {k.split("/")[-1]: [round(v, 4) for v in vs] for k, vs in hist.items()
         if k.startswith("agc_clip_fraction")})
    return row


def summarize(rows, out_dir):
    """Each arm against `sgd_off` at the same label count: mean accuracy,
    difference, its binomial and seed standard errors."""
    out = []
    for per_class in sorted({r["per_class"] for r in rows}):
        sub = [r for r in rows if r["per_class"] == per_class]
        ref = [r for r in sub if r["arm"] == "sgd_off"]
        for arm in dict.fromkeys(r["arm"] for r in sub):
            runs = [r for r in sub if r["arm"] == arm]
            stats = common.arm_stats(runs)
            row = {"per_class": per_class, "arm": arm, "seeds": stats["n"],
                   "test_acc": round(stats["mean"], 4),
                   "sd": round(stats["sd"], 4),
                   "mean_abs_skip_gain": round(float(np.mean(
                       [r["mean_abs_skip_gain"] for r in runs])), 4),
                   "clip_fraction": round(float(np.mean(
                       [r.get("clip") or 0.0 for r in runs])), 4)}
            if ref and arm != "sgd_off":
                d = common.difference(runs, ref, runs[0]["n_test"])
                row.update(vs_sgd_off=round(d["diff"], 4),
                           binomial_se=round(d["binomial_se"], 4),
                           seed_se=round(d["seed_se"], 4))
            # against the same optimizer without AGC (full fine-tuning)
            off = f"{runs[0]['optimizer']}_off"
            ref_off = [r for r in sub if r["arm"] == off]
            if ref_off and arm != off:
                d = common.difference(runs, ref_off, runs[0]["n_test"])
                row.update(vs_off=round(d["diff"], 4),
                           vs_off_binomial_se=round(d["binomial_se"], 4),
                           vs_off_seed_se=round(d["seed_se"], 4))
            out.append(row)
    common.write_csv(out, pathlib.Path(out_dir) / f"{NAME}_summary.csv")
    return out


def plot(rows, summary, out_dir):
    plt = common.plt()
    sizes = sorted({s["per_class"] for s in summary})
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4),
                             squeeze=False)
    for ax, size in zip(axes[0], sizes):
        sub = [s for s in summary if s["per_class"] == size]
        ax.barh(range(len(sub)), [s["test_acc"] for s in sub],
                xerr=[common.binomial_se(s["test_acc"], 1000) for s in sub],
                color=["tab:gray" if "off" in s["arm"] else "tab:blue"
                       for s in sub])
        ax.set_yticks(range(len(sub)), [s["arm"] for s in sub], fontsize=7)
        ax.set_xlabel("held-out accuracy (classes 5-9)")
        ax.set_title(f"{size} labels per class", fontsize=9)
    fig.tight_layout()
    fig.savefig(pathlib.Path(out_dir) / f"{NAME}.png", dpi=120)

    import keras_nfnets  # pylint: disable=import-outside-toplevel
    picks = [r for r in rows if r["seed"] == rows[0]["seed"]
             and r["clipping"] != "off" and r["tuning"] == "full"
             and r["per_class"] == sizes[0]]
    fig, axes = plt.subplots(1, len(picks), figsize=(3.6 * len(picks), 3.2),
                             squeeze=False, sharey=True)
    for ax, r in zip(axes[0], picks):
        curve = json.loads(r["clip_curve"])
        history = {("agc_clip_fraction" if k == "agc_clip_fraction" else
                    "agc_clip_fraction/" + k): v for k, v in curve.items()}
        keras_nfnets.plot_clip_fraction(history, ax=ax)
        ax.set_title(r["arm"], fontsize=9)
    fig.tight_layout()
    fig.savefig(pathlib.Path(out_dir) / f"{NAME}_clip.png", dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="8 arms, 50 labels per class x 8 epochs, 2 seeds")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--pre-epochs", type=int, default=3)
    p.add_argument("--out-dir", type=pathlib.Path, default=common.OUT_DIR)
    p.add_argument("--cache", default="/tmp/study_finetune_cache")
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--plot-only", action="store_true")
    args = p.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"{NAME}.csv"
    if args.plot_only:
        rows = common.read_csv(path)
        plot(rows, summarize(rows, args.out_dir), args.out_dir)
        return
    arms = QUICK_ARMS if args.quick else FULL_ARMS
    # labels per class: epochs
    sizes = {50: 8} if args.quick else {50: 15, 500: 4}
    rows = common.read_csv(path) if path.exists() else []
    done = {(r["arm"], r["seed"], r["per_class"]) for r in rows}
    pre, target = split_data()
    t0 = time.time()
    sources = {}
    for seed in args.seeds:
        sources[seed], pre_acc = pretrained(seed, pre, args.pre_epochs,
                                            args.cache)
        if pre_acc is not None:
            print(f"pretrain seed {seed}: test acc {pre_acc:.3f}", flush=True)
    for per_class, epochs in sizes.items():
        data = {seed: few_labels(target, per_class, seed)
                for seed in args.seeds}
        for arm in arms:
            for seed in args.seeds:
                if (arm, seed, per_class) in done:
                    continue
                if (args.max_minutes
                        and time.time() - t0 > 60 * args.max_minutes):
                    print("--max-minutes reached; rerun to resume")
                    plot(rows, summarize(rows, args.out_dir), args.out_dir)
                    return
                row = run_arm(arm, sources[seed], data[seed], epochs, seed)
                row["pretrain_epochs"] = args.pre_epochs
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items()
                                  if k != "clip_curve"}), flush=True)
                common.write_csv(rows, path)
    plot(rows, summarize(rows, args.out_dir), args.out_dir)
    print(f"{NAME}: {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
