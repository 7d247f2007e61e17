"""Helpers for the training tests: tiny image folders and a subprocess
runner for `python -m training.train`."""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "training" / "demo_data"
TINY_CONFIG = {  # smaller than DeepMind's tiny config: fast on 2 cores
    "width": [16, 32, 32, 32], "depth": [1, 1, 1, 1],
    "group_width": [8, 8, 8, 8], "expansion": [0.5, 0.5, 0.5, 0.5],
    "big_width": [True, True, True, True], "strides": [1, 2, 2, 2],
    "se_ratio": 0.5, "alpha": 0.2, "activation": "gelu",
    "final_conv_mult": 2, "use_two_convs": True, "train_imsize": 32,
    "test_imsize": 32, "RA_level": "205", "drop_rate": 0.1,
    "stochdepth_rate": 0.1}
#: The program tests' model (`write_config`): TINY_CONFIG's first two stages,
#: half the blocks to trace in every `python -m training.train` run.
PROGRAM_CONFIG = dict(TINY_CONFIG, width=[16, 32], depth=[1, 1],
                      group_width=[8, 8], expansion=[0.5, 0.5],
                      big_width=[True, True], strides=[1, 2])


def make_folder(root, classes=3, train=8, test=4):
    """root/{train,test}/<class>/*.jpg with real CIFAR-10 JPEGs from the
    demo sample."""
    root = pathlib.Path(root)
    for split, n in (("train", train), ("test", test)):
        for c in sorted(os.listdir(DEMO_DATA / split))[:classes]:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for f in sorted(os.listdir(DEMO_DATA / split / c))[:n]:
                shutil.copy(DEMO_DATA / split / c / f, root / split / c / f)
    return root


def write_config(path, config=None):
    """`config` (PROGRAM_CONFIG by default) as a JSON file at `path`."""
    path = pathlib.Path(path)
    path.write_text(json.dumps(PROGRAM_CONFIG if config is None else config))
    return path


def tiny_flags(config, dataset, model_dir, **overrides):
    flags = dict(variant=str(config), dataset=dataset,
                 model_dir=str(model_dir), batch_size=8, train_steps=4,
                 image_size=32, eval_image_size=32, eval_crop_padding=0,
                 mixed_precision="none", jit_compile="false",
                 warmup_epochs=0.5, lr=0.2, ema_decay=0.99, seed=1)
    flags.update(overrides)
    return [f"--{k}={v}" for k, v in flags.items()]


def env(**extra):
    e = dict(os.environ)
    e.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO),
             CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    e.pop("TF_CONFIG", None)
    e.update(extra)
    return e


def train_cmd(args):
    return [sys.executable, "-m", "training.train", *args]


def run_train(args, timeout=300, **env_extra):
    return subprocess.run(train_cmd(args), cwd=REPO, env=env(**env_extra),
                          capture_output=True, text=True, timeout=timeout)


def start(cmd, log_dir, name, **env_extra):
    """`cmd` started in the background (in the repository, `env()`), to run
    side by side with other work; its output goes to files in `log_dir` (a
    pipe nobody reads could fill and block it). `finish` waits for it."""
    log_dir = pathlib.Path(log_dir)
    with open(log_dir / f"{name}.out", "w") as out, \
            open(log_dir / f"{name}.err", "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env(**env_extra),
                                stdout=out, stderr=err)
    proc.log_files = (log_dir / f"{name}.out", log_dir / f"{name}.err")
    return proc


def start_train(args, log_dir, name, **env_extra):
    """`python -m training.train ARGS`, started with `start`."""
    return start(train_cmd(args), log_dir, name, **env_extra)


