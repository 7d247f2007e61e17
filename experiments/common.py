"""Shared pieces of the studies (`experiments.study_*`, issues 9 and 20).

Data: the CIFAR-10 JPEG subset that `experiments.agc_stability` extracts,
decodes and caches (its `load_cifar`), class-balanced, 32x32, no
augmentation. Models: a small NF-ResNet (`keras_nfnets.NFResNet`), a Keras
BN-ResNet with the same blocks, depths and widths (BatchNorm + plain ReLU
instead of weight standardisation, scaled activations, beta/alpha and skip
gain), and the small NFNet of `agc_stability`. Training: `model.fit` only,
DeepMind's optimizer (`NFNetSGD`, Nesterov 0.9, weight decay 2e-5, linear
warmup + cosine), `lr = base_lr * batch / 256`.
"""

import argparse
import csv
import json
import math
import pathlib
import time

import numpy as np

from experiments import agc_stability as agc

REPO = agc.REPO
OUT_DIR = agc.OUT_DIR
CACHE_DIR = "/tmp/agc_cifar_cache"
NFNET_CONFIG = agc.DEFAULT_CONFIG

# The small NF-ResNet: DeepMind's NF-ResNet blocks (bottleneck 0.25,
# 7x7/2 stem + max-pool), one block per stage, width 0.5 -> stage widths
# 32/64/128/256, stem 8 channels.
RESNET_DEPTH = (1, 1, 1, 1)
RESNET_WIDTH = 0.5


def load_data(n_train, n_test=2000, seed=0, per_class=(2000, 200)):
    """(x_train, y_train, x_test, y_test): `n_train` images drawn (fixed
    permutation) from the 20,000-image subset of agc_stability, and the
    first `n_test` of its 2,000 held-out test images (class-balanced).
    `per_class`: (train, test) images per class of the extracted subset;
    the studies use agc_stability's (2000, 200), tests a tiny one."""
    pathlib.Path(CACHE_DIR).mkdir(parents=True, exist_ok=True)
    x_tr, y_tr, x_te, y_te, _ = agc.load_cifar(
        agc.DEFAULT_TARBALL, CACHE_DIR, *per_class)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x_tr))[:n_train]
    tidx = np.random.default_rng(seed).permutation(len(x_te))[:n_test]
    return x_tr[idx], y_tr[idx], x_te[tidx], y_te[tidx]


# -------------------------------------------------------------- models

def nf_resnet(seed, drop_rate=0.0, stochdepth_rate=0.0):
    import keras_nfnets  # pylint: disable=import-outside-toplevel
    return keras_nfnets.NFResNet(
        "ResNet50", depth=RESNET_DEPTH, width=RESNET_WIDTH, classes=10,
        input_shape=(32, 32, 3), classifier_activation=None,
        include_preprocessing=True, drop_rate=drop_rate,
        stochdepth_rate=stochdepth_rate, seed=seed)


def bn_resnet(seed, drop_rate=0.0):
    """Pre-activation bottleneck ResNet (v2) with the NF-ResNet's layout:
    same stem, stage widths, depths, bottleneck ratio, strided 1x1
    projection shortcut and classifier init; BatchNorm + ReLU where the
    NF-ResNet has a scaled ReLU (and no WS, beta/alpha, skip gain)."""
    import keras  # pylint: disable=import-outside-toplevel
    from keras import layers  # pylint: disable=import-outside-toplevel
    from keras_nfnets import builder  # pylint: disable=import-outside-toplevel

    init = keras.initializers.HeNormal(seed=seed)

    def conv(filters, k, s=1, name=None):
        return layers.Conv2D(filters, k, strides=s, padding="same",
                             use_bias=False, kernel_initializer=init,
                             name=name)

    def bn_relu(x, name):
        x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5,
                                      name=name + "_bn")(x)
        return layers.ReLU(name=name + "_relu")(x)

    inputs = keras.Input((32, 32, 3))
    x = builder._preprocessing(3)(inputs)  # pylint: disable=protected-access
    ch = int(16 * RESNET_WIDTH)
    x = conv(ch, 7, 2, "initial_conv")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    widths = [int(c * RESNET_WIDTH) for c in (64, 128, 256, 512)]
    in_ch = ch
    for stage, (width, depth, stride) in enumerate(
            zip(widths, RESNET_DEPTH, (1, 2, 2, 2))):
        for j in range(depth):
            s = stride if j == 0 else 1
            name = f"block{stage}_{j}"
            out = bn_relu(x, name + "_pre")
            if s > 1 or in_ch != width:
                shortcut = conv(width, 1, s, name + "_proj")(out)
            else:
                shortcut = x
            mid = int(width * 0.25)
            out = conv(mid, 1, 1, name + "_conv0")(out)
            out = bn_relu(out, name + "_a")
            out = conv(mid, 3, s, name + "_conv1")(out)
            out = bn_relu(out, name + "_b")
            out = conv(width, 1, 1, name + "_conv2")(out)
            x = layers.Add(name=name + "_add")([out, shortcut])
            in_ch = width
    x = bn_relu(x, "final")
    x = layers.GlobalAveragePooling2D()(x)
    if drop_rate:
        x = layers.Dropout(drop_rate, seed=seed)(x)
    x = layers.Dense(10, kernel_initializer=keras.initializers.RandomNormal(
        0.0, 0.01, seed=seed), name="linear")(x)
    return keras.Model(inputs, x, name="bn_resnet")


