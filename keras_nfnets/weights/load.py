"""The one dispatcher: `load_weights(model, weights)` for every source.

`weights` is `"imagenet"` (the published file of `variant`, from
`presets.PRESETS`, through `download.fetch`; timm's through
`huggingface_hub` when it is installed and no mirror is set), a Hugging
Face handle `"hf://owner/name[@revision]"`, or a path: a DeepMind
checkpoint (a pickle, `deepmind.py`), a timm state dict (`.safetensors`,
`timm.py`), a Keras `.weights.h5` or a `.keras` model (`keras_files.py`).
The constructors' `weights=` and the training program's `--weights` both
call it.

One load reads the file once, walks the model's weights once (`walk.py`),
checks each tensor once, then assigns; nothing is assigned when any check
fails. The result, a `walk.LoadStats`, says what was assigned and skipped.

Classifier: `skip_layers=("linear",)` leaves the model's classifier out
(a model without a top); `skip_classifier="auto"` (fine-tuning) keeps the
file's classifier only when its shape is the model's (same number of
classes) and otherwise leaves the model's own, newly initialised one;
`True` always leaves it.

Example:
>>> model = keras_nfnets.NFNetF0(weights=None, classes=10)
>>> stats = load_weights(model, "F0_haiku.npz", skip_classifier="auto")
>>> stats.skipped
['linear']
"""

import dataclasses
import os
from typing import Callable

import numpy as np

from keras_nfnets import presets
from keras_nfnets.weights import deepmind, download, keras_files, timm, walk
from keras_nfnets.weights.errors import CheckpointError

IMAGENET_CLASSES = 1000


@dataclasses.dataclass(frozen=True)
class Format:
    """A file format: its reader, its check-and-match, and whether a file's
    classifier has the model's shape."""

    name: str
    read: Callable
    match: Callable
    classifier_fits: Callable


DEEPMIND = Format("DeepMind checkpoint", deepmind.load_deepmind_checkpoint,
                  deepmind.match, deepmind.classifier_fits)
TIMM = Format("timm state dict", timm.read_safetensors, timm.match,
              timm.classifier_fits)
FORMATS = {"deepmind": DEEPMIND, "timm": TIMM}


# ---------------------------------------------------------------------------
# "imagenet": which published file, or a message naming who publishes what.

def imagenet_preset(variant, name=None):
    """The `presets.PRESETS` row of `variant` (case-insensitive).

    Raises:
        ValueError: no file is published for it, naming who publishes
            the family's weights and which exist.
    """
    key = str(variant).upper().replace("PLUS", "+") if variant else ""
    rows = {k.upper(): k for k in presets.PRESETS}
    if key in rows:
        return presets.PRESETS[rows[key]]
    unpublished = {k.upper(): v for k, v in presets.UNPUBLISHED.items()}
    if key in unpublished:
        row = unpublished[key]
        published = ", ".join(v["constructor"] for v in
                              presets.PRESETS.values()
                              if v["source"] == row["source"])
        raise ValueError(
            f"No ImageNet weights are published for {row['constructor']} "
            f"({variant!r}): timm, which trained it, publishes no "
            f"'{row['timm_name']}' weights (timm's published ones: "
            f"{published}). Use weights=None or a weights file.")
    if key in deepmind.published_variants() or (
            key.endswith("+") and key[:-1] in deepmind.published_variants()):
        names = [k for k, v in presets.PRESETS.items()
                 if v["source"] == "deepmind"]
        raise ValueError(
            f"No ImageNet weights are published for NFNet variant "
            f"{variant!r}: DeepMind released {names[0]}-{names[-1]} only "
            "(F7 and the '+' variants have none). Use weights=None or a "
            "weights file.")
    raise ValueError(
        f"No ImageNet weights are available for {name or variant!r}: "
        "weights='imagenet' exists for "
        + ", ".join(v["constructor"] for v in presets.PRESETS.values())
        + ". Use weights=None or the path to a weights file.")


def check_available(variant, name=None):
    """Raises the `imagenet_preset` error when `variant` has no file."""
    imagenet_preset(variant, name)


def uses_hugging_face(row):
    """Whether `"imagenet"` for a `presets.PRESETS` row goes through
    `huggingface_hub` (its cache, `HF_HUB_OFFLINE`, `HF_ENDPOINT`, tokens):
    a timm row, no mirror set (`$KERAS_NFNETS_TIMM_WEIGHTS_URL`, which
    keeps the plain download into `$KERAS_HOME/models`), and
    `huggingface_hub` installed."""
    return (row["source"] == "timm" and "hub_id" in row
            and not os.environ.get(presets.URL_ENVS["timm"])
            and download.hf_available())