def finish(proc, timeout=400):
    """Waits for a `start` or `start_train` run: a CompletedProcess with its output
    (killed, and an error, after `timeout` seconds)."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    out, err = (f.read_text() for f in proc.log_files)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def model_weights(path):
    """The weights of a saved .keras model or .weights.h5 file, by path."""
    import keras  # pylint: disable=import-outside-toplevel
    import keras_nfnets  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    model = keras.models.load_model(path, compile=False)
    return {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}


# Quick XLA:CPU compiles (about a third less time here); tests that compare
# two JAX runs use the same flags on both.
FAST_XLA = ("--xla_backend_optimization_level=0 "
            "--xla_llvm_disable_expensive_passes=true")

def backend_env(backend, **extra):
    """The environment of a process on Keras `backend`: CPU only, quick
    XLA compiles (FAST_XLA after any XLA_FLAGS in `extra`)."""
    e = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
             CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu", **extra)
    e["XLA_FLAGS"] = " ".join(filter(None, (e.get("XLA_FLAGS"), FAST_XLA)))
    return e


def start_check(cmd, env_vars):
    """A check script started in its own process (its output piped: it
    prints one `RESULT <json>` line); `check_result` collects it."""
    return subprocess.Popen(cmd, env=env_vars, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def check_result(proc, timeout=900, what="the check"):
    """The JSON of the `RESULT ` line a `start_check` process printed (it
    is killed after `timeout` s); an AssertionError with its stderr if it
    printed none."""
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        stop_checks([proc])
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError(f"{what} failed:\n{err[-4000:]}")


class BackendChecks:
    """One check on each installed backend of `backends`, each in its own
    process: the first `result(backend)` starts them all at once (side by
    side on the 2 cores), later calls collect; `stop()` kills those never
    collected. `command(backend)` gives `(argv, environment)`."""

    def __init__(self, command, backends=("jax", "torch"), timeout=900):
        self.command, self.backends, self.timeout = command, backends, timeout
        self.started, self.results = {}, {}

    def result(self, backend):
        import importlib.util  # pylint: disable=import-outside-toplevel
        import pytest  # pylint: disable=import-outside-toplevel
        if importlib.util.find_spec(backend) is None:
            pytest.skip(f"{backend} is not installed")
        if not self.started:
            self.started = {b: start_check(*self.command(b))
                            for b in self.backends
                            if importlib.util.find_spec(b) is not None}
        if backend not in self.results:
            self.results[backend] = check_result(
                self.started[backend], self.timeout, what=backend)
        return self.results[backend]

    def stop(self):
        stop_checks(self.started.values())


def stop_checks(procs):
    """Kills the processes of `procs` that still run."""
    for proc in procs:
        if isinstance(proc, subprocess.Popen) and proc.poll() is None:
            proc.kill()
            proc.communicate()


_JAX_PREDICT = """
import json, sys
import numpy as np
import keras
import keras_nfnets  # registers the NFNet classes
model = keras.models.load_model(sys.argv[1], compile=False)
x = np.load(sys.argv[2])
print("RESULT " + json.dumps(np.asarray(model.predict(x, verbose=0)).tolist()))
"""


def assert_jax_model_loads_on_tensorflow(model_path, tmp_path, image_size=32):
    """A .keras file trained under JAX loads under TensorFlow (this
    process) and predicts what it predicts under JAX (a subprocess)."""
    import keras  # pylint: disable=import-outside-toplevel
    import keras_nfnets  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    assert keras.backend.backend() == "tensorflow"
    x = np.random.default_rng(0).uniform(
        0, 255, (4, image_size, image_size, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    out = subprocess.run(
        [sys.executable, "-c", _JAX_PREDICT, str(model_path),
         str(tmp_path / "x.npy")], cwd=REPO, capture_output=True, text=True,
        env=env(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_XLA),
        timeout=300)
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    assert line, out.stderr[-3000:]
    on_jax = np.array(json.loads(line[0][len("RESULT "):]))
    on_tf = keras.models.load_model(str(model_path), compile=False).predict(
        x, verbose=0)
    assert on_tf.shape == on_jax.shape
    np.testing.assert_allclose(on_tf, on_jax, rtol=1e-5, atol=1e-5)


DATASETS_SCRIPT = pathlib.Path(os.environ.get(
    "KERAS_NFNETS_SHARED", REPO.parent / "shared")) / "datasets" / \
    "make_cifar10_tfds.py"


def run_in_process(args, capsys):
    """`python -m training.train ARGS` in this process: the flags parsed,
    `training.program.main` run, the flags restored. A CompletedProcess
    (returncode 2 for a UsageError) with what it printed. For runs whose
    separate process is not what is tested: bad flags, a refused resume,
    a finished run."""
    from training import flags  # pylint: disable=import-outside-toplevel
    from training import program  # pylint: disable=import-outside-toplevel
    capsys.readouterr()
    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(["train", *[str(a) for a in args]])
        program.main([])
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        flags.FLAGS.unparse_flags()
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def tiny_classifier():
    """TINY_CONFIG's NFNet (10 classes, 32 px, logits, no dropout or
    stochastic depth), seeded: the same weights on every call and in every
    process."""
    import keras  # pylint: disable=import-outside-toplevel
    import keras_nfnets  # pylint: disable=import-outside-toplevel
    keras.utils.set_random_seed(0)
    return keras_nfnets.NFNet(
        dict(TINY_CONFIG), classes=10, input_shape=(32, 32, 3),
        classifier_activation=None, include_preprocessing=False,
        drop_rate=0.0, stochdepth_rate=0.0, seed=1)
