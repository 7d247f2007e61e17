"""The training program's installed entry point.

From a clone, the program is `python -m training.train` (the top-level
`training/` folder). The wheel ships that folder as `keras_nfnets.training`
(no top-level `training` package is installed), and this module runs it:

    keras-nfnets-train --demo              # console script
    python -m keras_nfnets.train --demo    # the same
    keras-nfnets-evaluate --weights=/tmp/keras_nfnets_demo/model.keras \
        --dataset=folder:DEMO              # training.evaluate

The training program needs the `train` extra
(`pip install "keras_nfnets[train]"`: TensorFlow for tf.data,
tensorflow-datasets, absl-py, tensorboard); without it the program exits
with a message naming that extra. `--backend` must reach Keras before Keras is imported, and
importing `keras_nfnets` imports Keras, so when `--backend` asks for another
backend than the one loaded, the program restarts itself once with
`KERAS_BACKEND` set.
"""

import importlib
import importlib.util
import os
import sys

_RESTARTED = "KERAS_NFNETS_TRAIN_RESTARTED"


def _package():
    """`keras_nfnets.training` when installed, else the clone's `training`."""
    if importlib.util.find_spec("keras_nfnets.training") is not None:
        return "keras_nfnets.training"
    return "training"


def _requested_backend(argv):
    for i, arg in enumerate(argv):
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
        if arg == "--backend" and i + 1 < len(argv):
            return argv[i + 1]
    return os.environ.get("KERAS_BACKEND") or "tensorflow"


def _run(program, entry, argv=None):
    argv = list(sys.argv if argv is None else argv)
    # tf.data is the input pipeline on every backend: TensorFlow too.
    missing = [name for module, name in (("tensorflow", "tensorflow"),
                                         ("tensorflow_datasets",
                                          "tensorflow-datasets"),
                                         ("absl", "absl-py"),
                                         ("tensorboard", "tensorboard"))
               if importlib.util.find_spec(module) is None]
    if missing:
        sys.exit(f"error: the training program needs the 'train' extra "
                 f"(missing: {', '.join(missing)}): "
                 "pip install \"keras_nfnets[train]\"")
    backend = _requested_backend(argv[1:])
    import keras  # pylint: disable=import-outside-toplevel
    if (backend in ("tensorflow", "jax", "torch")
            and keras.backend.backend() != backend
            and not os.environ.get(_RESTARTED)):
        env = dict(os.environ, KERAS_BACKEND=backend, **{_RESTARTED: "1"})
        os.execve(sys.executable, [
            sys.executable, "-c",
            f"import keras_nfnets.train as t; t.{entry}()", *argv[1:]], env)
    try:
        from absl import app  # pylint: disable=import-outside-toplevel
        module = importlib.import_module(f"{_package()}.{program}")
    except ImportError as e:
        sys.exit(f"error: the training program needs the 'train' extra "
                 f"({e}): pip install \"keras_nfnets[train]\"")
    if program == "evaluate":
        module.define_flags()
    app.run(module.main, argv=argv)


def demo_data_dir():
    """The folder of the demo's images and config (shipped with the
    package; `training/demo_data` in a clone)."""
    spec = importlib.util.find_spec(_package())
    return os.path.join(os.path.dirname(spec.origin), "demo_data")


def main(argv=None):
    """`keras-nfnets-train`: runs `training.train`."""
    argv = list(sys.argv if argv is None else argv)
    if argv[1:] == ["--demo_data_dir"]:
        print(demo_data_dir())
        return
    _run("train", "main", argv)


def evaluate_main(argv=None):
    """`keras-nfnets-evaluate`: runs `training.evaluate`."""
    _run("evaluate", "evaluate_main", argv)


if __name__ == "__main__":
    main()
