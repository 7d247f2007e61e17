"""DeepMind checkpoints: safe loading, name mapping and assignment.

DeepMind publishes its NFNet weights (`F0_haiku.npz` ...) as *dill pickles*
of `{module_name: {param_name: ndarray}}`, despite the `.npz` suffix. A pickle
can run arbitrary code, and a checkpoint from the internet is untrusted data,
so `load_deepmind_checkpoint` reads it with a restricted unpickler that only
rebuilds numpy arrays and plain containers. Nothing else is ever imported or
called: no dill, haiku or jax is needed.

Keras layers are named after DeepMind's haiku modules, so the mapping is a
rule: haiku `NFNet/~/nf_block_3/~/conv1b` `w` is the Keras layer path
`nf_block_3/conv1b` weight `kernel` (`w`->`kernel`, a linear's `b`->`bias`,
every other name unchanged).
"""

import io
import os
import pickle

import numpy as np

_PICKLE_MAGIC = b"\x80"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(ValueError):
    """A checkpoint file is unsafe, corrupt or does not fit the model."""


def _create_array(f, args, state, npdict=None):
    """dill's `_create_array`, re-implemented: f(*args), then set its state."""
    if f is not _reconstruct:
        raise CheckpointError(
            "Refusing checkpoint: dill._create_array called with something "
            f"other than numpy's array reconstructor ({f!r}).")
    array = f(*args)
    array.__setstate__(state)
    if npdict:
        raise CheckpointError(
            "Refusing checkpoint: array carries extra attributes.")
    return array


def _reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise CheckpointError(
            f"Refusing checkpoint: array subtype {subtype!r} is not ndarray.")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _scalar(dtype, data):
    return np.frombuffer(data, dtype=dtype)[0].copy() if isinstance(
        data, bytes) else np.asarray(data, dtype=dtype)[()]


def _flat_mapping(*args):  # haiku's FlatMapping: rebuilt as a plain dict
    return dict(*args)


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("dill._dill", "_create_array"): _create_array,
    ("haiku._src.data_structures", "FlatMapping"): _flat_mapping,
    ("haiku._src.data_structures", "FlatMap"): _flat_mapping,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("collections", "OrderedDict"): dict,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"Refusing to load checkpoint: it references the global "
                f"'{module}.{name}', which is not a numpy array or a plain "
                "container. Only DeepMind-format parameter files are "
                "accepted.") from None

    def persistent_load(self, pid):
        raise CheckpointError(
            "Refusing to load checkpoint: it uses persistent ids.")


def is_deepmind_checkpoint(path):
    """True when `path` starts like a pickle (DeepMind's format)."""
    with open(path, "rb") as f:
        return f.read(1) == _PICKLE_MAGIC


