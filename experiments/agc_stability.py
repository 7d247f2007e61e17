"""AGC stability experiment on real CIFAR-10 (issue 4, last acceptance line).

A small NFNet (the project's CIFAR demo config, `training/demo_data/
nfnet_demo.json`, ~0.23M parameters) is trained with `model.fit` on a
class-balanced subset of the CIFAR-10 JPEGs in `../shared/datasets/`, with
DeepMind's optimizer (`keras_nfnets.NFNetSGD`: SGD, Nesterov momentum 0.9,
coupled weight decay 2e-5; `WarmupCosineDecay` learning rate), over a grid of
batch sizes and learning rates, each point twice from the same seed (same
initial weights, same batch order):

* `agc_clipping=None`  (no clipping), and
* `agc_clipping=LAMBDA` (AGC, classifier weight excluded, DeepMind's default).

Per-step training loss, held-out accuracy, and a divergence verdict are
written to `docs/study/agc_stability*.csv`, the curves to
`docs/study/agc_stability.png` (the selected setting) and
`docs/study/agc_stability_grid.png` (every grid point).

Run (CPU; the time it took is in docs/study/agc_stability.md):

    python -m experiments.agc_stability
    python -m experiments.agc_stability --batch-sizes 1024 --base-lrs 1.6

The learning rate is `base_lr * batch_size / 256` (DeepMind's scaling).
A run *diverges* when its loss becomes non-finite, or when the mean loss of
its last 20% of steps stays above ln(10) + 0.2 (no better than chance); it
is *unstable* when it diverges or when a step's loss exceeds 2 * ln(10)
after the first 10% of steps (a loss spike).
"""

import argparse
import csv
import json
import math
import pathlib
import tarfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_TARBALL = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
DEFAULT_CONFIG = REPO / "training" / "demo_data" / "nfnet_demo.json"
OUT_DIR = REPO / "docs" / "study"
CHANCE = math.log(10.0)


# --------------------------------------------------------------- data

