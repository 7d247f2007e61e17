"""Device- and memory-dependent choices: rematerialization, grouped
convolutions, the training step's convolution gradients and the fused
elementwise backward passes.

Both "auto" settings are decided when a layer is traced (each call of
`resolve_remat` / `grouped_conv_mode` asks again), never when it is built or
loaded, and nothing is cached: a model built (or a `.keras` file saved) on
one machine takes the choice of the machine it trains on, and a TPU
initialised after the model was built is seen.

* `remat="auto"` (a block argument): recompute each block in the backward
  pass when the activations a training step keeps for it would not fit, or
  come close to, the memory available to the process (`remat_needed`). A
  keras_nfnets model decides once per traced training step, from the
  step's batch and image size (`NFNetModel.call`), says so in one line, and
  its blocks follow (`remat_scope`); a block used outside one, or a step
  whose sizes are unknown at trace time, falls back to the device rule: on
  when Keras sees no accelerator (`on_accelerator`). At inference nothing
  is kept for a backward pass: no remat.
* grouped convolutions: "split" runs one convolution per group and
  concatenates (fast on CPU, where TensorFlow's grouped convolution is much
  slower); "native" hands the grouped convolution to the backend (right on
  GPU and TPU); "auto" picks "split" when Keras sees no accelerator. Both
  give the same numbers. While a keras_nfnets model is exported to ONNX or
  LiteRT from the TensorFlow backend (`export_scope`), a grouped
  convolution is one convolution op with groups (`grouped_conv_mode`
  returns "graph"), which both converters turn into their own grouped
  convolution: the exported graph is not run by TensorFlow's CPU kernels.
* the training step's own convolution formulations on the TensorFlow
  backend (`own_conv_gradients`): 1x1 convolutions as matrix products,
  and k x k ones with forward-convolution gradients where TensorFlow's CPU
  kernels are Eigen's (not where they are oneDNN's: the CPU decides).
* fused elementwise backward passes (`fused`): on the TensorFlow backend,
  the closed-form gradients of the activations and of weight
  standardization (a dozen elementwise ops each, memory-bound on CPU) are
  compiled by XLA into one kernel each (`tf.function(jit_compile=True)`);
  JAX compiles the whole step anyway, PyTorch runs them as they are.
  `set_elementwise_fusion(False)` turns it off.

The one piece of state is the user's explicit grouped-convolution choice,
`set_grouped_conv_mode(mode)`: a setting like `keras.config`'s (not a cache
of any device answer), read each time a layer is traced. It can also be
used as a context manager, which restores the previous choice on exit:

```python
with keras_nfnets.set_grouped_conv_mode("native"):
    y = model(x)        # traced here: native grouped convolutions
```
"""

import contextlib
import contextvars
import os

import keras

from keras_nfnets import compat

GROUPED_CONV_MODES = ("auto", "split", "native")
_user_choice = {"grouped_conv": "auto",  # the user's settings, not a cache
                "fusion": True}
#: The export format being traced by `NFNetModel.export` (None: not
#: exporting). Set only inside `export_scope`.
_export_format = contextvars.ContextVar("keras_nfnets_export_format",
                                        default=None)
#: Formats whose converters take one grouped convolution op from a
#: TensorFlow graph (tf2onnx, the LiteRT converter).
GRAPH_GROUPED_CONV_FORMATS = ("onnx", "litert", "tflite")
#: The "auto" remat decision of the model being traced (None: no model
#: decided; the device rule applies). Set only inside `remat_scope`.
_auto_remat = contextvars.ContextVar("keras_nfnets_auto_remat",
                                     default=None)
#: `remat_needed`'s rule: remat when the kept activations would take more
#: than this share of the available memory. A training step's peak holds
#: more than what its blocks keep (the backward pass's own tensors, the
#: allocator's pools): `make bench-remat` measures F0's step with and
#: without remat in a memory cgroup (docs/performance.md).
REMAT_MEMORY_SHARE = 0.6