def nfnet(seed, drop_rate=None, stochdepth_rate=None, **config):
    """The small NFNet of agc_stability (training/demo_data/nfnet_demo.json,
    dropout 0.1, no stochastic depth unless overridden). `config`: other
    entries of that config replaced, e.g. `depth=(1, 1, 1, 1)`,
    `width=(32, 64, 128, 128)`."""
    import keras_nfnets  # pylint: disable=import-outside-toplevel
    with open(NFNET_CONFIG) as f:
        cfg = json.load(f)
    unknown = set(config) - set(cfg)
    if unknown:
        raise ValueError(f"not entries of {NFNET_CONFIG.name}: "
                         f"{sorted(unknown)}")
    cfg.update({k: list(v) if isinstance(v, tuple) else v
                for k, v in config.items()})
    if drop_rate is not None:
        cfg["drop_rate"] = drop_rate
    if stochdepth_rate is not None:
        cfg["stochdepth_rate"] = stochdepth_rate
    return keras_nfnets.NFNet(config=cfg, classes=10, input_shape=(32, 32, 3),
                              include_preprocessing=True,
                              classifier_activation=None, seed=seed)


BUILDERS = {"nf_resnet": nf_resnet, "bn_resnet": bn_resnet, "nfnet": nfnet}


# ------------------------------------------------------------ training

