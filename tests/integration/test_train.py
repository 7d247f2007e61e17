"""The training program end to end: a batch the replicas cannot split, the
real tfds path, unreadable images named or skipped, resume after SIGKILL,
a finished run not re-run. (training.evaluate agreeing with training:
test_evaluate.py; bad flags: test_training_flags.py; the fit's segments:
test_training_fitting.py.)"""

import json
import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from training import data
from training import train
from training_helpers import (DATASETS_SCRIPT, REPO, env, finish,
                              make_folder, model_weights, run_in_process,
                              run_train,
                              start_train, tiny_flags, train_cmd,
                              write_config)


# ------------------------------------------------ before any work

def test_batch_size_not_divisible_by_replicas():
    fake = types.SimpleNamespace(num_replicas_in_sync=8)
    with pytest.raises(train.UsageError,
                       match="--batch_size=100 is not divisible by the 8 "
                             "replicas"):
        train.check_replicas(fake, 100)
    train.check_replicas(fake, 4096)


def test_batch_size_check_runs_before_work(tmp_path):
    """Two MultiWorkerMirroredStrategy replicas (two workers), batch 5."""
    from training_helpers import free_ports  # pylint: disable=import-outside-toplevel
    root = make_folder(tmp_path / "imgs", classes=2, train=4, test=2)
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = [subprocess.Popen(
        train_cmd(tiny_flags(write_config(tmp_path / "c.json"),
                             f"folder:{root}", tmp_path / "run",
                             batch_size=5, strategy="multi_worker")),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=env(TF_CONFIG=json.dumps({"cluster": cluster, "task": {
            "type": "worker", "index": i}}))) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [2, 2], outs
    assert "--batch_size=5 is not divisible by the 2 replicas" in outs[0]
    assert not os.path.exists(tmp_path / "run")


# ------------------------------------------------------------ tfds path

@pytest.fixture(scope="module")
def cifar_tfds(tmp_path_factory):
    """A real prepared tfds `cifar10` (3.0.2), built offline with
    ../shared/datasets/make_cifar10_tfds.py from 60 of the demo JPEGs."""
    if not DATASETS_SCRIPT.exists():
        pytest.skip(f"{DATASETS_SCRIPT} is not available")
    base = tmp_path_factory.mktemp("cifar")
    jpegs = make_folder(base / "jpeg", classes=10, train=4, test=2)
    out = subprocess.run(
        [sys.executable, str(DATASETS_SCRIPT), str(jpegs), str(base / "tfds")],
        env=env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return base / "tfds"


def test_real_tfds_path(tmp_path, cifar_tfds):
    args = tiny_flags(write_config(tmp_path / "c.json"), "cifar10",
                      tmp_path / "run", data_dir=cifar_tfds, train_steps=3,
                      eval_batch_size=8)
    out = run_train(args)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "10 classes, 40 training images" in out.stdout
    with open(tmp_path / "run" / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["eval_examples"] == 20 and metrics["split"] == "test"
    assert metrics["steps"] == 3
    for name in ("model.keras", "history.csv", "logs"):
        assert (tmp_path / "run" / name).exists()


# --------------------------------------------------------------- resume

# 8 steps in epochs of 3: the kill lands inside the second epoch, and the
# last epoch is partial.
RESUME = dict(batch_size=8, train_steps=8, steps_per_epoch=3,
              checkpoint_steps=1, randaugment="205", mixup_alpha=0.2,
              cutmix="true", drop_rate=0.2, stochdepth_rate=0.2,
              ema_decay=0.9)


def test_sigkill_mid_epoch_then_restart_equals_uninterrupted(tmp_path,
                                                              capsys):
    root = make_folder(tmp_path / "imgs", classes=3, train=8, test=4)
    config = write_config(tmp_path / "c.json")

    def flags(name):
        return tiny_flags(config, f"folder:{root}", tmp_path / name,
                          **RESUME)

    # The uninterrupted run goes side by side with the one that is killed.
    straight = start_train(flags("straight"), tmp_path, "straight")

    # Kill the second run with SIGKILL once its backup is past step 4
    # (inside the second epoch of 3 steps), then restart it.
    meta = tmp_path / "killed" / "backup" / "latest.json"
    proc = subprocess.Popen(train_cmd(flags("killed")), cwd=REPO, env=env(),
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 480
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        try:
            killed_at = json.loads(meta.read_text())["step"]
        except (OSError, ValueError, KeyError):
            killed_at = None
        if killed_at is not None and killed_at >= 4:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run was not killed"
    assert not (tmp_path / "killed" / "metrics.json").exists()
    straight = finish(straight, timeout=480)
    assert straight.returncode == 0, straight.stderr[-3000:]

    restarted = run_train(flags("killed"))
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "Resuming from step" in restarted.stdout

    a = model_weights(str(tmp_path / "straight" / "model.keras"))
    b = model_weights(str(tmp_path / "killed" / "model.keras"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6,
                                   err_msg=k)
    for run in ("straight", "killed"):
        with open(tmp_path / run / "metrics.json") as f:
            assert json.load(f)["steps"] == RESUME["train_steps"]

    # A finished run is not re-run (in this process: no work to isolate).
    again = run_in_process(flags("killed"), capsys)
    assert again.returncode == 0
    assert "holds a finished run" in again.stdout
    assert "top-1 accuracy:" in again.stdout


# ------------------------------------------------ unreadable images

def _corrupt(path):
    raw = path.read_bytes()
    path.write_bytes(raw[:200] + b"\x00garbage" * 64)


def test_unreadable_images_are_named_or_skipped(tmp_path):
    root = make_folder(tmp_path / "imgs", classes=2, train=4, test=2)
    bad_train = sorted((root / "train" / "automobile").iterdir())[1]
    bad_test = sorted((root / "test" / "airplane").iterdir())[0]
    _corrupt(bad_train)
    _corrupt(bad_test)
    config = write_config(tmp_path / "c.json")

    source = data.folder_source(str(root))
    assert data.find_unreadable(p for p, _ in source.files["train"]) == [
        str(bad_train)]
    error = data.unreadable_error(source, "test")
    assert str(bad_test) in str(error)
    assert "--skip_unreadable_images" in str(error)

    # The two runs go side by side.
    refused = start_train(tiny_flags(config, f"folder:{root}", tmp_path / "a",
                                     batch_size=4, train_steps=2),
                          tmp_path, "a")
    skipped = start_train(tiny_flags(config, f"folder:{root}", tmp_path / "b",
                                     batch_size=4, train_steps=2,
                                     skip_unreadable_images="true"),
                          tmp_path, "b")
    out = finish(refused, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    assert str(bad_train) in out.stderr
    assert "--skip_unreadable_images" in out.stderr

    out = finish(skipped, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "skipped 2 unreadable image(s)" in out.stdout
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["eval_examples"] == 3


# ---------------------------------------------------------- empty batch

def test_a_batch_of_size_zero_gives_an_empty_output(tmp_path):
    import keras_nfnets  # pylint: disable=import-outside-toplevel
    model = keras_nfnets.NFNet(config=str(write_config(tmp_path / "c.json")),
                               classes=3, input_shape=(16, 16, 3))
    out = np.asarray(model(np.zeros((0, 16, 16, 3), "float32")))
    assert out.shape == (0, 3)
