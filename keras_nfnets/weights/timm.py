"""timm's state dicts in safetensors: the reader, the name rule, the
check.

timm publishes its NFNets (and its copies of DeepMind's F0-F6) as
`model.safetensors`: a JSON header and raw tensors, a format that cannot
run code. It is read with the `safetensors` package's numpy API (no torch).

The name rule (`timm_name`), applied to every Keras weight path:

* stem: `stem_conv{i}` -> `stem.conv{i+1}`, `initial_conv` -> `stem.conv`;
* block `k` (`nf_block_k` / `nf_res_block_k`) -> `stages.{s}.{j}`, the
  `j`-th block of stage `s`; a stage starts at each block that changes the
  shape (stride or width), as in timm;
* in a block: `conv0/1/1b/2` -> `conv1/2/2b/3`, `conv_shortcut` ->
  `downsample.conv`, `squeeze_excite/linear(_1)` -> `attn_last.fc1/fc2`
  (`attn.` for NF-RegNet's bottleneck SE), `eca` -> `attn_last.conv`,
  the block's `skip_gain` -> `skipinit_gain`;
* `final_conv` -> `final_conv`, `linear` -> `head.fc`;
* weights: `kernel` -> `weight`, `gain`, `bias` unchanged.

Layouts are PyTorch's and are transposed on the way in: conv kernels OIHW
-> HWIO, Linear (out, in) -> (in, out), SE 1x1 convs (out, in, 1, 1) ->
Dense (in, out), gains (O, 1, 1, 1) -> (O,), ECA's Conv1d (1, 1, k) ->
(k, 1, 1).

Example:
```python
model = keras_nfnets.ECANFNetL0(weights="model.safetensors")
```
"""

import json
import os
import re
import struct

import numpy as np

from safetensors import numpy as st_numpy

from keras_nfnets import presets
from keras_nfnets.weights import walk
from keras_nfnets.weights.errors import (CorruptCheckpointError,
                                         MissingTensorError,
                                         NonFiniteWeightsError,
                                         TensorShapeError,
                                         TruncatedCheckpointError,
                                         UnexpectedTensorError,
                                         WrongArchitectureError, first_n)

_SAFETENSORS_DTYPES = {"F16", "F32", "F64", "BF16"}


def is_safetensors(path):
    """True for a `.safetensors` path, or a file that starts like one (an
    8-byte little-endian header length, then `{`)."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and struct.unpack(
        "<Q", head[:8])[0] < (1 << 27)


def read_safetensors(path):
    """Reads a safetensors file into `{name: np.ndarray}` (float32).

    The header is checked first, so that a cut-off or damaged download
    gets an error that says so (`TruncatedCheckpointError`,
    `CorruptCheckpointError`), before `safetensors.numpy.load_file` reads
    the tensors.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise TruncatedCheckpointError(
                f"{path} is truncated: {size} bytes, not even a safetensors "
                "header (an interrupted download?).")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            if n < (1 << 27) and f.read(1) == b"{":
                raise TruncatedCheckpointError(
                    f"{path} is truncated: its header alone is {n} bytes, "
                    f"the file {size} (an interrupted download?).")
            raise CorruptCheckpointError(
                f"{path} is not a safetensors file (it does not start with "
                "a header length and a JSON header): "
                f"{_describe(head + f.read(56))}.")
        raw = f.read(n)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        end = 0
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            dtype, shape = entry["dtype"], entry["shape"]
            begin, stop = entry["data_offsets"]
            if dtype not in _SAFETENSORS_DTYPES:
                raise ValueError(f"tensor {name!r} has dtype {dtype}, not "
                                 "a float type")
            if not 0 <= begin <= stop or not all(
                    isinstance(d, int) and d >= 0 for d in shape):
                raise ValueError(f"tensor {name!r} has invalid offsets or "
                                 "shape")
            end = max(end, stop)
    except (ValueError, TypeError, KeyError, UnicodeDecodeError,
            RecursionError) as e:  # RecursionError: a deeply nested header
        raise CorruptCheckpointError(
            f"{path} is a corrupt safetensors file: its header does not "
            f"parse ({type(e).__name__}: {e}).") from None
    if 8 + n + end > size:
        raise TruncatedCheckpointError(
            f"{path} is truncated: its header announces {end} bytes of "
            f"tensor data, the file holds {size - 8 - n} (an interrupted "
            "download?).")
    try:
        state = st_numpy.load_file(path)
    except Exception as e:  # safetensors' own error type
        raise CorruptCheckpointError(
            f"{path} is a corrupt safetensors file ({type(e).__name__}: "
            f"{e}).") from None
    out = {}
    with np.errstate(over="ignore", invalid="ignore"):
        for name, value in state.items():
            value = np.asarray(value, dtype=np.float32)
            bad = value.size - int(np.count_nonzero(np.isfinite(value)))
            if bad:
                raise NonFiniteWeightsError(
                    f"{path}: tensor '{name}' holds {bad} NaN or infinite "
                    f"value(s) of {value.size} (in float32); refusing "
                    "weights that are not finite.")
            out[name] = value
    return out