def train(data, arch, *, batch_size, base_lr, epochs, seed=0,
          clipping="default", agc_exclude=None, warmup_frac=0.1,
          model_kwargs=None, probe=None):
    """One `model.fit` run; returns a result dict (no curves).

    clipping: "default" (the package's compile default, AGC 0.01), None
    (off) or a float lambda; ignored for the BN-ResNet (plain
    `keras.Model`, no AGC). agc_exclude: as `NFNetModel.compile`, or a
    callable `model -> exclude`. probe: optional `model -> dict` of extra
    columns, read after training."""
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import keras_nfnets  # pylint: disable=import-outside-toplevel

    x_train, y_train, x_test, y_test = data
    keras.utils.set_random_seed(seed)
    model = BUILDERS[arch](seed, **(model_kwargs or {}))
    lr = base_lr * batch_size / 256
    steps_per_epoch = len(x_train) // batch_size
    total = steps_per_epoch * epochs
    optimizer = agc.study_optimizer(
        agc.study_schedule(lr, total, warmup_frac))
    compile_kwargs = dict(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    if isinstance(model, keras_nfnets.NFNetModel):
        # "default": the studies' lambda 0.01 on every family (compile's own
        # default is per family: off for NF-ResNets and NF-RegNets).
        compile_kwargs["agc_clipping"] = (0.01 if clipping == "default"
                                          else clipping)
        if callable(agc_exclude):
            agc_exclude = agc_exclude(model)
        if agc_exclude is not None:
            compile_kwargs["agc_exclude"] = agc_exclude
        lam = 0.01 if clipping == "default" else clipping
    else:
        lam = None
    model.compile(**compile_kwargs)
    ds = (tf.data.Dataset.from_tensor_slices((x_train, y_train))
          .shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
          .batch(batch_size, drop_remainder=True)
          .map(lambda x, y: (tf.cast(x, tf.float32), y))
          .prefetch(2))
    cb = agc._step_loss_callback()  # pylint: disable=protected-access
    start = time.time()
    hist = model.fit(ds, epochs=epochs, verbose=0, callbacks=[cb])
    train_s = time.time() - start
    test_loss, test_acc = model.evaluate(
        x_test.astype("float32"), y_test, batch_size=500, verbose=0)
    # accuracy on (up to 2,000 of) the training images, inference mode
    n = min(2000, len(x_train))
    _, train_acc = model.evaluate(x_train[:n].astype("float32"), y_train[:n],
                                  batch_size=500, verbose=0)
    diverged, _, reason = agc.verdict(cb.losses, total)
    extra = probe(model) if probe else {}
    return {
        "arch": arch, "batch_size": batch_size, "base_lr": base_lr,
        "lr": lr, "clipping": "off" if lam is None else lam,
        "seed": seed, "n_train": len(x_train), "epochs": epochs,
        "steps": total, "steps_run": len(cb.losses),
        "params": model.count_params(),
        "last_epoch_fit_acc": float(hist.history["accuracy"][-1]),
        "train_acc": float(train_acc),
        "final_loss": float(np.mean(cb.losses[-max(1, total // 5):]))
        if cb.losses else float("nan"),
        "test_loss": float(test_loss), "test_acc": float(test_acc),
        "diverged": diverged, "reason": reason,
        "train_seconds": round(train_s, 1), **extra,
    }


def write_csv(rows, path):
    fields = list(rows[0].keys())
    for r in rows:
        fields += [k for k in r if k not in fields]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow(r)


def read_csv(path):
    if not pathlib.Path(path).exists():
        raise SystemExit(f"{path} does not exist: run the study first "
                         "(without --plot-only)")
    parse = agc.parse_csv_value
    with open(path) as f:
        return [{k: parse(v) for k, v in row.items()}
                for row in csv.DictReader(f)]


# Settings a resumed study must share with the rows already in its CSV.
RESUME_SETTINGS = ("n_train", "n_test", "epochs", "batch_size", "base_lr",
                   "skip_gains_clipped")


def run_all(name, jobs, data_for, out_dir=OUT_DIR, resume_key=None,
            max_minutes=None):
    """Runs `jobs` (dicts of `train` kwargs plus "n_train") in order,
    printing each result, rewriting `<name>.csv` after each run (so a
    cut-off study keeps what finished). Returns the rows.

    resume_key: column names (from a job's "extra" or `train`'s own, e.g.
    `("arm", "seed")`) naming a run; with it the study is resumable: the
    rows already in `<name>.csv` are kept, a job whose key is there is
    skipped, and a job whose `RESUME_SETTINGS` differ from the CSV's is
    refused (start over by deleting the CSV). Each new row gets
    `wall_seconds` (build + fit + evaluation). max_minutes: launch no new
    run after this many minutes (the running one finishes)."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.csv"
    rows = read_csv(path) if resume_key and path.exists() else []
    done = {tuple(str(r.get(k)) for k in resume_key) for r in rows}
    t0 = time.time()
    ran = 0
    for job in jobs:
        job = dict(job)
        extra = job.pop("extra", {})
        if resume_key:
            known = {**extra, **job, **job.get("model_kwargs", {})}
            for r in rows:
                bad = [k for k in RESUME_SETTINGS
                       if k in r and k in known and r[k] != known[k]]
                if bad:
                    raise SystemExit(
                        f"{path} was made with "
                        + ", ".join(f"{k}={r[k]}" for k in bad)
                        + " (this run: "
                        + ", ".join(f"{k}={known[k]}" for k in bad)
                        + "); use the same settings to resume, or delete "
                        "the CSV (or pass another --out-dir) to start over")
            if tuple(str(known.get(k)) for k in resume_key) in done:
                continue
        if max_minutes is not None and time.time() - t0 > 60 * max_minutes:
            print(f"{name}: --max-minutes {max_minutes} reached; "
                  "rerun to resume", flush=True)
            break
        start = time.time()
        data = data_for(job.pop("n_train"))
        row = {**extra, **train(data, **job)}
        if "model_kwargs" in job:
            row.update({k: v for k, v in job["model_kwargs"].items()})
        if resume_key:
            row["wall_seconds"] = round(time.time() - start, 1)
        rows.append(row)
        ran += 1
        print(json.dumps(row), flush=True)
        write_csv(rows, path)
    print(f"{name}: {ran} runs, {time.time() - t0:.0f}s", flush=True)
    return rows


def cached_data(n_test=2000, per_class=(2000, 200)):
    cache = {}

    def data_for(n_train):
        if n_train not in cache:
            cache[n_train] = load_data(n_train, n_test,
                                       per_class=tuple(per_class))
        return cache[n_train]
    return data_for


def study_parser(doc, *, seeds, n_train, epochs, batch_size, base_lr):
    """The command line the resumable studies share (study_capacity,
    study_dropout_scaling): training settings with the study's defaults,
    `--out-dir`, `--plot-only`, `--max-minutes`, and the size of the
    extracted CIFAR-10 subset (`--per-class`, tests only)."""
    p = argparse.ArgumentParser(
        description=doc.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    p.add_argument("--seeds", type=int, nargs="+", default=list(seeds))
    p.add_argument("--n-train", type=int, default=n_train)
    p.add_argument("--n-test", type=int, default=2000,
                   help="held-out images (of the 2,000 extracted)")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--base-lr", type=float, default=base_lr,
                   help="lr = base_lr * batch_size / 256")
    p.add_argument("--clip-skip-gains", action="store_true",
                   help="the package's default AGC exactly (lambda 0.01, "
                        "only the classifier kernel unclipped); default: the "
                        "zero-initialised skip gains are unclipped too "
                        "(study_skip_gain: clipped, they stay ~0 in short "
                        "runs and switch every residual branch off)")
    p.add_argument("--per-class", type=int, nargs=2, default=[2000, 200],
                   metavar=("TRAIN", "TEST"),
                   help="images per class of the extracted subset "
                        "(the studies: 2000 200)")
    p.add_argument("--out-dir", type=pathlib.Path, default=OUT_DIR)
    p.add_argument("--max-minutes", type=float, default=None,
                   help="start no new run after this many minutes; rerun "
                        "to resume (runs in the CSV are skipped)")
    p.add_argument("--plot-only", action="store_true",
                   help="redraw the PNG (and print the summary) from the CSV")
    return p


def train_settings(args):
    """The `train`/`run_all` job entries from `study_parser`'s args: AGC
    lambda 0.01 (the package's default for NFNets), the classifier kernel
    and, unless `--clip-skip-gains`, the skip gains unclipped."""
    from experiments import study_skip_gain  # pylint: disable=import-outside-toplevel
    return dict(batch_size=args.batch_size, base_lr=args.base_lr,
                epochs=args.epochs, n_train=args.n_train, clipping="default",
                agc_exclude=None if args.clip_skip_gains
                else study_skip_gain.exclude_linear_and_skip_gains)


def train_extra(args):
    """The CSV columns `study_parser`'s settings add to each row."""
    return {"n_test": args.n_test,
            "skip_gains_clipped": bool(args.clip_skip_gains)}


def nfnet_probe(model):
    """FLOPs per image (`keras_nfnets.flops`) and the skip gains after
    training (mean |skip_gain| and each block's)."""
    from keras_nfnets import flops  # pylint: disable=import-outside-toplevel
    from experiments import study_skip_gain  # pylint: disable=import-outside-toplevel
    return {"flops": flops.count_flops(model), **study_skip_gain.probe(model)}


# -------------------------------------------------------- statistics

def binomial_se(acc, n):
    """Binomial standard error of one accuracy measured on `n` images."""
    return math.sqrt(max(acc * (1 - acc), 0.0) / n)


def arm_stats(rows, key="test_acc"):
    """mean, sample sd (0 for one seed), min, max and count of `key`."""
    v = np.asarray([r[key] for r in rows], np.float64)
    return {"mean": float(v.mean()),
            "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": len(v)}


def difference(rows_a, rows_b, n_test, key="test_acc"):
    """Mean of `rows_a` minus mean of `rows_b`, with two standard errors:
    `binomial_se` (of one run each: the test-set sampling error, which the
    seeds share) and `seed_se` (from the seed spread, sd/sqrt(k) each)."""
    a, b = arm_stats(rows_a, key), arm_stats(rows_b, key)
    return {"diff": a["mean"] - b["mean"],
            "binomial_se": math.sqrt(binomial_se(a["mean"], n_test) ** 2
                                     + binomial_se(b["mean"], n_test) ** 2),
            "seed_se": math.sqrt(a["sd"] ** 2 / a["n"]
                                 + b["sd"] ** 2 / b["n"])}


def plt():
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot  # pylint: disable=import-outside-toplevel
    return pyplot


def isfinite(v):
    return isinstance(v, (int, float)) and math.isfinite(v)


def wall_time_line(rows):
    """The summary line with the runs' wall time (build + fit + evaluation)."""
    seconds = [r["wall_seconds"] for r in rows]
    return (f"* {len(rows)} runs, wall time (build + fit + evaluation) "
            f"{sum(seconds):.0f} s in all, {min(seconds):.0f}-"
            f"{max(seconds):.0f} s per run")
