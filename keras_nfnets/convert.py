"""Convert between DeepMind's NFNet checkpoints and Keras weights files.

    python -m keras_nfnets.convert F0_haiku.npz nfnet_f0.weights.h5
    python -m keras_nfnets.convert nfnet_f0.weights.h5 F0_haiku.npz

The direction follows the input file: a DeepMind checkpoint (a pickle,
read with the restricted loader, nothing executed) becomes a Keras
`.weights.h5`; a `.weights.h5` becomes a DeepMind-format pickle of
`{module: {param: ndarray}}` that DeepMind's code and `weights=` read.

The variant is detected from the file (module count, classifier width and
class count; for `.weights.h5`, the block count); `--variant F1` forces one
and `--config my_config.json` gives a custom architecture in DeepMind's
vocabulary. `--no-preprocessing` matches models built with
`include_preprocessing=False` (Keras weights files are positional).
"""

import argparse
import os
import pickle
import sys

import numpy as np

from keras_nfnets import weights as nf_weights

_DM_ROOT = "NFNet"
# Classifier input width of the base and '+' F-series (2 * final width).
_FINAL_WIDTH = {3072: "", 4096: "+"}


def detect_variant(params):
    """`(variant, classes)` of a DeepMind NFNet checkpoint's params.

    The F-n layout has 84*(n+1)+10 modules; the classifier `linear/w` is
    (3072, classes) for the base series and (4096, classes) for '+'.

    Raises:
        ValueError: when the file is not an F-series layout.
    """
    from keras_nfnets import pretrained  # pylint: disable=import-outside-toplevel
    count = len(params)
    linear = params.get(f"{_DM_ROOT}/~/linear", {}).get("w")
    n_variant = pretrained.variant_for_module_count(count)
    if linear is None or linear.ndim != 2 or n_variant is None or (
            linear.shape[0] not in _FINAL_WIDTH):
        shape = None if linear is None else tuple(linear.shape)
        raise ValueError(
            f"Cannot detect the NFNet variant: {count} modules and "
            f"classifier {shape} match no F0-F7(+) layout (84*(n+1)+10 "
            "modules, classifier (3072|4096, classes)). Pass --variant or "
            "--config.")
    return n_variant + _FINAL_WIDTH[linear.shape[0]], int(linear.shape[1])


def _detect_keras_file(path):
    """`(variant, classes, include_preprocessing)` from a `.weights.h5`
    saved from an F-series model with its top."""
    import h5py  # pylint: disable=import-outside-toplevel
    with h5py.File(path, "r") as f:
        layers = f.get("layers")
        names = list(layers.keys()) if layers is not None else []
        blocks = sum(1 for k in names if k.startswith("nf_block"))
        preprocessing = "normalization" in names
        try:
            kernel_shape = tuple(f["layers/dense/vars/0"].shape)
        except KeyError:
            kernel_shape = None
    n, rem = divmod(blocks, 12)
    if kernel_shape is None or rem or not n or (
            kernel_shape[0] not in _FINAL_WIDTH):
        raise ValueError(
            f"Cannot detect the NFNet variant of {path} ({blocks} blocks, "
            f"classifier {kernel_shape}): pass --variant or --config, and "
            "--classes.")
    return (f"F{n - 1}{_FINAL_WIDTH[kernel_shape[0]]}", kernel_shape[1],
            preprocessing)


def _build(config, classes, include_preprocessing):
    from keras_nfnets import applications  # pylint: disable=import-outside-toplevel
    return applications.NFNet(
        config=config, classes=classes, classifier_activation=None,
        include_preprocessing=include_preprocessing,
        name="nfnet_convert")