def _describe(data):
    if data.lstrip().startswith((b"<", b"<!")):
        return "it looks like an HTML page"
    if data[:1] == b"\x80":
        return "it looks like a pickle (DeepMind's format?)"
    return f"it starts with {data[:16]!r}"


# ---------------------------------------------------------------------------
# The name rule.

_STEM = {"initial_conv": "stem.conv"}
_STEM.update({f"stem_conv{i}": f"stem.conv{i + 1}" for i in range(4)})
_IN_BLOCK = {"conv0": "conv1", "conv1": "conv2", "conv1b": "conv2b",
             "conv2": "conv3", "conv_shortcut": "downsample.conv",
             "linear": "fc1", "linear_1": "fc2"}
_TOP = {"final_conv": "final_conv", "linear": "head.fc"}
_PARAMS = {"kernel": "weight", "bias": "bias", "gain": "gain",
           "skip_gain": "skipinit_gain"}


def _block_positions(model):
    """`{block layer name: "stages.{s}.{j}"}`: a new stage starts at every
    block that changes the shape (stride or width), as timm's do."""
    positions, stage, j = {}, -1, 0
    for layer in model.layers:
        if not hasattr(layer, "use_projection"):
            continue
        if stage < 0 or layer.strides > 1 or (
                layer.in_channels != layer.out_channels):
            stage, j = stage + 1, 0
        positions[layer.name] = (f"stages.{stage}.{j}", layer)
        j += 1
    return positions


def timm_name(keras_path, weight, positions):
    """timm's state-dict key for Keras weight `weight` (`kernel`, `gain`,
    ...) of the layer at `keras_path` (`nf_block_3/conv1b`)."""
    first, *rest = keras_path.split("/")
    param = _PARAMS.get(weight, weight)
    if first in positions:
        prefix, block = positions[first]
        parts = [prefix]
        attn = "attn" if block.se_position == "bottleneck" else "attn_last"
        for part in rest:
            if part == "squeeze_excite":
                parts.append(attn)
            elif part == "eca":
                parts.append(f"{attn}.conv")
            else:
                parts.append(_IN_BLOCK.get(part, part))
        return ".".join(parts + [param])
    name = _STEM.get(first) or _TOP.get(first) or first
    return ".".join([name] + rest + [param])


def _torch_shape(keras_shape, timm_key):
    """The PyTorch layout of a Keras weight of `keras_shape`."""
    shape = tuple(keras_shape)
    if len(shape) == 4:  # HWIO conv kernel -> OIHW
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 3:  # ECA (k, 1, 1) -> Conv1d (1, 1, k)
        return (shape[2], shape[1], shape[0])
    if len(shape) == 2:  # Dense (in, out): Linear, or an SE 1x1 conv
        if ".fc1." in timm_key or ".fc2." in timm_key:
            return (shape[1], shape[0], 1, 1)
        return (shape[1], shape[0])
    if timm_key.endswith(".gain"):
        return (shape[0], 1, 1, 1)
    return shape


def _to_keras(value, keras_shape):
    value = np.asarray(value)
    if value.ndim == 4 and len(keras_shape) == 4:
        return np.transpose(value, (2, 3, 1, 0))
    if value.ndim == 3:
        return np.transpose(value, (2, 1, 0))
    if len(keras_shape) == 2:
        return value.reshape(value.shape[0], value.shape[1]).T
    return value.reshape(keras_shape)


def timm_targets(model, skip_layers=(), stats=None):
    """`{timm key: (keras path, variable, expected torch shape)}` for every
    weight of `model` outside `skip_layers` (one walk of the model)."""
    positions = _block_positions(model)
    targets = {}
    for path, _, own in walk.walk(model, skip_layers, stats):
        for var in own:
            weight = walk.weight_name(var)
            key = timm_name(path, weight, positions)
            targets[key] = (f"{path}/{weight}", var,
                            _torch_shape(var.shape, key))
    return targets


# ---------------------------------------------------------------------------
# Checks.

_BLOCK_KEY = re.compile(r"^stages\.(\d+)\.(\d+)\.")


