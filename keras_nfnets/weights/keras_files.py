"""Keras's own formats: `.weights.h5` (positional, Keras checks names and
shapes) and `.keras` (a whole saved model, copied layer by layer by name),
and writing a `.weights.h5` safely.

Example:
>>> load_weights_h5(model, "f0.weights.h5", skip_layers=("linear",))
"""

import os
import shutil
import tempfile

import keras
import numpy as np

from keras_nfnets.weights import walk
from keras_nfnets.weights.errors import WrongArchitectureError, first_n

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def is_hdf5(path):
    """True when `path` starts like an HDF5 file (`.weights.h5`)."""
    with open(path, "rb") as f:
        return f.read(8) == _HDF5_MAGIC


def _load_nothing(store):  # pylint: disable=unused-argument
    return None


def load_weights_h5(model, path, skip_layers=()):
    """`model.load_weights(path)`, the layers under `skip_layers` (and
    their sub-layers) loading nothing: their public `load_own_variables`
    hook is replaced on the instance while Keras reads the file, then
    restored. The other layers load with Keras's own checks."""
    skipped = walk.layers_under(model, skip_layers)
    for layer in skipped:
        object.__setattr__(layer, "load_own_variables", _load_nothing)
    try:
        model.load_weights(os.fspath(path))
    finally:
        for layer in skipped:
            object.__delattr__(layer, "load_own_variables")


def copy_matching_layers(model, path):
    """Copies each layer's weights from the `.keras` model at `path` when a
    layer of the same name has the same weight shapes. Returns the copied
    layer names and a description of each skipped layer.

    Raises:
        WrongArchitectureError: no layer matches.
    """
    source = keras.models.load_model(os.fspath(path), compile=False)
    copied, skipped = [], []
    for layer in model.layers:
        mine = layer.get_weights()
        if not mine:
            continue
        try:
            src = source.get_layer(layer.name).get_weights()
        except ValueError:
            skipped.append(f"{layer.name} (not in the file)")
            continue
        shapes = [tuple(w.shape) for w in src]
        wanted = [tuple(w.shape) for w in mine]
        if shapes != wanted:
            skipped.append(f"{layer.name} (shapes {shapes} in the file, "
                           f"{wanted} in the model)")
            continue
        layer.set_weights(src)
        copied.append(layer.name)
    if not copied:
        raise WrongArchitectureError(
            f"{path}: no layer of the model matches a layer of that .keras "
            "file by name and weight shapes (skipped: "
            f"{first_n(skipped, sep='; ')}); is it another architecture?")
    return copied, skipped


def _check_free_space(folder, needed, what):
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(
            f"Not enough free disk space in {folder} to write {what}: "
            f"{needed / 2**20:.1f} MiB needed, {free / 2**20:.1f} MiB free. "
            "Free some space or point the output elsewhere.")


def save_weights_safely(model, path):
    """`model.save_weights(path)` after a free-space check, through a
    temporary name in the same folder and an atomic rename: a full disk
    gives an OSError and leaves no partial file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    needed = sum(int(np.prod(v.shape)) * np.dtype(
        keras.backend.standardize_dtype(v.dtype)).itemsize
        for v in model.weights)
    _check_free_space(folder, needed + (1 << 20), os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.",
                               suffix=".part.weights.h5", dir=folder)
    os.close(fd)
    try:
        model.save_weights(tmp, overwrite=True)
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(f"Could not write {path}: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
