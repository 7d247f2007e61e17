"""Shared pieces of the issue-9 studies (`experiments.study_*`).

Data: the CIFAR-10 JPEG subset that `experiments.agc_stability` extracts,
decodes and caches (its `load_cifar`), class-balanced, 32x32, no
augmentation. Models: a small NF-ResNet (`keras_nfnets.NFResNet`), a Keras
BN-ResNet with the same blocks, depths and widths (BatchNorm + plain ReLU
instead of weight standardisation, scaled activations, beta/alpha and skip
gain), and the small NFNet of `agc_stability`. Training: `model.fit` only,
DeepMind's optimizer (`NFNetSGD`, Nesterov 0.9, weight decay 2e-5, linear
warmup + cosine), `lr = base_lr * batch / 256`.
"""

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


def load_data(n_train, n_test=2000, seed=0):
    """(x_train, y_train, x_test, y_test): `n_train` images drawn (fixed
    permutation) from the 20,000-image subset of agc_stability, and the
    first `n_test` of its 2,000 held-out test images (class-balanced)."""
    pathlib.Path(CACHE_DIR).mkdir(parents=True, exist_ok=True)
    x_tr, y_tr, x_te, y_te, _ = agc.load_cifar(
        agc.DEFAULT_TARBALL, CACHE_DIR, 2000, 200)
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


def nfnet(seed, drop_rate=None, stochdepth_rate=None):
    """The small NFNet of agc_stability (training/demo_data/nfnet_demo.json,
    dropout 0.1, no stochastic depth unless overridden)."""
    import keras_nfnets  # pylint: disable=import-outside-toplevel
    with open(NFNET_CONFIG) as f:
        cfg = json.load(f)
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
    parse = agc.parse_csv_value
    with open(path) as f:
        return [{k: parse(v) for k, v in row.items()}
                for row in csv.DictReader(f)]


def run_all(name, jobs, data_for, out_dir=OUT_DIR):
    """Runs `jobs` (dicts of `train` kwargs plus "n_train") in order,
    printing each result, rewriting `<name>.csv` after each run (so a
    cut-off study keeps what finished). Returns the rows."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    t0 = time.time()
    for job in jobs:
        job = dict(job)
        extra = job.pop("extra", {})
        data = data_for(job.pop("n_train"))
        row = {**extra, **train(data, **job)}
        if "model_kwargs" in job:
            row.update({k: v for k, v in job["model_kwargs"].items()})
        rows.append(row)
        print(json.dumps(row), flush=True)
        write_csv(rows, out_dir / f"{name}.csv")
    print(f"{name}: {len(rows)} runs, {time.time() - t0:.0f}s", flush=True)
    return rows


def cached_data():
    cache = {}

    def data_for(n_train):
        if n_train not in cache:
            cache[n_train] = load_data(n_train)
        return cache[n_train]
    return data_for


def plt():
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot  # pylint: disable=import-outside-toplevel
    return pyplot


def isfinite(v):
    return isinstance(v, (int, float)) and math.isfinite(v)
