"""The converter: DeepMind checkpoints and timm state dicts to Keras
weights files, and Keras weights files back to DeepMind's format.

    python -m keras_nfnets.weights F0_haiku.npz nfnet_f0.weights.h5
    python -m keras_nfnets.weights model.safetensors eca_l0.weights.h5
    python -m keras_nfnets.weights nfnet_f0.weights.h5 F0_haiku.npz

(`python -m keras_nfnets.convert` is the same program.) The direction
follows the input file: a DeepMind checkpoint (a pickle, read with the
restricted reader, nothing executed) or a timm `.safetensors` becomes a
Keras `.weights.h5`; a `.weights.h5` becomes a DeepMind-format pickle of
`{module: {param: ndarray}}` that DeepMind's code and `weights=` read.
Files with NaN or infinite values are refused both ways.

The variant is detected from the file (DeepMind: module count and
classifier width, from the variant table; timm: the layout's blocks per
stage, attention, skip gains and stem; `.weights.h5`: block count and
classifier width); `--variant F1` forces one and `--config my_config.json`
gives a custom architecture in DeepMind's vocabulary. `--no-preprocessing`
matches models built with `include_preprocessing=False` (Keras weights
files are positional).
"""

import argparse
import os
import pickle
import sys

import h5py

from keras_nfnets import applications, presets, variants
from keras_nfnets.weights import deepmind, keras_files, load, timm
from keras_nfnets.weights.errors import CheckpointError

_DM_ROOT = "NFNet"


def _final_width(cfg):
    """The classifier's input width of an F-series config."""
    return int(cfg.final_conv_ch or cfg.final_conv_mult * cfg.width[-1])


def _f_series():
    """DeepMind's F-series names in the variant table, base and '+'."""
    return [v for name in deepmind.published_variants()
            for v in (name, name + "+") if v in variants.NFNET_VARIANTS]


def detect_variant(params):
    """`(variant, classes)` of a DeepMind NFNet checkpoint's params: the
    variant whose module count and classifier input width it has.

    Raises:
        ValueError: when the file is not an F-series layout.
    """
    count = len(params)
    linear = params.get(f"{_DM_ROOT}/~/linear", {}).get("w")
    if linear is not None and linear.ndim == 2:
        for name in _f_series():
            cfg = variants.get_config(name)
            if deepmind.module_count(cfg) == count and \
                    _final_width(cfg) == linear.shape[0]:
                return name, int(linear.shape[1])
    shape = None if linear is None else tuple(linear.shape)
    raise ValueError(
        f"Cannot detect the NFNet variant: {count} modules and classifier "
        f"{shape} match no F-series layout of the variant table (F0: "
        f"{deepmind.module_count('F0')} modules, classifier "
        f"({_final_width(variants.get_config('F0'))}, classes)). Pass "
        "--variant or --config.")


def _detect_keras_file(path):
    """`(variant, classes, include_preprocessing)` from a `.weights.h5`
    saved from an F-series model with its top."""
    with h5py.File(path, "r") as f:
        layers = f.get("layers")
        names = list(layers.keys()) if layers is not None else []
        blocks = sum(1 for k in names if k.startswith("nf_block"))
        preprocessing = "normalization" in names
        try:
            kernel_shape = tuple(f["layers/dense/vars/0"].shape)
        except KeyError:
            kernel_shape = None
    for name in _f_series():
        cfg = variants.get_config(name)
        if kernel_shape is not None and sum(cfg.depth) == blocks and \
                _final_width(cfg) == kernel_shape[0]:
            return name, kernel_shape[1], preprocessing
    raise ValueError(
        f"Cannot detect the NFNet variant of {path} ({blocks} blocks, "
        f"classifier {kernel_shape}): pass --variant or --config, and "
        "--classes.")


def _build(config, classes, include_preprocessing):
    return applications.NFNet(
        config=config, classes=classes, classifier_activation=None,
        include_preprocessing=include_preprocessing, name="nfnet_convert")


def save_deepmind_checkpoint(model, path, root=_DM_ROOT):
    """Writes `model`'s weights as DeepMind's `{module: {param: ndarray}}`.

    A plain pickle (protocol 4) of numpy arrays, the same layout as
    DeepMind's `F*_haiku.npz`, readable by `load_deepmind_checkpoint`.
    Refuses NaN or infinite values (`NonFiniteWeightsError`).

    Example:
    >>> save_deepmind_checkpoint(keras_nfnets.NFNetF0(), "F0_haiku.npz")
    """
    try:
        params = deepmind.to_params(model, root)
    except CheckpointError as e:
        raise type(e)(f"{e} ({path})") from None
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        pickle.dump(params, f, protocol=4)
    os.replace(tmp, path)
    return params


