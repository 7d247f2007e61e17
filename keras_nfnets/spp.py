"""Signal-propagation plots (SPPs): how activations scale with depth.

DeepMind designed the normalizer-free networks by looking at three numbers
per residual block, measured on a batch of N(0, 1) inputs at initialisation
(Brock, De, Smith 2021, "Characterizing signal propagation to close the
performance gap in unnormalized ResNets"):

* `avg_sq_mean_i`: the channel-averaged squared mean of the activations,
* `avg_var_i`: the channel-averaged variance of the activations,

after the stem (`i = 0`) and after block `i` (`i = 1 ... N`), and

* `res_avg_var_{i-1}`: the average channel variance of block `i`'s residual
  branch (before stochastic depth and the skip gain).

`signal_propagation(model, inputs)` returns them, with DeepMind's keys, for
any model this package builds (its `NFBlock`s report their residual branch)
and for a plain Keras ResNet with `Add` layers (e.g.
`keras.applications.ResNet50V2`), where the metrics are taken after each
residual `Add` and the residual branch is the `Add` input with the longer
path from the block's input. `plot_signal_propagation` draws them.

Command line (models at initialisation, N(0, 1) inputs):

    python -m keras_nfnets.spp --model NFResNet50 --compare resnet50v2 \\
        --out spp.png
"""

import argparse

import numpy as np

import keras
from keras import ops

from keras_nfnets import compat
from keras_nfnets.layers import NFBlock

METRICS = ("avg_sq_mean", "avg_var", "res_avg_var")
TITLES = {"avg_sq_mean": "Average channel squared mean",
          "avg_var": "Average channel variance",
          "res_avg_var": "Residual average channel variance"}


def signal_metrics(x, i):
    """DeepMind's `base.signal_metrics` of an NHWC activation `x`."""
    x = np.asarray(ops.convert_to_numpy(x), dtype=np.float64)
    return {f"avg_sq_mean_{i}": float(np.mean(np.mean(x, axis=(0, 1, 2)) ** 2)),
            f"avg_var_{i}": float(np.mean(np.var(x, axis=(0, 1, 2))))}


def _branch_variance(x):
    x = np.asarray(ops.convert_to_numpy(x), dtype=np.float64)
    return float(np.mean(np.var(x, axis=(0, 1, 2))))


def _producer(tensor):
    return compat.producing_layer(tensor)


def _parents(layer):
    inputs = layer.input
    if isinstance(inputs, (list, tuple)):
        return list(inputs)
    return [] if inputs is None else [inputs]


def _ancestors(tensor):
    """`{id(tensor): (distance, tensor)}` of `tensor` and its ancestors."""
    found = {id(tensor): (0, tensor)}
    frontier = [tensor]
    while frontier:
        t = frontier.pop()
        dist = found[id(t)][0]
        layer = _producer(t)
        if isinstance(layer, keras.layers.InputLayer):
            continue
        for parent in _parents(layer):
            if id(parent) not in found or found[id(parent)][0] > dist + 1:
                found[id(parent)] = (dist + 1, parent)
                frontier.append(parent)
    return found


def _split_add(add):
    """(block input, residual-branch tensor) of a residual `Add` layer."""
    a, b = _parents(add)[:2]
    up_a, up_b = _ancestors(a), _ancestors(b)
    common = set(up_a) & set(up_b)
    if not common:
        raise ValueError(f"Layer {add.name} adds two unrelated tensors.")
    source = min(common, key=lambda k: up_a[k][0] + up_b[k][0])
    residual = a if up_a[source][0] > up_b[source][0] else b
    return up_a[source][1], residual


def _stem_output(block_input):
    """Walks back over the first block's pre-activation (BN, activation)."""
    t = block_input
    while isinstance(_producer(t), (keras.layers.BatchNormalization,
                                    keras.layers.Activation,
                                    keras.layers.ReLU)):
        t = _parents(_producer(t))[0]
    return t


