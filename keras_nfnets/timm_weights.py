"""timm's state dicts in safetensors: reading, the name rule, checks and
assignment.

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

from keras_nfnets import presets
from keras_nfnets import weights as nf_weights

CheckpointError = nf_weights.CheckpointError


class CorruptCheckpointError(CheckpointError):
    """The file is not a readable safetensors file."""


class TruncatedCheckpointError(CorruptCheckpointError):
    """The file ends before the tensors its header announces."""


class WrongArchitectureError(CheckpointError):
    """The state dict is for another architecture than the model."""


class MissingTensorError(CheckpointError):
    """The model has a weight the state dict lacks."""


class UnexpectedTensorError(CheckpointError):
    """The state dict has a tensor the model has no weight for."""


class TensorShapeError(CheckpointError):
    """A tensor has another shape than the model's weight."""


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
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as e:
        raise CorruptCheckpointError(
            f"{path} is a corrupt safetensors file: its header does not "
            f"parse ({type(e).__name__}: {e}).") from None
    if 8 + n + end > size:
        raise TruncatedCheckpointError(
            f"{path} is truncated: its header announces {end} bytes of "
            f"tensor data, the file holds {size - 8 - n} (an interrupted "
            "download?).")
    from safetensors import numpy as st_numpy  # pylint: disable=import-outside-toplevel
    try:
        state = st_numpy.load_file(path)
    except Exception as e:  # safetensors' own error type
        raise CorruptCheckpointError(
            f"{path} is a corrupt safetensors file ({type(e).__name__}: "
            f"{e}).") from None
    return {k: np.asarray(v, dtype=np.float32) for k, v in state.items()}


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


def timm_targets(model):
    """`{timm key: (keras path, variable, expected torch shape)}` for every
    weight of `model`."""
    positions = _block_positions(model)
    targets = {}
    for path, layer in nf_weights.named_modules(model):
        for var in nf_weights.own_weights(layer):
            weight = var.name.split("/")[-1]
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


def check_state(state, model, *, skip_layers=(), classes=None,
                source="state dict"):
    """Strict check of a timm state dict against `model`; raises before
    anything is assigned:

    * `WrongArchitectureError`: the file's layout (blocks per stage,
      attention, skip gains, stem) is not the model's; names both.
    * `MissingTensorError`: model weights the file lacks.
    * `UnexpectedTensorError`: tensors the model has no weight for.
    * `TensorShapeError`: a tensor of another shape.

    With `"linear"` in `skip_layers` (no top) the file's `head.fc.*` are
    not loaded; with `classes` their shape is still checked.
    """
    targets = timm_targets(model)
    skip_head = "linear" in skip_layers
    keys = [k for k in state if not (skip_head and k.startswith("head.fc."))]
    found, wanted = signature(keys), signature(targets)
    if found != wanted:
        raise WrongArchitectureError(
            f"{source} is not a state dict for model '{model.name}': the "
            f"file has {_describe_signature(found)}; the model needs "
            f"{_describe_signature(wanted)}. Wrong variant?")
    missing = [k for k in targets if k not in state]
    if missing:
        raise MissingTensorError(
            f"{source} lacks {len(missing)} tensor(s) of model "
            f"'{model.name}': " + _list(
                f"'{k}' (for {targets[k][0]})" for k in missing))
    unexpected = [k for k in keys if k not in targets]
    if unexpected:
        raise UnexpectedTensorError(
            f"{source} has {len(unexpected)} tensor(s) model "
            f"'{model.name}' has no weight for: " + _list(
                f"'{k}' {tuple(state[k].shape)}" for k in unexpected))
    wrong = [f"'{k}': file {tuple(state[k].shape)}, model needs "
             f"{targets[k][2]} (for {targets[k][0]})"
             for k in targets if tuple(state[k].shape) != targets[k][2]]
    if skip_head and classes is not None and "head.fc.weight" in state:
        got = tuple(state["head.fc.weight"].shape)
        if got[:1] != (classes,):
            wrong.append(f"'head.fc.weight': file {got}, expected "
                         f"{classes} classes")
    if wrong:
        raise TensorShapeError(
            f"{source} does not fit model '{model.name}' (wrong variant?): "
            + _list(wrong))
    return targets