def base_url(source):
    """The source's base URL: its mirror variable, else `presets`'."""
    url = (os.environ.get(presets.URL_ENVS[source])
           or presets.BASE_URLS[source])
    return url if url.endswith("/") else url + "/"


# ---------------------------------------------------------------------------
# The dispatcher.

def _has_classifier(model):
    try:
        model.get_layer("linear")
    except ValueError:
        return False
    return True


def _skips(params, model, fmt, skip_layers, skip_classifier):
    """`skip_layers`, with the classifier added when the model has none,
    when asked, or ("auto") when the file's does not fit the model's."""
    skip = tuple(str(p).strip("/") for p in skip_layers)
    if "linear" in skip:
        return skip
    if not _has_classifier(model) or skip_classifier is True or (
            skip_classifier == "auto"
            and not fmt.classifier_fits(params, model)):
        return skip + ("linear",)
    return skip


def _assign(pairs, stats):
    for var, value in pairs:
        var.assign(np.asarray(value, dtype=var.dtype))
        stats.assigned.append(var.path)
    return stats


def _check_skip_classifier(skip_classifier):
    if skip_classifier not in (False, True, "auto"):
        raise ValueError(f"skip_classifier must be False, True or 'auto'; "
                         f"received {skip_classifier!r}.")


def load_weights(model, weights, *, variant=None, skip_layers=(),
                 skip_classifier=False, cache_dir=None, file_hash=None):
    """Loads `weights` into `model`: the one way in for every source.

    Args:
        model: a model built by keras_nfnets.
        weights: `"imagenet"`, the path of a DeepMind checkpoint, a timm
            `.safetensors`, a Keras `.weights.h5` or a `.keras` file, or a
            Hugging Face handle `"hf://timm/<repo>[@revision]"` (timm's
            `model.safetensors`, through `huggingface_hub`).
        variant: the variant name (`"F0"`, `"ECA-L0"`) for `"imagenet"`.
        skip_layers: Keras layer paths (`"linear"`, `"nf_block_3/conv1b"`)
            not to load: the model keeps its own values for them.
        skip_classifier: False, True, or `"auto"` (leave the classifier
            when the file's has another shape: fine-tuning to another
            number of classes).
        cache_dir, file_hash: for `"imagenet"` (see `download.fetch`).

    Returns:
        A `walk.LoadStats`: the weights `assigned` (variable paths; layer
        names for a `.keras` file), the layers `skipped`, the model `walks`
        and the `checks` of each tensor.

    Raises:
        CheckpointError (or a subclass): the file is unsafe, corrupt or
            does not fit; nothing was assigned.
        ValueError: `weights` names no file, or no published file exists.

    Example:
    >>> model = keras_nfnets.ECANFNetL0(weights=None, classes=5)
    >>> load_weights(model, "model.safetensors", skip_classifier="auto")
    """
    _check_skip_classifier(skip_classifier)
    if isinstance(weights, str) and weights == "imagenet":
        row = imagenet_preset(variant, getattr(model, "name", None))
        if uses_hugging_face(row):
            handle = f"{download.HF_PREFIX}{row['hub_id']}@{row['revision']}"
            return fetch_hf_and_load(
                model, handle,
                classes=IMAGENET_CLASSES, skip_layers=skip_layers,
                skip_classifier=skip_classifier, md5=row["md5"],
                size=row["size"], file_hash=file_hash or row["sha256"],
                cache_dir=cache_dir, label=f"{row['constructor']} ImageNet",
                hint=(f"Or set ${presets.URL_ENVS['timm']} to a mirror of "
                      f"{presets.BASE_URLS['timm']} holding {row['path']}, "
                      "or download the file yourself and pass its path as "
                      "`weights=`."))
        return fetch_and_load(
            model, row["path"], source=row["source"], fname=row["file"],
            classes=IMAGENET_CLASSES, skip_layers=skip_layers,
            skip_classifier=skip_classifier, md5=row["md5"],
            size=row["size"], file_hash=file_hash or row["sha256"],
            cache_dir=cache_dir, label=f"{row['constructor']} ImageNet")
    if isinstance(weights, str) and weights.startswith(download.HF_PREFIX):
        return fetch_hf_and_load(model, weights, skip_layers=skip_layers,
                                 skip_classifier=skip_classifier,
                                 cache_dir=cache_dir, file_hash=file_hash)
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise ValueError(
            f"The `weights` argument should be None, 'imagenet' or the path "
            f"to a weights file; {path!r} does not exist.")
    stats = walk.LoadStats()
    fmt = (TIMM if timm.is_safetensors(path) else
           DEEPMIND if deepmind.is_deepmind_checkpoint(path) else None)
    if fmt is not None:
        params = fmt.read(path)
        skip = _skips(params, model, fmt, skip_layers, skip_classifier)
        return _assign(fmt.match(params, model, skip_layers=skip,
                                 source=path, stats=stats), stats)
    if path.endswith(".keras"):
        stats.assigned, stats.skipped = keras_files.copy_matching_layers(
            model, path)
        return stats
    if not keras_files.is_hdf5(path):
        raise CheckpointError(
            f"{path} is neither a DeepMind checkpoint (a pickle), a timm "
            "state dict (safetensors), a Keras .weights.h5 (HDF5) nor a "
            ".keras file.")
    skip = tuple(skip_layers)
    if skip_classifier is True and _has_classifier(model):
        skip += ("linear",)
    try:
        keras_files.load_weights_h5(model, path, skip)
    except ValueError:
        if skip_classifier != "auto" or not _has_classifier(model) or \
                "linear" in skip:
            raise
        skip += ("linear",)
        keras_files.load_weights_h5(model, path, skip)
    for p, _, own in walk.walk(model, skip, stats):
        stats.assigned.extend(v.path for v in own)
    return stats