def on_accelerator():
    """True when Keras sees a GPU/TPU now (queried each time: the device
    list can grow, e.g. after a TPU system is initialised).

    Example:
    >>> keras_nfnets.runtime.on_accelerator()   # False on a CPU machine
    False
    """
    try:
        devices = keras.distribution.list_devices()
    except Exception:  # pylint: disable=broad-except
        # keras.distribution has no device query on the torch backend.
        if keras.backend.backend() != "torch":
            return False
        import torch  # pylint: disable=import-outside-toplevel
        return bool(torch.cuda.is_available())
    return any(not str(d).lower().startswith("cpu") for d in devices)


def check_remat(remat):
    """Validates a `remat` setting: True, False or "auto".

    Example:
    >>> keras_nfnets.runtime.check_remat("auto")
    'auto'
    """
    if remat == "auto" or isinstance(remat, bool):
        return remat
    raise ValueError(f"remat must be True, False or 'auto', got {remat!r}")


def resolve_remat(remat):
    """Whether a block recomputes itself in the backward pass: `True` /
    `False` are forced; `"auto"` follows the decision of the keras_nfnets
    model being traced (`remat_scope`; by memory, see `remat_needed`), and
    outside one the device rule: True when Keras sees no accelerator.
    Called at trace time; the saved config keeps `"auto"`.

    Example:
    >>> keras_nfnets.runtime.resolve_remat(True)
    True
    """
    remat = check_remat(remat)
    if remat != "auto":
        return remat
    decided = _auto_remat.get()
    return (not on_accelerator()) if decided is None else decided


@contextlib.contextmanager
def remat_scope(decision):
    """Within the block, blocks with `remat="auto"` take `decision` (True,
    False, or None for the device rule): how a model hands its blocks the
    choice it made for one traced step.

    Example:
    >>> with keras_nfnets.runtime.remat_scope(False):
    ...     keras_nfnets.runtime.resolve_remat("auto")
    False
    """
    token = _auto_remat.set(decision)
    try:
        yield
    finally:
        _auto_remat.reset(token)


def _read_int(path):
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_limits():
    """(limit file, usage file) of this process's memory cgroup, v2 and
    v1, from /proc/self/cgroup."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        path = path.lstrip("/")
        if controllers == "":
            base = os.path.join("/sys/fs/cgroup", path)
            found.append((os.path.join(base, "memory.max"),
                          os.path.join(base, "memory.current")))
        elif "memory" in controllers.split(","):
            base = os.path.join("/sys/fs/cgroup/memory", path)
            found.append((os.path.join(base, "memory.limit_in_bytes"),
                          os.path.join(base, "memory.usage_in_bytes")))
    return found


def _host_available_bytes():
    """Bytes of host memory this process can still use: the smallest of
    the kernel's MemAvailable and its memory cgroup's limit minus usage
    (v2 or v1); psutil elsewhere; None when nothing says."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit, usage in _cgroup_limits():
        limit, usage = _read_int(limit), _read_int(usage)
        if limit is not None and usage is not None and limit < 1 << 60:
            found.append(max(limit - usage, 0))
    if not found:
        try:
            import psutil  # pylint: disable=import-outside-toplevel
            found.append(int(psutil.virtual_memory().available))
        except ImportError:
            return None
    return min(found)


def _device_available_bytes():
    """Free memory of the first accelerator, where the backend tells it
    (JAX's memory_stats, torch.cuda.mem_get_info); None otherwise (e.g.
    TensorFlow on a GPU or TPU, which does not report a limit)."""
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax  # pylint: disable=import-outside-toplevel
            stats = jax.local_devices()[0].memory_stats() or {}
            if "bytes_limit" in stats:
                return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
        elif backend == "torch":
            import torch  # pylint: disable=import-outside-toplevel
            return int(torch.cuda.mem_get_info()[0])
    except Exception:  # pylint: disable=broad-except
        return None
    return None


