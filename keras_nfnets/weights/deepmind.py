"""DeepMind checkpoints: the restricted reader, the name rule, the check.

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
import pickletools

import numpy as np

from keras_nfnets import variants
from keras_nfnets.weights import walk
from keras_nfnets.weights.errors import (CheckpointError,
                                         NonFiniteWeightsError,
                                         WrongVariantError, first_n)

_PICKLE_MAGIC = b"\x80"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"


# The restricted unpickler never hands numpy an untrusted state: arrays and
# dtypes are rebuilt here from validated plain values (numpy's own
# `__setstate__` can crash the interpreter on a forged state), and every
# object the pickle can reach is one of the proxies below or a plain
# container, so a BUILD opcode only ever lands where an array or a dtype is
# being rebuilt.

#: The only dtypes a checkpoint may construct: plain numeric ones.
_DTYPES = {np.dtype(n).str[1:]: np.dtype(n) for n in (
    "float16", "float32", "float64", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64", "bool")}
_DTYPE_NAMES = {**{k: k for k in _DTYPES},
                **{str(v): k for k, v in _DTYPES.items()}}


class _Refuse:
    """Base of every object the unpickler creates: BUILD is refused unless
    the subclass expects it."""

    def __setstate__(self, state):
        raise CheckpointError(
            f"Refusing checkpoint: a BUILD opcode targets {self!r}, which is "
            "not an array or dtype being rebuilt.")


class _Global(_Refuse):
    """An allowed global: callable, but not mutable through BUILD."""

    def __init__(self, name, fn):
        self.name, self.fn = name, fn

    def __call__(self, *args):
        return self.fn(*args)

    def __repr__(self):
        return f"the global {self.name}"


class _DType(_Refuse):
    """A dtype from the allow-list; its BUILD state (byte order) checked."""

    def __init__(self, dtype):
        self.dtype = dtype
        self._built = False

    def __setstate__(self, state):
        if self._built or not isinstance(state, tuple) or len(state) != 8 \
                or state[0] not in (3, 4) or state[1] not in "<>|=" \
                or len(state[1]) != 1 or state[2:5] != (None, None, None) \
                or not all(type(v) is int for v in state[5:]):
            raise CheckpointError(
                f"Refusing checkpoint: invalid dtype state {state!r:.80}.")
        if state[1] in "<>" and self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder(state[1])
        self._built = True

    def __repr__(self):
        return f"dtype {self.dtype}"


def _make_dtype(spec, align=False, copy=True):
    """`numpy.dtype(spec, align, copy)` for plain numeric `spec` only."""
    del align, copy
    name = _DTYPE_NAMES.get(spec) if isinstance(spec, str) else None
    if name is None:
        raise CheckpointError(
            f"Refusing checkpoint: dtype {spec!r:.40} is not a plain numeric "
            f"dtype (allowed: {', '.join(sorted(_DTYPE_NAMES))}).")
    return _DType(_DTYPES[name])


def _array_from_state(state):
    """An ndarray from numpy's array state `(1, shape, dtype, fortran,
    data)`, validated: a tuple of sizes, an allowed dtype, raw bytes of
    exactly the right length."""
    if not isinstance(state, tuple) or len(state) != 5 or state[0] != 1:
        raise CheckpointError(
            f"Refusing checkpoint: invalid array state {state!r:.80}.")
    _, shape, dtype, fortran, data = state
    if not isinstance(shape, tuple) or not all(
            type(d) is int and 0 <= d < 2 ** 40 for d in shape) or \
            len(shape) > 8:
        raise CheckpointError(
            f"Refusing checkpoint: invalid array shape {shape!r:.80}.")
    if not isinstance(dtype, _DType):
        raise CheckpointError(
            f"Refusing checkpoint: array dtype {dtype!r:.60} is not a plain "
            "numeric dtype.")
    if not isinstance(fortran, bool) or not isinstance(data, (bytes,
                                                              bytearray)):
        raise CheckpointError(
            "Refusing checkpoint: array data is not raw bytes.")
    size = 1
    for d in shape:
        size *= d
    if size * dtype.dtype.itemsize != len(data):
        raise CheckpointError(
            f"Refusing checkpoint: array of shape {shape} and dtype "
            f"{dtype.dtype} needs {size * dtype.dtype.itemsize} bytes, the "
            f"file holds {len(data)}.")
    array = np.frombuffer(bytes(data), dtype=dtype.dtype).reshape(
        shape, order="F" if fortran else "C")
    return np.array(array, dtype=array.dtype.newbyteorder("="))


class _Array(_Refuse):
    """An array in the loaded structure (resolved after loading). Made
    empty by numpy's `_reconstruct`, it accepts one BUILD (numpy's plain
    array pickles); made whole by dill's `_create_array`, none."""

    def __init__(self, array=None):
        self.array = array

    def __setstate__(self, state):
        if self.array is not None:
            super().__setstate__(state)
        self.array = _array_from_state(state)

    def __repr__(self):
        return "an array"


def _reconstruct(subtype, shape, dtype):
    """numpy's `_reconstruct(ndarray, (0,), b'b')`: an empty array to be
    filled by BUILD."""
    if not isinstance(subtype, _Global) or subtype.fn is not np.ndarray:
        raise CheckpointError(
            f"Refusing checkpoint: array subtype {subtype!r:.60} is not "
            "ndarray.")
    return _Array()


def _create_array(f, args, state, npdict=None):
    """dill's `_create_array`, re-implemented: f(*args), then its state."""
    if not isinstance(f, _Global) or f.fn is not _reconstruct or \
            not isinstance(args, tuple):
        raise CheckpointError(
            "Refusing checkpoint: dill._create_array called with something "
            f"other than numpy's array reconstructor ({f!r:.60}).")
    f(*args)
    if npdict:
        raise CheckpointError(
            "Refusing checkpoint: array carries extra attributes.")
    return _Array(_array_from_state(state))


def _scalar(dtype, data):
    """numpy's `scalar(dtype, bytes)`: a 0-d array here."""
    if not isinstance(dtype, _DType) or not isinstance(data, bytes) or \
            len(data) != dtype.dtype.itemsize:
        raise CheckpointError("Refusing checkpoint: invalid numpy scalar.")
    return _Array(_array_from_state((1, (), dtype, False, data)))


def _flat_mapping(*args):  # haiku's FlatMapping: rebuilt as a plain dict
    return dict(*args)


def _ndarray(*args):
    raise CheckpointError("Refusing checkpoint: ndarray called directly.")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _make_dtype,
    ("dill._dill", "_create_array"): _create_array,
    ("haiku._src.data_structures", "FlatMapping"): _flat_mapping,
    ("haiku._src.data_structures", "FlatMap"): _flat_mapping,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("collections", "OrderedDict"): dict,
}

# Opcodes a parameter file needs: no object construction (INST, OBJ,
# NEWOBJ), no extension registry, no persistent ids.
_ALLOWED_OPCODES = frozenset(
    op.name for op in pickletools.opcodes) - {
    "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4", "PERSID",
    "BINPERSID", "NEXT_BUFFER", "READONLY_BUFFER", "BYTEARRAY8"}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            fn = _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise CheckpointError(
                f"Refusing to load checkpoint: it references the global "
                f"'{module}.{name}', which is not a numpy array or a plain "
                "container. Only DeepMind-format parameter files are "
                "accepted.") from None
        if fn is np.ndarray:
            return _Global("numpy.ndarray", np.ndarray)
        return _Global(f"{module}.{name}", fn)

    def persistent_load(self, pid):
        raise CheckpointError(
            "Refusing to load checkpoint: it uses persistent ids.")


def _check_opcodes(data, path):
    """Walks the opcode stream without executing it: a malformed or
    truncated stream, or a forbidden opcode, is named with its offset."""
    pos = 0
    stream = io.BytesIO(data)
    try:
        for op, _, pos in pickletools.genops(stream):
            if op.name not in _ALLOWED_OPCODES:
                raise CheckpointError(
                    f"Refusing to load checkpoint {path}: opcode {op.name} "
                    f"at byte offset {pos} is not used by parameter files.")
            if op.name == "STOP":
                return
    except CheckpointError:
        raise
    except Exception as e:  # pickletools' ValueError and friends
        if stream.tell() >= len(data):  # it ran out of bytes: truncated
            raise CheckpointError(
                f"Checkpoint {path} is truncated or corrupt: the pickle ends "
                f"early, after {len(data)} bytes, inside the opcode at byte "
                f"offset {pos} (an interrupted download?).") from None
        raise CheckpointError(
            f"Checkpoint {path} is truncated or corrupt: invalid pickle data "
            f"after byte offset {pos} ({type(e).__name__}: {e}) (an "
            "interrupted download?).") from None
    raise CheckpointError(
        f"Checkpoint {path} is truncated or corrupt: the pickle ends early, "
        f"after {len(data)} bytes, with no STOP opcode (an interrupted "
        "download?).")


def is_deepmind_checkpoint(path):
    """True when `path` starts like a pickle (DeepMind's format)."""
    with open(path, "rb") as f:
        return f.read(1) == _PICKLE_MAGIC


def load_deepmind_checkpoint(path):
    """Reads a DeepMind `*_haiku.npz` file without executing any code.

    Returns `{module_name: {param_name: np.ndarray}}`.

    Raises:
        CheckpointError: for every unsafe, malformed, truncated or
            non-finite file, naming the file (and the byte offset where
            the stream is malformed). No other exception escapes.

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
    _check_opcodes(data, path)
    stream = io.BytesIO(data)
    try:
        params = _RestrictedUnpickler(stream).load()
    except CheckpointError as e:
        raise CheckpointError(
            f"{path}: {e} (at or before byte offset {stream.tell()})"
        ) from None
    except Exception as e:  # pylint: disable=broad-except
        # Anything else the (C) unpickler raises on a forged stream.
        raise CheckpointError(
            f"Checkpoint {path} is truncated or corrupt: invalid pickle "
            f"data at or before byte offset {stream.tell()} "
            f"({type(e).__name__}: {str(e)[:200]}).") from None
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
            if isinstance(value, _Array) and value.array is not None:
                value = value.array
            if not isinstance(name, str) or not isinstance(
                    value, np.ndarray) or not np.issubdtype(
                        value.dtype, np.floating):
                raise CheckpointError(
                    f"Checkpoint {path}: {module}/{name} is not a float "
                    "array.")
            bad = value.size - int(np.count_nonzero(np.isfinite(value)))
            if bad:
                raise NonFiniteWeightsError(
                    f"Checkpoint {path}: {module}/{name} holds {bad} NaN or "
                    f"infinite value(s) of {value.size}; refusing weights "
                    "that are not finite.")
            out[module][name] = value
    return out


# ---------------------------------------------------------------------------
# The name rule: haiku `NFNet/~/nf_block_3/~/conv1b` `w` is the Keras layer
# `nf_block_3/conv1b` weight `kernel`.

def _param_name(layer, keras_name):
    """haiku's name for a Keras weight: WSConv2D has `w`, `gain`, `bias`;
    hk.Linear has `w`, `b`; a block owns `skip_gain`."""
    if keras_name == "kernel":
        return "w"
    if keras_name == "bias" and not hasattr(layer, "standardized_kernel"):
        return "b"
    return keras_name


def named_modules(model):
    """Yields `(keras_path, layer)` for every layer that owns weights
    (paths follow the haiku module tree)."""
    for path, layer, _ in walk.walk(model):
        yield path, layer


def own_weights(layer):
    """The weights a layer holds itself (not through its sub-layers)."""
    subs = getattr(layer, "named_sublayers", None)
    inner = {id(w) for s in (subs().values() if subs else ())
             for w in s.weights}
    return [w for w in layer.weights if id(w) not in inner]


def haiku_module_name(keras_path, root):
    return "/~/".join([root] + keras_path.split("/"))


def keras_path(module):
    """The Keras layer path of haiku module `NFNet/~/nf_block/~/conv0`."""
    return module.split("/~/", 1)[-1].replace("/~/", "/")


def keras_to_deepmind(model, root="NFNet", skip_layers=(), stats=None):
    """`{haiku_module: {param: variable}}` for every model weight outside
    `skip_layers` (one walk of the model)."""
    mapping = {}
    for path, layer, own in walk.walk(model, skip_layers, stats):
        module = haiku_module_name(path, root)
        for w in own:
            mapping.setdefault(module, {})[
                _param_name(layer, walk.weight_name(w))] = w
    return mapping


# ---------------------------------------------------------------------------
# Module counts, from the variant table (the only place that knows them).

def module_count(config):
    """Modules in a DeepMind NFNet checkpoint of `config` (an
    `NFNetConfig` or a variant name): per block conv0, conv1, conv1b (with
    two convs), conv2, the two SE linears, the block's skip_gain; one
    shortcut conv per stage; the four stem convs, final_conv and the
    classifier.

    Example:
    >>> module_count("F0")
    94
    """
    cfg = variants.get_config(config)
    per_block = (3 + int(cfg.use_two_convs)
                 + (2 if cfg.attention == "se" else 1 if cfg.attention else 0)
                 + int(cfg.skip_gain))
    return (per_block * sum(cfg.depth) + len(cfg.depth) + 4
            + int(bool(cfg.final_conv_mult or cfg.final_conv_ch)) + 1)


def published_variants():
    """DeepMind's F-series in the variant table (`F0` ... `F7`, no '+')."""
    return [name for name in variants.NFNET_VARIANTS
            if name.startswith("F") and not name.endswith("+")]


def variant_for_module_count(count):
    """'F{n}' (base or '+') whose checkpoint has `count` modules, or None."""
    for name in published_variants():
        if module_count(name) == count:
            return name
    return None


# ---------------------------------------------------------------------------
# The structure check: once per load, before anything is assigned.

def root_of(params, source="checkpoint"):
    roots = {m.split("/~/")[0] for m in params}
    if len(roots) != 1:
        raise WrongVariantError(
            f"{source}: expected one root module, found {sorted(roots)}.")
    return roots.pop()


def match(params, model, *, skip_layers=(), classes=None, label=None,
          source="checkpoint", stats=None):
    """Checks DeepMind `params` against `model` (one walk of the model,
    one check per tensor) and returns `[(variable, value)]` to assign.

    Layers under `skip_layers` keep their values and the file's tensors for
    them are not loaded; with `classes`, a skipped classifier `linear` is
    still checked to have `classes` outputs.

    Raises:
        WrongVariantError: the module count is another variant's, or a
            tensor is missing, unexpected or of another shape (all named,
            the first 8 of each kind).
    """
    root = root_of(params, source)
    skip_layers = tuple(str(p).strip("/") for p in skip_layers)
    targets = keras_to_deepmind(model, root, skip_layers, stats)
    skipped = [m for m in params if walk.under(
        keras_path(m), skip_layers)]
    expected = len(targets) + len(skipped)
    if len(params) != expected:
        found = variant_for_module_count(len(params))
        like = (f"; {len(params)} modules is the layout of DeepMind's "
                f"NFNet-{found} (or {found}+)" if found else "")
        raise WrongVariantError(
            f"{source} is not a {label or 'DeepMind'} checkpoint for this "
            f"model ('{model.name}'): it has {len(params)} modules where "
            f"the model needs {expected} (DeepMind's NFNet-F0 file has "
            f"{module_count('F0')}, F1's {module_count('F1')}){like}. "
            "Wrong variant?")
    linear = f"{root}/~/linear"
    if classes is not None and linear in skipped:
        _check_classifier(params[linear], model, linear, classes, source)
    missing, unexpected, mismatched, pairs = [], [], [], []
    for module, group in targets.items():
        for p, var in group.items():
            value = params.get(module, {}).get(p)
            if stats is not None:
                stats.checks[f"{module}/{p}"] += 1
            if value is None:
                missing.append(f"{module}/{p}")
            elif tuple(np.shape(value)) != tuple(var.shape):
                mismatched.append(
                    f"{module}/{p}: checkpoint {tuple(np.shape(value))} vs "
                    f"model {tuple(var.shape)}")
            else:
                pairs.append((var, value))
    for module, group in params.items():
        if module in skipped:
            continue
        unexpected.extend(f"{module}/{p}" for p in group
                          if p not in targets.get(module, {}))
    if missing or unexpected or mismatched:
        lines = [f"{source} does not fit model '{model.name}' "
                 f"({len(params)} modules in the checkpoint, {expected} in "
                 "the model; is it a different variant?)"]
        for title, items in (("missing from the checkpoint", missing),
                             ("not in the model", unexpected),
                             ("wrong shape", mismatched)):
            if items:
                lines.append(f"  {title} ({len(items)}): {first_n(items)}")
        raise WrongVariantError("\n".join(lines))
    return pairs


def _check_classifier(group, model, module, classes, source):
    final = model.get_layer("final_conv").filters
    want = {"w": (final, classes), "b": (classes,)}
    got = {k: tuple(np.shape(v)) for k, v in group.items()}
    if got != want:
        raise WrongVariantError(
            f"{source}: classifier '{module}' has {got}, expected "
            f"{want} ({classes} classes on {final} features).")


def classifier_fits(params, model):
    """True when the file's classifier has the shapes of the model's
    `linear` layer (False when either has none)."""
    try:
        layer = model.get_layer("linear")
    except ValueError:
        return False
    group = params.get(f"{root_of(params)}/~/linear", {})
    return {k: tuple(np.shape(v)) for k, v in group.items()} == {
        _param_name(layer, walk.weight_name(w)): tuple(w.shape)
        for w in layer.weights}


def assign_deepmind_weights(model, params, root=None, skip_layers=(),
                            source="checkpoint"):
    """Checks then assigns DeepMind `params` to `model` (see `match`).

    Example:
    >>> assign_deepmind_weights(model, load_deepmind_checkpoint("F0_haiku.npz"))
    """
    del root  # inferred from the file
    for var, value in match(params, model, skip_layers=skip_layers,
                            source=source):
        var.assign(np.asarray(value, dtype=var.dtype))


def to_params(model, root="NFNet"):
    """`model`'s weights as DeepMind's `{module: {param: ndarray}}`,
    refusing non-finite values."""
    params = {}
    for module, group in keras_to_deepmind(model, root).items():
        for p, v in group.items():
            value = np.asarray(v.numpy() if hasattr(v, "numpy") else v)
            if not np.all(np.isfinite(value)):
                raise NonFiniteWeightsError(
                    f"{module}/{p} holds NaN or infinite values; refusing "
                    "to write them.")
            params.setdefault(module, {})[p] = value
    return params