def _checker(model, fmt, skip_layers, skip_classifier, classes, stats,
             pairs):
    """The structure check a download runs on a file before keeping it:
    matches the file's tensors (`fmt`) to `model`'s variables, filling
    `pairs` and `stats`, so the assignment after it walks nothing again."""
    def check(params, local):
        skip = _skips(params, model, fmt, skip_layers, skip_classifier)
        pairs[:] = fmt.match(params, model, skip_layers=skip,
                             classes=classes, source=local, stats=stats)
    return check


def fetch_and_load(model, path, *, source="deepmind", fname=None,
                   base=None, classes=None, skip_layers=(),
                   skip_classifier=False, md5=None, size=None,
                   file_hash=None, cache_dir=None, label=None):
    """Downloads (once) the `source`-format file at `path` below the
    source's base URL (or `base`), verifies and caches it
    (`download.fetch`), checks it against `model` and assigns it: what
    `"imagenet"` does, for any file of a known format.

    With `classes`, a skipped classifier is still checked to have that
    many outputs. Returns a `walk.LoadStats` whose `path` attribute is the
    cached file.
    """
    _check_skip_classifier(skip_classifier)
    fmt = FORMATS[source]
    fname = fname or os.path.basename(path)
    stats, pairs = walk.LoadStats(), []
    check = _checker(model, fmt, skip_layers, skip_classifier, classes,
                     stats, pairs)
    local, _ = download.fetch(
        (base or base_url(source)).rstrip("/") + "/" + path, fname,
        reader=fmt.read, check=check, md5=md5, size=size,
        file_hash=file_hash, cache_dir=cache_dir, label=label or fname,
        mirror_env=presets.URL_ENVS[source],
        publisher="DeepMind" if source == "deepmind" else "timm")
    _assign(pairs, stats)
    stats.path = local
    return stats


def fetch_hf_and_load(model, handle, *, classes=None, skip_layers=(),
                      skip_classifier=False, md5=None, size=None,
                      cache_dir=None, file_hash=None, label=None,
                      hint=None):
    """`weights="hf://owner/name[@revision]"` (and `"imagenet"` for timm's
    models when `huggingface_hub` is installed): a timm repository's
    `model.safetensors` through `huggingface_hub` (`download.fetch_hf`),
    verified, checked against `model` and assigned. With `classes`, a
    skipped classifier is still checked to have that many outputs."""
    stats, pairs = walk.LoadStats(), []
    check = _checker(model, TIMM, skip_layers, skip_classifier, classes,
                     stats, pairs)
    local, _ = download.fetch_hf(
        handle, reader=TIMM.read, check=check, md5=md5, size=size,
        file_hash=file_hash, cache_dir=cache_dir, label=label, hint=hint)
    _assign(pairs, stats)
    stats.path = local
    return stats


def load_deepmind_weights(model, path, skip_layers=()):
    """A DeepMind checkpoint into `model` (`load_weights` for a path)."""
    return load_weights(model, path, skip_layers=skip_layers)


def load_timm_weights(model, path, skip_layers=()):
    """Loads timm's `model.safetensors` (a state dict) into `model`: what
    `weights=<path>.safetensors` does.

    Example:
    >>> model = keras_nfnets.NFNetF0(weights=None)
    >>> load_timm_weights(model, "dm_nfnet_f0/model.safetensors")
    """
    return load_weights(model, path, skip_layers=skip_layers)