def available_memory():
    """`(bytes, where)`: the memory a training step can still use now, on
    the accelerator Keras sees or else on the host, and which of the two;
    `bytes` is None when it cannot be told.

    Example:
    >>> free, where = keras_nfnets.runtime.available_memory()
    >>> where
    'host'
    """
    if on_accelerator():
        return _device_available_bytes(), "accelerator"
    return _host_available_bytes(), "host"


def remat_needed(activation_bytes, available_bytes):
    """The memory rule of `remat="auto"`: True when the activations a
    training step would keep for its backward pass without remat,
    `activation_bytes`, take more than `REMAT_MEMORY_SHARE` of
    `available_bytes` (the rest is left for the backward pass's own
    tensors, the gradients and the optimizer's update).

    Example:
    >>> keras_nfnets.runtime.remat_needed(3e9, 16e9)
    False
    >>> keras_nfnets.runtime.remat_needed(12e9, 16e9)
    True
    """
    return activation_bytes > REMAT_MEMORY_SHARE * available_bytes


class _RestoreSetting:
    """What `set_grouped_conv_mode` and `set_elementwise_fusion` return:
    entering does nothing (the setting is already made), leaving restores
    the previous one."""

    def __init__(self, key, previous):
        self.key, self.previous = key, previous

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _user_choice[self.key] = self.previous
        return False


def check_grouped_conv_mode(mode):
    """Validates a grouped-convolution mode: "auto", "split" or "native"."""
    if mode not in GROUPED_CONV_MODES:
        raise ValueError(
            f"grouped conv mode must be 'auto', 'split' or 'native', got "
            f"{mode!r}")
    return mode


def set_grouped_conv_mode(mode):
    """Chooses how grouped convolutions run: "auto", "split" or "native".

    Takes effect for layers traced after the call (a model already traced
    by `tf.function` keeps its graph). Returns a context manager that
    restores the previous choice when its block ends.

    Example:
    >>> keras_nfnets.set_grouped_conv_mode("native")  # from now on
    >>> with keras_nfnets.set_grouped_conv_mode("split"):
    ...     pass                                       # back to "native" after
    """
    previous = _user_choice["grouped_conv"]
    _user_choice["grouped_conv"] = check_grouped_conv_mode(mode)
    return _RestoreSetting("grouped_conv", previous)


def grouped_conv_mode(mode=None):
    """The effective grouped-convolution mode ("split" or "native") of
    `mode` (default: the user's `set_grouped_conv_mode` choice), resolving
    "auto" now (see `on_accelerator`); "graph" while an ONNX or LiteRT
    export traces the model on TensorFlow (`export_scope`).

    Example:
    >>> keras_nfnets.runtime.grouped_conv_mode("native")
    'native'
    """
    if mode is None and _graph_grouped_conv():
        return "graph"
    mode = check_grouped_conv_mode(
        _user_choice["grouped_conv"] if mode is None else mode)
    if mode != "auto":
        return mode
    return "native" if on_accelerator() else "split"


def exporting():
    """Whether a model is being traced by `NFNetModel.export`
    (`export_scope`): the layers then trace their plain forward ops,
    without the custom gradients of training. An exported artefact has no
    backward pass, and OpenVINO's converter took the tensors a custom
    gradient saves for extra model outputs."""
    return _export_format.get() is not None


def _graph_grouped_conv():
    return (_export_format.get() in GRAPH_GROUPED_CONV_FORMATS
            and keras.backend.backend() == "tensorflow")


