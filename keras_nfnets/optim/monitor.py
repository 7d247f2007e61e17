"""`AGCMonitor`: what AGC did, per epoch and per group, in `fit`'s logs.

`AGC(optimizer, monitor=True)` sums, per variable and over steps, the
number of units it looked at, the number it clipped and the clip factors it
applied (optimizer variables, updated inside `update_step`, so they follow
the optimizer on every backend and are skipped with a non-finite step).
`AGCMonitor` reads them at the end of each epoch, groups them by where the
variable sits in the NFNet (`keras_nfnets.optim.groups`: stem, stage1 ...
stageN, skip_gain, head) and adds to the epoch's logs:

* `agc_clip_fraction` / `agc_clip_factor`: over all clipped variables;
* `agc_clip_fraction/<group>` / `agc_clip_factor/<group>`: per group,

the fraction of units clipped and the mean factor (1 = untouched) over the
epoch's steps. History, `CSVLogger` and `TensorBoard` (scalars) record them
when they come after the monitor in the callback list (Keras's History
always does); `histogram_dir` writes a TensorBoard histogram of the
per-variable clip fractions too (TensorFlow needed).
"""

import numpy as np

import keras

from keras_nfnets.optim import groups as nf_groups


def _agc_of(optimizer):
    from keras_nfnets.optim.agc import AGC  # pylint: disable=import-outside-toplevel
    seen = optimizer
    while seen is not None and not isinstance(seen, AGC):
        seen = getattr(seen, "inner_optimizer", None)
    if seen is None or not getattr(seen, "monitor", False):
        raise ValueError(
            "AGCMonitor needs an optimizer made by "
            "keras_nfnets.AGC(..., monitor=True); the model's optimizer is "
            f"{type(optimizer).__name__} "
            f"{'without monitor=True' if seen is not None else ''}".rstrip()
            + ".")
    return seen


def summarize(optimizer, model, previous=None):
    """The clip statistics of `optimizer` (an `AGC(..., monitor=True)`)
    since `previous` (an earlier return value's `"totals"`), grouped by
    `model`'s stages: `{"agc_clip_fraction": ..., "agc_clip_fraction/stem":
    ..., "totals": ...}`. Groups AGC never clipped (excluded variables) are
    left out.

    Example:
    >>> logs = summarize(model.optimizer, model)
    >>> logs["agc_clip_fraction/stage1"]
    0.25
    """
    agc = _agc_of(optimizer)
    if not agc.built:
        return {"totals": None}
    totals = np.stack([keras.ops.convert_to_numpy(v) for v in
                       (agc.agc_units, agc.agc_clipped, agc.agc_factor_sum)
                       ]).astype("float64")
    delta = totals if previous is None else totals - previous
    paths = [getattr(v, "path", v.name) for v in agc.agc_built_on.value]
    by_path = nf_groups.variable_groups(model)
    per_group = {}
    for path, column in zip(paths, delta.T):
        per_group.setdefault(by_path.get(path, "other"), []).append(column)
    out = {"totals": totals, "per_variable": dict(zip(paths, delta.T))}

    def add(suffix, columns):
        units, clipped, factors = np.sum(columns, axis=0)
        if units:
            out["agc_clip_fraction" + suffix] = float(clipped / units)
            out["agc_clip_factor" + suffix] = float(factors / units)

    add("", list(delta.T))
    for group in [*nf_groups.stage_names(model), "skip_gain", "other"]:
        if group in per_group:
            add("/" + group, per_group[group])
    return out


class AGCMonitor(keras.callbacks.Callback):
    """Logs AGC's clip fraction and mean clip factor per epoch, overall and
    per group (stem, stage1 ... stageN, skip_gain, head).

    Args:
        histogram_dir: optional TensorBoard log directory for a histogram
            of the per-variable clip fractions each epoch (needs
            TensorFlow).

    Put it before `CSVLogger` / `TensorBoard` in `callbacks` so that they
    see the new log entries.

    Example:
    ```python
    model = keras_nfnets.NFNetF0(weights=None, classes=10)
    opt = keras_nfnets.AGC(keras.optimizers.SGD(0.1), clipping=0.01,
                           monitor=True)
    model.compile(opt, "sparse_categorical_crossentropy", agc_clipping=None)
    history = model.fit(x, y, callbacks=[keras_nfnets.AGCMonitor(),
                                         keras.callbacks.CSVLogger("log.csv")])
    history.history["agc_clip_fraction/stage1"]
    keras_nfnets.plot_clip_fraction(history)
    ```
    """

    def __init__(self, histogram_dir=None):
        super().__init__()
        self.histogram_dir = histogram_dir
        self._previous = None
        self._writer = None

    def on_train_begin(self, logs=None):
        _agc_of(self.model.optimizer)
        self._previous = None

    def on_epoch_end(self, epoch, logs=None):
        summary = summarize(self.model.optimizer, self.model, self._previous)
        self._previous = summary.pop("totals")
        per_variable = summary.pop("per_variable", {})
        if logs is not None:
            logs.update(summary)
        if self.histogram_dir and per_variable:
            import tensorflow as tf  # pylint: disable=import-outside-toplevel
            if self._writer is None:
                self._writer = tf.summary.create_file_writer(
                    self.histogram_dir)
            fractions = [c / u for u, c, _ in per_variable.values() if u]
            with self._writer.as_default():
                tf.summary.histogram("agc_clip_fraction_per_variable",
                                     np.asarray(fractions), step=epoch)
            self._writer.flush()


def plot_clip_fraction(history, path=None, ax=None):
    """Draws AGC's clip fraction per group over training from a `History`
    (or its `.history` dict) that `AGCMonitor` filled; saves to `path` when
    given. Returns the matplotlib axes.

    Example:
    >>> ax = plot_clip_fraction(history, "clip_fraction.png")
    """
    import matplotlib  # pylint: disable=import-outside-toplevel
    if ax is None and path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    logs = getattr(history, "history", history)
    keys = [k for k in logs if k.startswith("agc_clip_fraction")]
    if not keys:
        raise ValueError("plot_clip_fraction: the history has no "
                         "agc_clip_fraction entries; train with "
                         "AGC(..., monitor=True) and AGCMonitor().")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for key in keys:
        label = key.split("/", 1)[1] if "/" in key else "all"
        ax.plot(np.arange(1, len(logs[key]) + 1), logs[key], label=label,
                linewidth=2.5 if label == "all" else 1.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("fraction of units clipped")
    ax.legend(fontsize=7)
    if path is not None:
        ax.figure.savefig(path, dpi=120, bbox_inches="tight")
    return ax