def _list(items, limit=8):
    items = list(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def assign_state(model, state, *, skip_layers=(), classes=None,
                 source="state dict"):
    """Checks (`check_state`) then assigns a timm state dict to `model`."""
    targets = check_state(state, model, skip_layers=skip_layers,
                          classes=classes, source=source)
    for key, (_, var, _) in targets.items():
        var.assign(_to_keras(state[key], tuple(var.shape)).astype(
            var.dtype))


def read_checked(path, model=None, *, skip_layers=(), classes=None):
    """Reads a safetensors file and, with `model`, checks it fits: what
    `pretrained.fetch_checkpoint` verifies a timm download with."""
    state = read_safetensors(path)
    if model is not None:
        check_state(state, model, skip_layers=skip_layers, classes=classes,
                    source=os.fspath(path))
    return state


def load_timm_weights(model, path, skip_layers=()):
    """Loads timm's `model.safetensors` (a state dict) into `model`: what
    `weights=<path>.safetensors` does.

    Example:
    >>> model = keras_nfnets.NFNetF0(weights=None)
    >>> load_timm_weights(model, "dm_nfnet_f0/model.safetensors")
    """
    path = os.fspath(path)
    assign_state(model, read_safetensors(path), skip_layers=skip_layers,
                 source=path)


# ---------------------------------------------------------------------------
# weights="imagenet" from timm's hub.

def timm_base_url():
    """$KERAS_NFNETS_TIMM_WEIGHTS_URL or `presets.TIMM_BASE_URL`."""
    url = os.environ.get(presets.TIMM_URL_ENV) or presets.TIMM_BASE_URL
    return url if url.endswith("/") else url + "/"


def imagenet_file(variant):
    """The file's path below the base URL (the hub's layout):
    `timm/<name>/resolve/main/model.safetensors`."""
    return (f"{presets.TIMM_IMAGENET[variant]['hub_id']}/resolve/main/"
            f"{presets.TIMM_FILE}")


def imagenet_cache_dir(variant):
    """Where the download is kept: `<Keras home>/timm/<name>/`, one folder
    per file (they are all called `model.safetensors`), each with its own
    sha256 record (`models/keras_nfnets_sha256.json`)."""
    from keras_nfnets import pretrained  # pylint: disable=import-outside-toplevel
    home = os.path.dirname(pretrained.cache_folder())
    return os.path.join(
        home, "timm", presets.TIMM_IMAGENET[variant]["hub_id"].split("/")[-1])


def load_imagenet_weights(model, variant, skip_layers=()):
    """Downloads (once), verifies and loads timm's ImageNet weights of
    `variant` (`"ECA-L0"` ...): what `weights="imagenet"` does for the
    models timm trained. Goes through `pretrained.fetch_checkpoint` (Keras'
    `get_file`, the sha256 recorded on first use, a file that fails a check
    removed so that the next call downloads it again). Returns the cached
    file's path."""
    from keras_nfnets import pretrained  # pylint: disable=import-outside-toplevel
    preset = presets.TIMM_IMAGENET[variant]
    folder = os.path.dirname(imagenet_file(variant))
    path, state = pretrained.fetch_checkpoint(
        presets.TIMM_FILE, base_url=timm_base_url() + folder,
        cache_dir=imagenet_cache_dir(variant),
        label=f"{preset['constructor']} (timm's {preset['hub_id']})",
        loader=read_safetensors,
        check=lambda state, path: check_state(
            state, model, skip_layers=skip_layers, classes=1000,
            source=os.fspath(path)))
    assign_state(model, state, skip_layers=skip_layers, classes=1000,
                 source=path)
    return path