def _extract_subset(tarball, root, train_per_class, test_per_class):
    """Extracts the first N images per class (sorted names) of each split."""
    limits = {"train": train_per_class, "test": test_per_class}
    with tarfile.open(tarball, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        chosen = []
        by_dir = {}
        for m in members:
            parts = pathlib.PurePosixPath(m.name).parts[-3:]
            if len(parts) != 3 or parts[0] not in limits:
                continue
            by_dir.setdefault(parts[:2], []).append((parts[2], m, parts))
        for (split, _), items in by_dir.items():
            for _, m, parts in sorted(items, key=lambda t: t[0])[:limits[split]]:
                chosen.append((m, parts))
        for m, parts in sorted(chosen, key=lambda t: t[0].offset):
            dest = root.joinpath(*parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(m) as src, open(dest, "wb") as dst:
                dst.write(src.read())


def load_cifar(tarball, cache_dir, train_per_class, test_per_class):
    """(x_train, y_train, x_test, y_test, class_names), uint8 NHWC.

    The subset is extracted to `cache_dir`, listed with the project's
    `training.data.folder_source` (labels = sorted class folders), decoded
    once and cached as .npz."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from training import data  # pylint: disable=import-outside-toplevel

    cache_dir = pathlib.Path(cache_dir)
    cache = cache_dir / f"cifar10_{train_per_class}_{test_per_class}.npz"
    if cache.exists():
        z = np.load(cache)
        return (z["x_train"], z["y_train"], z["x_test"], z["y_test"],
                tuple(z["classes"]))
    root = cache_dir / f"jpeg_{train_per_class}_{test_per_class}"
    if not (root / "train").is_dir():
        _extract_subset(tarball, root, train_per_class, test_per_class)
    source = data.folder_source(str(root), train_split="train",
                                eval_split="test")

    def decode(items):
        x = np.stack([tf.io.decode_jpeg(tf.io.read_file(p), channels=3)
                      .numpy() for p, _ in items])
        y = np.array([label for _, label in items], np.int32)
        return x, y

    x_train, y_train = decode(source.files["train"])
    x_test, y_test = decode(source.files["test"])
    np.savez(cache, x_train=x_train, y_train=y_train, x_test=x_test,
             y_test=y_test, classes=np.array(source.class_names))
    return x_train, y_train, x_test, y_test, source.class_names


# ---------------------------------------------------------------- runs

def _step_loss_callback():
    import keras  # pylint: disable=import-outside-toplevel

    class StepLoss(keras.callbacks.Callback):
        """Per-step training loss from Keras's running epoch mean.

        Keras 3 reports the mean of the epoch's batch losses so far; with
        equal-sized batches (drop_remainder) the k-th batch's loss is
        `k * mean_k - (k - 1) * mean_{k-1}`. Stops training on a non-finite
        loss (the run has diverged; nothing after it is informative)."""

        def __init__(self):
            super().__init__()
            self.losses = []
            self._prev = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._prev = 0.0

        def on_train_batch_end(self, batch, logs=None):
            mean = float(logs["loss"])
            k = batch + 1
            loss = k * mean - (k - 1) * self._prev if math.isfinite(mean) \
                else mean
            self._prev = mean
            self.losses.append(loss)
            if not math.isfinite(mean):
                self.model.stop_training = True

    return StepLoss()


def verdict(losses, total_steps):
    """(diverged, unstable, reason)."""
    arr = np.asarray(losses, np.float64)
    if len(arr) < total_steps or not np.all(np.isfinite(arr)):
        bad = int(np.argmax(~np.isfinite(arr))) if not np.all(
            np.isfinite(arr)) else len(arr)
        return True, True, f"non-finite loss at step {bad + 1}"
    tail = arr[-max(1, total_steps // 5):]
    if tail.mean() > CHANCE + 0.2:
        return True, True, (f"last-20% mean loss {tail.mean():.3f} > "
                            f"ln(10)+0.2")
    after = arr[max(1, total_steps // 10):]
    if after.max() > 2 * CHANCE:
        return False, True, f"loss spike {after.max():.3g} > 2 ln(10)"
    return False, False, "trains"


def study_schedule(lr, total_steps, warmup_frac):
    """The studies' learning rate: linear warmup, then cosine to zero."""
    import keras_nfnets  # pylint: disable=import-outside-toplevel
    return keras_nfnets.WarmupCosineDecay(
        lr, warmup_steps=max(1, round(warmup_frac * total_steps)),
        total_steps=total_steps)


def study_optimizer(schedule):
    """The studies' optimizer: NFNetSGD, Nesterov 0.9, coupled weight decay
    2e-5 (clipping is set at compile)."""
    import keras_nfnets  # pylint: disable=import-outside-toplevel
    return keras_nfnets.NFNetSGD(schedule, momentum=0.9, nesterov=True,
                                 weight_decay=2e-5)


def train_one(x_train, y_train, x_test, y_test, cfg, batch_size, lr,
              clipping, epochs, warmup_frac, seed):
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import keras_nfnets  # pylint: disable=import-outside-toplevel

    keras.utils.set_random_seed(seed)
    model = keras_nfnets.NFNet(config=cfg, classes=10, input_shape=(32, 32, 3),
                               include_preprocessing=True,
                               classifier_activation=None, seed=seed)
    steps_per_epoch = len(x_train) // batch_size
    total = steps_per_epoch * epochs
    schedule = study_schedule(lr, total, warmup_frac)
    optimizer = study_optimizer(schedule)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True),
                  metrics=["accuracy"], agc_clipping=clipping)
    train = (tf.data.Dataset.from_tensor_slices((x_train, y_train))
             .shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
             .batch(batch_size, drop_remainder=True)
             .map(lambda x, y: (tf.cast(x, tf.float32), y))
             .prefetch(2))
    cb = _step_loss_callback()
    start = time.time()
    model.fit(train, epochs=epochs, verbose=0, callbacks=[cb])
    train_s = time.time() - start
    test_loss, test_acc = model.evaluate(
        x_test.astype("float32"), y_test, batch_size=500, verbose=0)
    skipped = getattr(model.optimizer, "skipped_steps", None)
    diverged, unstable, reason = verdict(cb.losses, total)
    finite = [l for l in cb.losses if math.isfinite(l)]
    lrs = [float(schedule(i)) for i in range(len(cb.losses))]
    return {
        "batch_size": batch_size, "lr": lr,
        "clipping": clipping if clipping else "off",
        "steps": total, "steps_run": len(cb.losses),
        "final_loss": cb.losses[-1] if cb.losses else float("nan"),
        "last20_mean_loss": float(np.mean(cb.losses[-max(1, total // 5):])),
        "min_loss": min(finite) if finite else float("nan"),
        "max_loss": max(finite) if finite else float("nan"),
        "test_loss": float(test_loss), "test_acc": float(test_acc),
        "skipped_steps": int(skipped.numpy()) if skipped is not None else "",
        "diverged": diverged, "unstable": unstable, "reason": reason,
        "train_seconds": round(train_s, 1),
    }, cb.losses, lrs


# ---------------------------------------------------------------- plots

def _label(run):
    c = run["clipping"]
    name = "no clipping" if c == "off" else f"AGC $\\lambda$={c}"
    state = "diverged" if run["diverged"] else (
        "unstable" if run["unstable"] else "trains")
    return f"{name}: {state}, test acc {run['test_acc']:.3f}"


def _plot_pair(ax, runs, curves, title, zoom=False):
    for run in runs:
        key = (run["batch_size"], run["lr"], str(run["clipping"]))
        losses = np.asarray(curves[key], np.float64)
        steps = np.arange(1, len(losses) + 1)
        ok = np.isfinite(losses)
        color = "tab:red" if run["clipping"] == "off" else "tab:blue"
        ax.plot(steps[ok], losses[ok], color=color,
                lw=1.0, label=_label(run))
        if not ok.all():
            first = int(np.argmax(~ok))
            ax.axvline(first + 1, color=color, ls=":", lw=1)
            ax.annotate(f"NaN at step {first + 1}", (first + 1, 0.5),
                        xycoords=("data", "axes fraction"), color=color,
                        fontsize=8, rotation=90, ha="right")
    ax.axhline(CHANCE, color="gray", ls="--", lw=0.8)
    if zoom:
        ax.set_ylim(0, 2 * CHANCE)
    else:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (per step)")
    ax.legend(fontsize=7, loc="upper right")


def plot(summary, curves, selected, out_dir, n_train):
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    points = sorted({(r["batch_size"], r["lr"]) for r in summary})
    cols = min(3, len(points))
    rows = math.ceil(len(points) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows),
                             squeeze=False)
    for ax, (b, lr) in zip(axes.flat, points):
        runs = [r for r in summary if (r["batch_size"], r["lr"]) == (b, lr)]
        mark = "  [selected]" if (b, lr) == selected else ""
        _plot_pair(ax, runs, curves, f"batch {b}, lr {lr:g}{mark}")
    for ax in list(axes.flat)[len(points):]:
        ax.axis("off")
    fig.suptitle(f"Small NFNet on CIFAR-10 ({n_train} train images): "
                 "no clipping vs AGC (dashed: ln 10, chance)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "agc_stability_grid.png", dpi=110)
    plt.close(fig)

    if selected is not None:
        b, lr = selected
        runs = [r for r in summary if (r["batch_size"], r["lr"]) == (b, lr)]
        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.2))
        _plot_pair(ax0, runs, curves, "log scale, full range")
        _plot_pair(ax1, runs, curves, "linear scale, 0 to 2 ln 10",
                   zoom=True)
        fig.suptitle(f"Small NFNet, CIFAR-10 ({n_train} train images), "
                     f"batch {b}, lr {lr:g} (NFNetSGD: Nesterov 0.9, "
                     "warmup + cosine); dashed: ln 10 (chance)", fontsize=10)
        fig.tight_layout()
        fig.savefig(out_dir / "agc_stability.png", dpi=120)
        plt.close(fig)


def parse_csv_value(v):
    """A CSV cell back to bool, int, float or str."""
    if v in ("True", "False"):
        return v == "True"
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            pass
    return v


def read_csvs(out_dir):
    """(summary, curves, lr_curves) from the CSVs in `out_dir`."""
    parse = parse_csv_value
    with open(out_dir / "agc_stability_summary.csv") as f:
        summary = [{k: (v if k in ("clipping", "reason") else parse(v))
                    for k, v in row.items()} for row in csv.DictReader(f)]
    for r in summary:
        r["lr"] = float(r["lr"])
    curves, lr_curves = {}, {}
    with open(out_dir / "agc_stability.csv") as f:
        for row in csv.DictReader(f):
            key = (int(row["batch_size"]), float(row["lr"]), row["clipping"])
            curves.setdefault(key, []).append(float(row["loss"]))
            lr_curves.setdefault(key, []).append(float(row["lr_t"]))
    return summary, curves, lr_curves


def replot(out_dir, n_train):
    """Redraws the PNGs from the CSVs (no training)."""
    summary, curves, _ = read_csvs(out_dir)
    selected = select(summary)
    plot(summary, curves, selected, out_dir, n_train)
    print(f"selected setting (no clipping diverges, AGC trains): {selected}")
    return summary, selected


# ---------------------------------------------------------------- main

def select(summary):
    """The grid point where no clipping diverges and AGC trains: the
    smallest such learning rate at the largest such batch size."""
    good = []
    for b, lr in sorted({(r["batch_size"], r["lr"]) for r in summary}):
        runs = {r["clipping"]: r for r in summary
                if (r["batch_size"], r["lr"]) == (b, lr)}
        off = runs.get("off")
        agc = [r for c, r in runs.items() if c != "off"]
        if off and off["diverged"] and any(not r["diverged"] for r in agc):
            good.append((b, lr))
    if not good:
        return None
    best_b = max(b for b, _ in good)
    return (best_b, min(lr for b, lr in good if b == best_b))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tarball", default=str(DEFAULT_TARBALL))
    p.add_argument("--cache-dir", default="/tmp/agc_cifar_cache")
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--train-per-class", type=int, default=2000)
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--base-lrs", type=float, nargs="+",
                   default=[0.025, 0.1, 0.4, 1.6],
                   help="lr = base_lr * batch_size / 256")
    p.add_argument("--clipping", type=float, default=0.01)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--warmup-frac", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-early-stop-ladder", action="store_true",
                   help="run every base lr even after no-clipping diverged "
                        "and AGC diverged too at a lower lr")
    p.add_argument("--out-dir", default=str(OUT_DIR))
    p.add_argument("--append", action="store_true",
                   help="add these runs to the CSVs already in --out-dir "
                        "(a rerun of the same point replaces it)")
    p.add_argument("--plot-only", action="store_true",
                   help="redraw the PNGs from the CSVs in --out-dir")
    args = p.parse_args(argv)
    if args.plot_only:
        return replot(pathlib.Path(args.out_dir),
                      args.train_per_class * 10)

    out_dir = pathlib.Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.cache_dir).mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    x_train, y_train, x_test, y_test, _ = load_cifar(
        args.tarball, args.cache_dir, args.train_per_class,
        args.test_per_class)
    print(f"data: train {x_train.shape} test {x_test.shape} "
          f"({time.time() - t0:.1f}s)", flush=True)
    with open(args.config) as f:
        cfg = json.load(f)

    summary, curves, lr_curves = [], {}, {}
    if args.append and (out_dir / "agc_stability_summary.csv").exists():
        summary, curves, lr_curves = read_csvs(out_dir)
    for b in args.batch_sizes:
        for base in args.base_lrs:
            lr = round(base * b / 256, 6)
            for clipping in (None, args.clipping):
                run, losses, lrs = train_one(
                    x_train, y_train, x_test, y_test, cfg, b, lr, clipping,
                    args.epochs, args.warmup_frac, args.seed)
                run["base_lr"] = base
                summary = [r for r in summary if (
                    r["batch_size"], r["lr"], str(r["clipping"])) != (
                        b, lr, str(run["clipping"]))]
                summary.append(run)
                curves[(b, lr, str(run["clipping"]))] = losses
                lr_curves[(b, lr, str(run["clipping"]))] = lrs
                print(json.dumps(run), flush=True)
            both = [r for r in summary if (r["batch_size"], r["lr"]) == (b, lr)
                    and r["batch_size"] == b]
            if (not args.no_early_stop_ladder
                    and all(r["diverged"] for r in both)):
                break  # higher learning rates only diverge harder

    fields = ["batch_size", "base_lr", "lr", "clipping", "steps", "steps_run",
              "final_loss", "last20_mean_loss", "min_loss", "max_loss",
              "test_loss", "test_acc", "skipped_steps", "diverged",
              "unstable", "reason", "train_seconds"]
    summary.sort(key=lambda r: (r["batch_size"], r["lr"],
                                r["clipping"] != "off"))
    with open(out_dir / "agc_stability_summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in summary:
            w.writerow({k: r[k] for k in fields})
    with open(out_dir / "agc_stability.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["batch_size", "lr", "clipping", "step", "lr_t", "loss"])
        for (b, lr, c), losses in sorted(curves.items(),
                                         key=lambda kv: (kv[0][0], kv[0][1],
                                                         kv[0][2] != "off")):
            for i, (loss, lr_t) in enumerate(zip(losses,
                                                 lr_curves[(b, lr, c)])):
                w.writerow([b, lr, c, i + 1, f"{lr_t:.6g}", f"{loss:.6g}"])
    selected = select(summary)
    plot(summary, curves, selected, out_dir, len(x_train))
    print(f"selected setting (no clipping diverges, AGC trains): {selected}")
    print(f"total wall clock: {time.time() - t0:.0f}s")
    return summary, selected


if __name__ == "__main__":
    main()
