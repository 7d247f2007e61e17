"""`--backend`: the Keras backend the programs train and evaluate on.

Keras reads `KERAS_BACKEND` once, when it is first imported, so
`training.train` and `training.evaluate` call `select_from_argv()` before
anything imports keras. No heavy imports here.

* `tensorflow` (default): the `tf.distribute` path (`--strategy`, `--tpu`:
  TPUStrategy on `tensorflow-tpu`, which stops at 2.20).
* `jax`: `keras.distribution.DataParallel` over every device JAX sees
  (several GPUs, or the TPU chips of a TPU VM with `jax[tpu]`: the modern
  TPU path), reading the same tf.data pipeline as global batches. On
  several hosts (TPU pod slices, GPU clusters), one process per host:
  `training.multihost` (`--jax_distributed`, `--coordinator_address`).
* `torch`: one device.
"""

import os
import sys

BACKENDS = ("tensorflow", "jax", "torch")


def backend_from_argv(argv):
    """The value of `--backend=NAME` / `--backend NAME` in `argv`, or None."""
    for i, arg in enumerate(argv):
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
        if arg == "--backend" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def select_from_argv(argv=None):
    """Sets KERAS_BACKEND from `--backend` before keras is imported. An
    unknown name is left for the flag check to report."""
    name = backend_from_argv(sys.argv[1:] if argv is None else argv)
    if name in BACKENDS:
        os.environ["KERAS_BACKEND"] = name
    return name


def requested_backend(flag_value=None):
    """--backend if given, else KERAS_BACKEND, else tensorflow."""
    return flag_value or os.environ.get("KERAS_BACKEND") or "tensorflow"


def check_active(requested):
    """Returns an error message when keras already runs another backend
    (imported before --backend could take effect), else None."""
    if requested not in BACKENDS:
        return (f"--backend={requested!r}: expected one of "
                f"{', '.join(BACKENDS)}.")
    import keras  # pylint: disable=import-outside-toplevel
    active = keras.backend.backend()
    if active != requested:
        return (f"--backend={requested}: keras was already imported with the "
                f"{active} backend; set KERAS_BACKEND={requested} in the "
                "environment (or pass --backend on the command line of "
                "python -m training.train / training.evaluate).")
    return None