def signature(keys):
    """A layout's signature from its state-dict keys: (blocks per stage,
    attention "se"/"eca"/None, skip gains, stem "deep"/"single")."""
    blocks = {}
    for key in keys:
        m = _BLOCK_KEY.match(key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    depths = tuple(len(blocks[s]) for s in sorted(blocks))
    attention = ("eca" if any(k.endswith(".conv.weight") and ".attn" in k
                              for k in keys) else
                 "se" if any(".fc1." in k for k in keys) else None)
    skip = any(k.endswith(".skipinit_gain") for k in keys)
    stem = ("deep" if any(k.startswith("stem.conv1.") for k in keys) else
            "single" if any(k.startswith("stem.conv.") for k in keys)
            else None)
    return depths, attention, skip, stem


def _describe_signature(sig):
    depths, attention, skip, stem = sig
    names = [name for name, (_, *s) in presets.TIMM_ARCHITECTURES.items()
             if tuple(s) == tuple(sig)]
    like = f" (timm's {' or '.join(names)} layout)" if names else ""
    return (f"blocks per stage {depths}, "
            f"{attention.upper() + ' attention' if attention else 'no attention'}"
            f", {'with' if skip else 'no'} skip gains, {stem} stem{like}")


def match(state, model, *, skip_layers=(), classes=None,
          source="state dict", stats=None):
    """Strict check of a timm state dict against `model` (one walk of the
    model, one check per tensor); returns `[(variable, value)]` to assign,
    values already in Keras layout. Raises before anything is assigned:

    * `WrongArchitectureError`: the file's layout (blocks per stage,
      attention, skip gains, stem) is not the model's; names both.
    * `MissingTensorError`: model weights the file lacks.
    * `UnexpectedTensorError`: tensors the model has no weight for.
    * `TensorShapeError`: a tensor of another shape.

    Layers under `skip_layers` keep their values and the file's tensors
    for them are not loaded; with `classes`, a skipped classifier's
    `head.fc.*` is still checked to have `classes` outputs.
    """
    skip_layers = tuple(str(p).strip("/") for p in skip_layers)
    positions = _block_positions(model)
    targets = timm_targets(model, skip_layers, stats)
    # A skipped layer's tensors: its timm name with an empty weight name.
    prefixes = tuple(timm_name(p, "", positions) for p in skip_layers)
    keys = [k for k in state if not k.startswith(prefixes)]
    found, wanted = signature(keys), signature(targets)
    if found != wanted:
        raise WrongArchitectureError(
            f"{source} is not a state dict for model '{model.name}': the "
            f"file has {_describe_signature(found)}; the model needs "
            f"{_describe_signature(wanted)}. Wrong variant?")
    missing, wrong, pairs = [], [], []
    for key, (path, var, shape) in targets.items():
        if stats is not None:
            stats.checks[key] += 1
        value = state.get(key)
        if value is None:
            missing.append(f"'{key}' (for {path})")
        elif tuple(value.shape) != shape:
            wrong.append(f"'{key}': file {tuple(value.shape)}, model needs "
                         f"{shape} (for {path})")
        else:
            pairs.append((var, _to_keras(value, tuple(var.shape))))
    if missing:
        raise MissingTensorError(
            f"{source} lacks {len(missing)} tensor(s) of model "
            f"'{model.name}': " + first_n(missing))
    unexpected = [f"'{k}' {tuple(state[k].shape)}" for k in keys
                  if k not in targets]
    if unexpected:
        raise UnexpectedTensorError(
            f"{source} has {len(unexpected)} tensor(s) model "
            f"'{model.name}' has no weight for: " + first_n(unexpected))
    if "head.fc." in prefixes and classes is not None \
            and "head.fc.weight" in state:
        got = tuple(state["head.fc.weight"].shape)
        if got[:1] != (classes,):
            wrong.append(f"'head.fc.weight': file {got}, expected "
                         f"{classes} classes")
    if wrong:
        raise TensorShapeError(
            f"{source} does not fit model '{model.name}' (wrong variant?): "
            + first_n(wrong))
    return pairs


def check_state(state, model, *, skip_layers=(), classes=None,
                source="state dict"):
    """`match` without assigning: raises if `state` does not fit."""
    match(state, model, skip_layers=skip_layers, classes=classes,
          source=source)


def classifier_fits(state, model):
    """True when the file's `head.fc` has the shapes of the model's
    classifier `linear` (False when either has none)."""
    try:
        layer = model.get_layer("linear")
    except ValueError:
        return False
    positions = _block_positions(model)
    for var in layer.weights:
        key = timm_name("linear", walk.weight_name(var), positions)
        value = state.get(key)
        if value is None or tuple(value.shape) != _torch_shape(var.shape,
                                                               key):
            return False
    return True