def load_deepmind_checkpoint(path):
    """Reads a DeepMind `*_haiku.npz` file without executing any code.

    Returns `{module_name: {param_name: np.ndarray}}`.

    Example:
    >>> params = load_deepmind_checkpoint("F0_haiku.npz")
    >>> params["NFNet/~/linear"]["w"].shape
    (3072, 1000)
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise CheckpointError(f"Checkpoint {path} is empty.")
    if data[:1] != _PICKLE_MAGIC:
        kind = ("a Keras/HDF5 weights file" if data.startswith(_HDF5_MAGIC)
                else "a zip/npz archive" if data.startswith(_ZIP_MAGIC)
                else "not a pickle")
        raise CheckpointError(
            f"{path} is {kind}, not a DeepMind haiku checkpoint (a pickle).")
    try:
        params = _RestrictedUnpickler(io.BytesIO(data)).load()
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError,
            IndexError, KeyError, AttributeError, MemoryError) as e:
        if isinstance(e, EOFError) or "truncated" in str(e):
            raise CheckpointError(
                f"Checkpoint {path} is truncated or corrupt: the pickle ends "
                f"early, after {len(data)} bytes (an interrupted download?)."
            ) from None
        raise CheckpointError(
            f"Checkpoint {path} is truncated or corrupt: invalid pickle "
            f"data ({type(e).__name__}: {e}).") from None
    return _validate_structure(params, path)


def _validate_structure(params, path):
    if not isinstance(params, dict):
        raise CheckpointError(
            f"Checkpoint {path} holds a {type(params).__name__}, not a dict "
            "of modules.")
    out = {}
    for module, group in params.items():
        if not isinstance(module, str) or not isinstance(group, dict):
            raise CheckpointError(
                f"Checkpoint {path}: entry {module!r} is not a "
                "module-name -> {param: array} mapping.")
        out[module] = {}
        for name, value in group.items():
            if isinstance(value, np.generic):
                value = np.asarray(value)
            if not isinstance(value, np.ndarray) or not np.issubdtype(
                    value.dtype, np.floating):
                raise CheckpointError(
                    f"Checkpoint {path}: {module}/{name} is not a float "
                    "array.")
            out[module][name] = value
    return out


# ---------------------------------------------------------------------------
# Name mapping between haiku modules and Keras layers.

def _param_name(layer, keras_name):
    """haiku's name for a Keras weight: WSConv2D has `w`, `gain`, `bias`;
    hk.Linear has `w`, `b`; a block owns `skip_gain`."""
    if keras_name == "kernel":
        return "w"
    if keras_name == "bias" and not hasattr(layer, "standardized_kernel"):
        return "b"
    return keras_name


def named_modules(model):
    """Yields `(keras_path, layer)` for every layer that owns weights.

    Paths are '/'-joined layer names (`nf_block_3/conv1b`) and follow the
    haiku module tree.
    """
    def walk(layer, prefix):
        path = f"{prefix}/{layer.name}" if prefix else layer.name
        subs = getattr(layer, "named_sublayers", None)
        own = [w for w in layer.weights if not _owned_by_sublayer(layer, w)]
        if own or not subs:
            if layer.weights:
                yield path, layer
        if subs:
            for sub in subs().values():
                yield from walk(sub, path)

    for layer in model.layers:
        yield from walk(layer, "")


def _owned_by_sublayer(layer, weight):
    subs = getattr(layer, "named_sublayers", None)
    if not subs:
        return False
    return any(weight is w for s in subs().values() for w in s.weights)


def own_weights(layer):
    """The weights a layer holds itself (not through its sub-layers)."""
    return [w for w in layer.weights if not _owned_by_sublayer(layer, w)]


def _weight_name(variable):
    return variable.name.split("/")[-1]


def haiku_module_name(keras_path, root):
    return "/~/".join([root] + keras_path.split("/"))


def keras_to_deepmind(model, root="NFNet"):
    """Returns `{haiku_module: {param: variable}}` for every model weight."""
    mapping = {}
    for path, layer in named_modules(model):
        module = haiku_module_name(path, root)
        for w in own_weights(layer):
            name = _weight_name(w)
            mapping.setdefault(module, {})[_param_name(layer, name)] = w
    return mapping


def assign_deepmind_weights(model, params, root=None, skip_layers=(),
                            source="checkpoint"):
    """Assigns DeepMind params to `model`, checking every name and shape.

    Args:
        model: a model built by keras_nfnets.
        params: `{module: {param: array}}` (see `load_deepmind_checkpoint`).
        root: the haiku root module name (`"NFNet"`); inferred if None.
        skip_layers: Keras layer paths (e.g. `"linear"`) present in `params`
            that the model deliberately lacks (the classifier when
            include_top=False).
        source: how to name the params in error messages.

    Raises:
        CheckpointError: naming every missing, unexpected or mis-shaped
            tensor, before any weight is changed.
    """
    if root is None:
        roots = {m.split("/~/")[0] for m in params}
        if len(roots) != 1:
            raise CheckpointError(
                f"{source}: expected one root module, found {sorted(roots)}.")
        root = roots.pop()
    targets = keras_to_deepmind(model, root)
    missing, unexpected, mismatched = [], [], []
    for module, group in params.items():
        if module.split("/~/", 1)[-1].replace("/~/", "/") in skip_layers:
            continue
        if module not in targets:
            unexpected.extend(f"{module}/{p}" for p in group)
            continue
        for p, value in group.items():
            var = targets[module].get(p)
            if var is None:
                unexpected.append(f"{module}/{p}")
            elif tuple(var.shape) != tuple(np.shape(value)):
                mismatched.append(
                    f"{module}/{p}: checkpoint {tuple(np.shape(value))} vs "
                    f"model {tuple(var.shape)}")
    for module, group in targets.items():
        for p in group:
            if p not in params.get(module, {}):
                missing.append(f"{module}/{p}")
    if missing or unexpected or mismatched:
        n_ckpt = len(params)
        lines = [f"{source} does not fit model '{model.name}' "
                 f"({n_ckpt} modules in the checkpoint, {len(targets)} in "
                 "the model; is it a different variant?)"]
        for title, items in (("missing from the checkpoint", missing),
                             ("not in the model", unexpected),
                             ("wrong shape", mismatched)):
            if items:
                shown = ", ".join(items[:8])
                more = f" and {len(items) - 8} more" if len(items) > 8 else ""
                lines.append(f"  {title} ({len(items)}): {shown}{more}")
        raise CheckpointError("\n".join(lines))
    for module, group in targets.items():
        for p, var in group.items():
            var.assign(np.asarray(params[module][p], dtype=var.dtype))


def load_weights(model, weights, skip_layers=()):
    """Loads `weights` (a DeepMind checkpoint or a Keras `.weights.h5` file)
    into `model`. Used by the constructors' `weights=` argument.

    `skip_layers`: Keras layer paths (`"linear"`, `"nf_block_3/conv1b"`)
    not to load, in either format: the checkpoint's tensors for them are
    ignored and the model keeps its own values (e.g. a new classifier with
    another number of classes). Every other weight must fit.

    Example:
    >>> model = keras_nfnets.NFNetF0(weights=None, classes=10)
    >>> load_weights(model, "f0_imagenet.weights.h5", skip_layers=["linear"])
    """
    path = os.fspath(weights)
    if not os.path.exists(path):
        raise ValueError(
            f"The `weights` argument should be None, 'imagenet' or the path "
            f"to a weights file; {path!r} does not exist.")
    if is_deepmind_checkpoint(path):
        assign_deepmind_weights(model, load_deepmind_checkpoint(path),
                                skip_layers=skip_layers, source=path)
        return
    skipped = _layers_under(model, skip_layers)
    # A skipped layer (and its sub-layers) loads nothing: its public
    # `load_own_variables` hook is replaced on the instance while Keras
    # reads the file, then restored. The other layers load as usual, with
    # Keras's own checks of names and shapes.
    for layer in skipped:
        object.__setattr__(layer, "load_own_variables", _load_nothing)
    try:
        model.load_weights(path)
    finally:
        for layer in skipped:
            object.__delattr__(layer, "load_own_variables")


def _load_nothing(store):  # pylint: disable=unused-argument
    return None


def _layers_under(model, paths):
    """The layers at the given '/'-joined layer paths and all their
    sub-layers (paths as in `named_modules`)."""
    paths = [str(p).strip("/") for p in paths]
    found, seen = [], set()

    def walk(layer, prefix, inside):
        path = f"{prefix}/{layer.name}" if prefix else layer.name
        inside = inside or path in paths
        if inside and id(layer) not in seen:
            seen.add(id(layer))
            found.append(layer)
        subs = getattr(layer, "named_sublayers", None)
        for sub in (subs().values() if subs else ()):
            walk(sub, path, inside)

    for layer in model.layers:
        walk(layer, "", False)
    return found