def deepmind_to_keras(src, dst, variant=None, config=None,
                      include_preprocessing=True):
    """DeepMind checkpoint `src` -> Keras weights file `dst`. Returns the
    model (variant detected unless `variant` or `config` is given)."""
    params = deepmind.load_deepmind_checkpoint(src)
    linear = params.get(f"{_DM_ROOT}/~/linear", {}).get("w")
    if config is None and variant is None:
        variant, classes = detect_variant(params)
    else:
        if linear is None or linear.ndim != 2:
            raise ValueError(f"{src} has no '{_DM_ROOT}/~/linear' "
                             "classifier to take the class count from.")
        classes = int(linear.shape[1])
    model = _build(config or variant, classes, include_preprocessing)
    deepmind.assign_deepmind_weights(model, params, source=str(src))
    # Free-space check, temporary name, atomic rename: a full disk is an
    # OSError naming the space needed, never a partial file.
    keras_files.save_weights_safely(model, dst)
    return model


def detect_timm_architecture(state):
    """The constructor name (`"ECANFNetL0"`) of a timm state dict, from its
    layout (`presets.TIMM_ARCHITECTURES`)."""
    sig = timm.signature(list(state))
    found = [ctor for ctor, *s in presets.TIMM_ARCHITECTURES.values()
             if tuple(s) == tuple(sig)]
    if len(found) != 1:
        raise ValueError(
            f"Cannot detect the architecture of this timm state dict "
            f"(blocks per stage {sig[0]}, attention {sig[1]}, skip gains "
            f"{sig[2]}, stem {sig[3]}): it matches "
            f"{found or 'none'} of timm's layouts "
            f"{sorted(presets.TIMM_ARCHITECTURES)}. Pass --variant or "
            "--config.")
    return found[0]


def timm_to_keras(src, dst, variant=None, config=None,
                  include_preprocessing=True):
    """timm state dict `src` (`.safetensors`) -> Keras weights file `dst`.
    Returns the model (architecture detected unless `variant` or `config`
    is given)."""
    state = timm.read_safetensors(src)
    head = state.get("head.fc.weight")
    if head is None or head.ndim != 2:
        raise ValueError(f"{src} has no 'head.fc.weight' classifier to "
                         "take the class count from.")
    kwargs = dict(weights=None, classes=int(head.shape[0]),
                  classifier_activation=None,
                  include_preprocessing=include_preprocessing)
    if config is None and variant is None:
        ctor = getattr(applications, detect_timm_architecture(state))
        model = ctor(**kwargs)
    else:
        model = applications.NFNet(config=config or variant, **kwargs)
    load.load_weights(model, src)
    keras_files.save_weights_safely(model, dst)
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


def main(argv=None, prog="python -m keras_nfnets.weights"):
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Convert DeepMind NFNet checkpoints (F0_haiku.npz) and "
                    "timm state dicts (model.safetensors) to Keras "
                    ".weights.h5 files, and Keras files to DeepMind's "
                    "format.")
    parser.add_argument("src", help="a DeepMind *_haiku.npz, a timm "
                                    ".safetensors or a Keras .weights.h5")
    parser.add_argument("dst", help="output: .weights.h5 for a DeepMind or "
                                    "timm input, a DeepMind pickle otherwise")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--variant", help="force a variant: F0 ... F7, F0+, "
                                         "ECA-L0 ...")
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
        if not os.path.isfile(args.src):
            raise ValueError(f"{args.src}: no such file.")
        to_keras = (deepmind_to_keras if deepmind.is_deepmind_checkpoint(
            args.src) else timm_to_keras if timm.is_safetensors(args.src)
            else None)
        if to_keras is not None:
            if not args.dst.endswith(".weights.h5"):
                parser.error("the Keras output must end in .weights.h5")
            model = to_keras(
                args.src, args.dst, variant=args.variant, config=args.config,
                include_preprocessing=prep is None)
            print(f"Wrote {args.dst} ({model.count_params():,} parameters)")
        else:
            if not keras_files.is_hdf5(args.src):
                raise ValueError(
                    f"{args.src} is neither a DeepMind checkpoint (a "
                    "pickle), a timm state dict (.safetensors) nor a Keras "
                    ".weights.h5 file.")
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
