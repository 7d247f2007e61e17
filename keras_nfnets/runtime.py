"""Device-dependent choices: rematerialization and grouped convolutions.

Both "auto" settings are decided when a layer is traced (each call of
`resolve_remat` / `grouped_conv_mode` asks the devices again), never when it
is built or loaded, and nothing is cached: a model built (or a `.keras` file
saved) on CPU takes the accelerator's choice when it runs on a GPU/TPU, and a
TPU initialised after the model was built is seen.

* `remat="auto"` (a block argument): recompute each block in the backward
  pass when Keras sees no accelerator (CPU training is memory-bound; see
  docs/performance.md), not on GPU/TPU.
* grouped convolutions: "split" runs one convolution per group and
  concatenates (fast on CPU, where TensorFlow's grouped convolution is much
  slower); "native" hands the grouped convolution to the backend (right on
  GPU and TPU); "auto" picks "split" when Keras sees no accelerator. Both
  give the same numbers.

The one piece of state is the user's explicit grouped-convolution choice,
`set_grouped_conv_mode(mode)`: a setting like `keras.config`'s (not a cache
of any device answer), read each time a layer is traced. It can also be
used as a context manager, which restores the previous choice on exit:

```python
with keras_nfnets.set_grouped_conv_mode("native"):
    y = model(x)        # traced here: native grouped convolutions
```
"""

import keras

GROUPED_CONV_MODES = ("auto", "split", "native")
_user_choice = {"grouped_conv": "auto"}  # the user's setting, not a cache


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
    """Whether a block recomputes itself in the backward pass: `"auto"` is
    True when Keras sees no accelerator now; `True`/`False` are forced.
    Called at trace time; the saved config keeps `"auto"`.

    Example:
    >>> keras_nfnets.runtime.resolve_remat(True)
    True
    """
    remat = check_remat(remat)
    return (not on_accelerator()) if remat == "auto" else remat


class _Restore:
    """What `set_grouped_conv_mode` returns: entering does nothing (the mode
    is already set), leaving restores the previous choice."""

    def __init__(self, previous):
        self.previous = previous

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _user_choice["grouped_conv"] = self.previous
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
    return _Restore(previous)


def grouped_conv_mode(mode=None):
    """The effective grouped-convolution mode ("split" or "native") of
    `mode` (default: the user's `set_grouped_conv_mode` choice), resolving
    "auto" now (see `on_accelerator`).

    Example:
    >>> keras_nfnets.runtime.grouped_conv_mode("native")
    'native'
    """
    mode = check_grouped_conv_mode(
        _user_choice["grouped_conv"] if mode is None else mode)
    if mode != "auto":
        return mode
    return "native" if on_accelerator() else "split"