def _nf_metrics(model, blocks, inputs, training):
    chained = all(b.input is a.output for a, b in zip(blocks, blocks[1:]))
    feeds = [blocks[0].input] if chained else [b.input for b in blocks]
    feeds = keras.Model(model.inputs, feeds)(inputs, training=training)
    if not isinstance(feeds, (list, tuple)):
        feeds = [feeds]
    metrics = signal_metrics(feeds[0], 0)
    x = feeds[0]
    for i, block in enumerate(blocks):
        x, res_var = block.call_with_metrics(
            x if chained else feeds[i], training=training)
        metrics.update(signal_metrics(x, i + 1))
        metrics[f"res_avg_var_{i}"] = float(ops.convert_to_numpy(res_var))
    return metrics


def _add_metrics(model, adds, inputs, training):
    stem = _stem_output(_split_add(adds[0])[0])
    residuals = [_split_add(add)[1] for add in adds]
    outputs = [stem] + [add.output for add in adds] + residuals
    values = keras.Model(model.inputs, outputs)(inputs, training=training)
    n = len(adds)
    metrics = signal_metrics(values[0], 0)
    for i in range(n):
        metrics.update(signal_metrics(values[1 + i], i + 1))
        metrics[f"res_avg_var_{i}"] = _branch_variance(values[1 + n + i])
    return metrics


def signal_propagation(model, inputs, training=None):
    """DeepMind's signal-propagation metrics of `model` on `inputs`.

    Args:
        model: a model built by keras_nfnets (any family), or a functional
            Keras ResNet whose residual connections are `Add` layers.
        inputs: a batch (NHWC); DeepMind's SPPs use N(0, 1) inputs.
        training: the mode of the forward pass. Default: training mode (batch
            statistics) for models with BatchNormalization, as in the SPP
            paper, inference mode otherwise (no stochastic depth). The
            model's BatchNorm moving statistics are left unchanged.

    Returns:
        A dict of floats with DeepMind's keys: `avg_sq_mean_i` and
        `avg_var_i` for i = 0 (after the stem) ... N (after block N), and
        `res_avg_var_i` for i = 0 ... N - 1 (block i + 1's residual branch).

    Example:
    >>> model = keras_nfnets.NFResNet50(include_top=False,
    ...                                 input_shape=(64, 64, 3))
    >>> m = signal_propagation(model, np.random.normal(size=(4, 64, 64, 3)))
    >>> m["avg_var_16"], m["res_avg_var_15"]
    """
    blocks = [layer for layer in model.layers if isinstance(layer, NFBlock)]
    adds = [layer for layer in model.layers
            if isinstance(layer, keras.layers.Add)]
    if not blocks and not adds:
        raise ValueError(
            f"Model {model.name!r} has no residual blocks: it has neither "
            "keras_nfnets NFBlocks nor keras.layers.Add layers.")
    has_bn = any(isinstance(layer, keras.layers.BatchNormalization)
                 for layer in _all_layers(model))
    if training is None:
        training = has_bn
    inputs = ops.convert_to_tensor(inputs, dtype=model.inputs[0].dtype)
    saved = ([ops.convert_to_numpy(v) for v in model.non_trainable_variables]
             if training else [])
    try:
        if blocks:
            return _nf_metrics(model, blocks, inputs, training)
        return _add_metrics(model, adds, inputs, training)
    finally:
        for var, value in zip(model.non_trainable_variables if training
                              else [], saved):
            var.assign(value)


def _all_layers(model):
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _all_layers(layer)


def as_arrays(metrics):
    """`{"avg_sq_mean": array, "avg_var": array, "res_avg_var": array}` from
    a `signal_propagation` dict (arrays indexed by position)."""
    out = {}
    for name in METRICS:
        prefix = name + "_"
        keys = [k for k in metrics if k.startswith(prefix)
                and k[len(prefix):].isdigit()]
        out[name] = np.array([metrics[f"{prefix}{i}"]
                              for i in range(len(keys))])
    return out


