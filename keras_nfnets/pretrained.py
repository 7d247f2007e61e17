"""Deprecated: `weights="imagenet"` lives in `keras_nfnets.weights`
(`load.py`: the dispatcher, `download.py`: fetch, verify, cache) and the
published files' facts in `keras_nfnets.presets`. This module re-exports
the former names."""

import warnings

from keras_nfnets import presets
from keras_nfnets.weights import download as _download
from keras_nfnets.weights import load as _load
from keras_nfnets.weights.deepmind import (  # noqa: F401
    load_deepmind_checkpoint,
    variant_for_module_count)
from keras_nfnets.weights.errors import (WeightsHashError,  # noqa: F401
                                         WrongVariantError)
from keras_nfnets.weights.keras_files import save_weights_safely  # noqa: F401

warnings.warn("keras_nfnets.pretrained is deprecated: use "
              "keras_nfnets.weights (load_weights, download) and "
              "keras_nfnets.presets.", DeprecationWarning, stacklevel=2)

_DM = {k: v for k, v in presets.PRESETS.items() if v["source"] == "deepmind"}
PUBLISHED = tuple(_DM)
BASE_URL = presets.BASE_URLS["deepmind"]
URL_ENV = presets.URL_ENVS["deepmind"]
ACCEPT_ENV = presets.ACCEPT_ENV
CACHE_SUBDIR = _download.CACHE_SUBDIR
HASH_RECORD = _download.HASH_RECORD
KNOWN_SHA256 = {v["file"]: v["sha256"] for v in _DM.values() if v["sha256"]}
KNOWN_MD5 = {v["file"]: v["md5"] for v in _DM.values() if v["md5"]}
KNOWN_SIZE = {v["file"]: v["size"] for v in _DM.values() if v["size"]}
cache_folder = _download.cache_folder
sha256 = _download.sha256
check_available = _load.check_available


def weights_base_url():
    """DeepMind's base URL, or the mirror $KERAS_NFNETS_WEIGHTS_URL."""
    return _load.base_url("deepmind")


def load_imagenet_weights(model, variant, skip_layers=()):
    """`load_weights(model, "imagenet", variant=...)`; returns the cached
    file's path."""
    return _load.load_weights(model, "imagenet", variant=variant,
                              skip_layers=skip_layers).path


def load_pretrained(model, fname, *, classes, skip_layers=(), base_url=None,
                    file_hash=None, cache_dir=None, label=None):
    """A DeepMind-format file below `base_url` into `model`
    (`weights.load.fetch_and_load`); returns the cached file's path."""
    return _load.fetch_and_load(
        model, fname, source="deepmind", base=base_url, classes=classes,
        skip_layers=skip_layers, md5=KNOWN_MD5.get(fname),
        size=KNOWN_SIZE.get(fname),
        file_hash=file_hash or KNOWN_SHA256.get(fname), cache_dir=cache_dir,
        label=label).path


def fetch_checkpoint(fname, *, base_url=None, file_hash=None, cache_dir=None,
                     label=None, loader=None, check=None):
    """`weights.download.fetch` of a DeepMind-format file; returns
    `(path, params)`."""
    return _download.fetch(
        (base_url or weights_base_url()).rstrip("/") + "/" + fname, fname,
        reader=loader or load_deepmind_checkpoint, check=check,
        md5=KNOWN_MD5.get(fname), size=KNOWN_SIZE.get(fname),
        file_hash=file_hash or KNOWN_SHA256.get(fname),
        cache_dir=cache_dir, label=label, mirror_env=URL_ENV,
        publisher="DeepMind")