@contextlib.contextmanager
def export_scope(format):  # pylint: disable=redefined-builtin
    """Marks the model traced inside it as exported to `format`
    (`NFNetModel.export` enters it): for ONNX and LiteRT from the
    TensorFlow backend, grouped convolutions are traced as one grouped
    convolution op (`graph_grouped_conv`), which the converters map to
    their own grouped convolution, instead of one convolution per group
    (TensorFlow's CPU split) or Keras's XLA-compiled call (which the
    converters cannot read)."""
    token = _export_format.set(format)
    try:
        yield
    finally:
        _export_format.reset(token)


def graph_grouped_conv(x, kernel, strides, padding, dilation_rate):
    """One TensorFlow grouped convolution op (NHWC; `kernel` HWIO with
    `I = channels / groups`), for a graph that is converted, not run, by
    TensorFlow on CPU (`export_scope`)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return tf.nn.convolution(x, kernel, strides, padding.upper(),
                             dilations=dilation_rate)


def own_conv_gradients(pointwise=True):
    """Whether a training step computes `WSConv2D`'s stride-1 convolutions
    in keras_nfnets' own formulations, on the TensorFlow backend, whose
    CPU gradient kernels for a convolution (`Conv2DBackpropInput`,
    `Conv2DBackpropFilter`) can take several times the forward
    convolution's time (docs/performance.md, "Where a step's time goes"):

    * `pointwise=True`: a 1x1 convolution as one matrix product over the
      channels (its gradients are matrix products); on TensorFlow always.
    * `pointwise=False`: a "same" k x k convolution with both gradients as
      forward convolutions (`layers.ws_conv.same_conv_with_conv_gradients`);
      only where TensorFlow's CPU kernels are Eigen's. Where they are
      oneDNN's (`compat.tensorflow_uses_onednn`: TensorFlow's default on
      x86 CPUs with AVX512_VNNI, AVX512_BF16 or AMX), oneDNN's gradient
      kernels beat the forward convolutions and the transposes they need
      (docs/performance.md, "The CPU decides").

    Inference and the other backends keep the convolution and its own
    gradients. The values are the same sums in another order (float
    rounding apart). Asked at trace time.

    Example:
    >>> keras_nfnets.runtime.own_conv_gradients()   # on TensorFlow
    True
    """
    if keras.backend.backend() != "tensorflow":
        return False
    if pointwise:
        return True
    return not compat.tensorflow_uses_onednn()


def set_elementwise_fusion(enabled):
    """Turns the XLA-fused elementwise backward passes on the TensorFlow
    backend on (the default) or off, for steps traced after the call;
    returns a context manager that restores the previous setting.

    Example:
    >>> with keras_nfnets.set_elementwise_fusion(False):
    ...     pass  # steps traced here run the unfused gradient ops
    """
    previous = _user_choice["fusion"]
    _user_choice["fusion"] = bool(enabled)
    return _RestoreSetting("fusion", previous)


def fused(fn):
    """`fn` (elementwise ops and reductions on its tensor arguments), run
    as one XLA-compiled kernel on the TensorFlow backend when the fusion is
    on (`set_elementwise_fusion`), as itself otherwise. Decided at each
    call, so at trace time. The values are `fn`'s up to float rounding (XLA
    may evaluate `tanh` and reorder sums differently).

    Example:
    >>> f = keras_nfnets.runtime.fused(lambda x, y: x * y + 1.0)
    >>> f(keras.ops.ones((2,)), keras.ops.ones((2,)))  # [2., 2.]
    """
    compiled = {}

    def call(*args):
        if not (_user_choice["fusion"]
                and keras.backend.backend() == "tensorflow"):
            return fn(*args)
        # One function per static shape and dtype of the arguments: each
        # is traced once (no retracing, no relaxed shapes: `fn` sees its
        # tensors' shapes), and compiled by XLA once per size.
        key = tuple((tuple(a.shape), str(a.dtype)) for a in args)
        if key not in compiled:
            import tensorflow as tf  # pylint: disable=import-outside-toplevel
            compiled[key] = tf.function(fn, jit_compile=True,
                                        autograph=False)
        return compiled[key](*args)

    return call