def plot_signal_propagation(metrics, out=None, title=None, log_scale=False):
    """Draws an SPP: the three metrics against depth, one line per model.

    Args:
        metrics: a `signal_propagation` dict, or `{label: dict}` for several
            models on the same axes.
        out: optional path; the figure is saved there (PNG, PDF, ...).
        title: optional figure title.
        log_scale: logarithmic y axes.

    Returns:
        The `matplotlib.figure.Figure`.

    Example:
    >>> fig = plot_signal_propagation({"NF-ResNet-50": m1, "ResNet50V2": m2},
    ...                               out="spp.png")
    """
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

    if metrics and all(isinstance(v, dict) for v in metrics.values()):
        series = metrics
    else:
        series = {None: metrics}
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    axes = fig.subplots(1, 3)
    for label, values in series.items():
        arrays = as_arrays(values)
        for ax, name in zip(axes, METRICS):
            y = arrays[name]
            # res_avg_var_i belongs to block i + 1.
            x = np.arange(len(y)) + (1 if name == "res_avg_var" else 0)
            ax.plot(x, y, marker=".", label=label)
    for ax, name in zip(axes, METRICS):
        ax.set_title(TITLES[name])
        ax.set_xlabel("Residual block (0: after the stem)")
        ax.grid(alpha=0.3)
        if log_scale:
            ax.set_yscale("log")
    if None not in series:
        axes[0].legend()
    if title:
        fig.suptitle(title)
    if out is not None:
        fig.savefig(out, dpi=100)
    return fig


# ---------------------------------------------------------------------------
# Command line.

def _build(name, image_size, skip_gain):
    """A package constructor (`NFResNet50`, `NFNetF0`, ...) or a
    `keras.applications` model (`resnet50v2`, ...), at initialisation."""
    import keras_nfnets  # pylint: disable=import-outside-toplevel

    shape = (image_size, image_size, 3)
    constructor = getattr(keras_nfnets, name, None)
    if callable(constructor) and name[:1].isupper():
        model = constructor(weights=None, include_top=False,
                            include_preprocessing=False, input_shape=shape)
        if skip_gain is not None:
            for layer in model.layers:
                # timm's L-family blocks have no skip gain (skip_gain=False).
                if isinstance(layer, NFBlock) and layer.use_skip_gain:
                    layer.skip_gain.assign(skip_gain)
        return model
    apps = {k.lower(): v for k, v in vars(keras.applications).items()
            if callable(v) and k[:1].isupper()}
    if name.lower() not in apps:
        raise SystemExit(
            f"Unknown model {name!r}: give a keras_nfnets constructor "
            "(NFResNet50, NFRegNetB0, NFNetF0, ...) or a keras.applications "
            "model (resnet50v2, resnet50, ...).")
    return apps[name.lower()](weights=None, include_top=False,
                              input_shape=shape)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_nfnets.spp",
        description="Signal-propagation plot of models at initialisation on "
        "N(0, 1) inputs.")
    parser.add_argument("--model", default="NFResNet50",
                        help="keras_nfnets constructor (default NFResNet50)")
    parser.add_argument("--compare", default=None,
                        help="a second model, e.g. resnet50v2 (a BatchNorm "
                        "ResNet from keras.applications) or NFRegNetB0")
    parser.add_argument("--out", default="spp.png", help="output image")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--skip-gain", default="1.0",
        help="skip gain of the NF blocks (default 1.0, as in the SPP paper; "
        "'init' keeps the zero initialisation, which makes every block the "
        "identity)")
    parser.add_argument("--log", action="store_true", help="log y axes")
    args = parser.parse_args(argv)

    skip_gain = None if args.skip_gain == "init" else float(args.skip_gain)
    inputs = np.random.default_rng(args.seed).standard_normal(
        (args.batch_size, args.image_size, args.image_size, 3)).astype(
            "float32")
    results = {}
    for name in filter(None, (args.model, args.compare)):
        model = _build(name, args.image_size, skip_gain)
        has_nf = any(isinstance(layer, NFBlock) and layer.use_skip_gain
                     for layer in model.layers)
        label = model.name
        if has_nf and skip_gain is not None:
            label += f" (skip gain {skip_gain:g})"
        results[label] = signal_propagation(model, inputs)
        del model
        keras.backend.clear_session()
    plot_signal_propagation(
        results, out=args.out, log_scale=args.log,
        title=f"Signal propagation at initialisation, N(0, 1) inputs "
        f"{args.batch_size}x{args.image_size}x{args.image_size}x3")
    for label, values in results.items():
        arrays = as_arrays(values)
        print(f"{label}: {len(arrays['res_avg_var'])} blocks, final "
              f"avg_var {arrays['avg_var'][-1]:.3g}, final avg_sq_mean "
              f"{arrays['avg_sq_mean'][-1]:.3g}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