def save_deepmind_checkpoint(model, path, root=_DM_ROOT):
    """Writes `model`'s weights as DeepMind's `{module: {param: ndarray}}`.

    A plain pickle (protocol 4) of numpy arrays, the same layout as
    DeepMind's `F*_haiku.npz`, readable by `load_deepmind_checkpoint`.
    """
    params = {module: {p: np.asarray(v.numpy() if hasattr(v, "numpy")
                                     else v)
                       for p, v in group.items()}
              for module, group in
              nf_weights.keras_to_deepmind(model, root).items()}
    for module, group in params.items():
        for p, value in group.items():
            if not np.all(np.isfinite(value)):
                raise nf_weights.CheckpointError(
                    f"{module}/{p} holds NaN or infinite values; refusing to "
                    f"write them to {path}.")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        pickle.dump(params, f, protocol=4)
    os.replace(tmp, path)
    return params


def _pretrained():
    from keras_nfnets import pretrained  # pylint: disable=import-outside-toplevel
    return pretrained


def deepmind_to_keras(src, dst, variant=None, config=None,
                      include_preprocessing=True):
    """DeepMind checkpoint `src` -> Keras weights file `dst`. Returns the
    model (variant detected unless `variant` or `config` is given)."""
    params = nf_weights.load_deepmind_checkpoint(src)
    linear = params.get(f"{_DM_ROOT}/~/linear", {}).get("w")
    if config is None and variant is None:
        variant, classes = detect_variant(params)
    else:
        if linear is None or linear.ndim != 2:
            raise ValueError(f"{src} has no '{_DM_ROOT}/~/linear' "
                             "classifier to take the class count from.")
        classes = int(linear.shape[1])
    model = _build(config or variant, classes, include_preprocessing)
    nf_weights.assign_deepmind_weights(model, params, source=str(src))
    # Free-space check, temporary name, atomic rename: a full disk is an
    # OSError naming the space needed, never a partial file.
    _pretrained().save_weights_safely(model, os.fspath(dst))
    return model


def keras_to_deepmind(src, dst, variant=None, config=None, classes=None,
                      include_preprocessing=None):
    """Keras weights file `src` -> DeepMind-format pickle `dst`. Returns
    the params written."""
    if config is None and variant is None:
        variant, detected, prep = _detect_keras_file(src)
        classes = classes or detected
        include_preprocessing = (prep if include_preprocessing is None
                                 else include_preprocessing)
    if classes is None:
        raise ValueError("Pass --classes with --variant/--config when "
                         "converting a Keras weights file.")
    model = _build(config or variant, classes,
                   True if include_preprocessing is None
                   else include_preprocessing)
    model.load_weights(os.fspath(src))
    return save_deepmind_checkpoint(model, dst)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_nfnets.convert",
        description="Convert DeepMind NFNet checkpoints (F0_haiku.npz) to "
                    "Keras .weights.h5 files and back.")
    parser.add_argument("src", help="a DeepMind *_haiku.npz or a Keras "
                                    ".weights.h5 file")
    parser.add_argument("dst", help="output: .weights.h5 for a DeepMind "
                                    "input, a DeepMind pickle otherwise")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--variant", help="force a variant: F0 ... F7, F0+")
    group.add_argument("--config", help="JSON config in DeepMind's "
                                        "vocabulary, for custom NFNets")
    parser.add_argument("--classes", type=int,
                        help="classifier width (Keras -> DeepMind with "
                             "--variant/--config)")
    parser.add_argument("--no-preprocessing", action="store_true",
                        help="the Keras file is from a model built with "
                             "include_preprocessing=False")
    args = parser.parse_args(argv)
    prep = False if args.no_preprocessing else None
    try:
        if nf_weights.is_deepmind_checkpoint(args.src):
            if not args.dst.endswith(".weights.h5"):
                parser.error("the Keras output must end in .weights.h5")
            model = deepmind_to_keras(
                args.src, args.dst, variant=args.variant, config=args.config,
                include_preprocessing=prep is None)
            print(f"Wrote {args.dst} ({model.count_params():,} parameters)")
        else:
            params = keras_to_deepmind(
                args.src, args.dst, variant=args.variant, config=args.config,
                classes=args.classes, include_preprocessing=prep)
            print(f"Wrote {args.dst} ({len(params)} modules)")
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
