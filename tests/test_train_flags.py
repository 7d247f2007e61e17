"""Flags and inputs of the training program that must be refused or named
before (or instead of) silent wrong work (issue 14, items 6-9)."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from training import data
from training import train
from training_helpers import (REPO, env, finish, make_folder, run_train,
                              start_train, tiny_flags, write_config)


# ------------------------------------------------- values that make no sense

@pytest.fixture
def parsed():
    """Parses training.train's flags in-process; restores them after."""
    def parse(*args):
        train.FLAGS.unparse_flags()
        train.FLAGS(["train", "--model_dir=/nonexistent/run", *args])
    yield parse
    train.FLAGS.unparse_flags()


@pytest.mark.parametrize("flag", [
    "--train_steps=-5", "--train_steps=0", "--steps_per_epoch=-1",
    "--agc_clipping=-0.01", "--agc_clipping=nan", "--lr=-0.1", "--lr=0",
    "--lr=inf", "--ema_decay=1.5", "--ema_decay=1", "--eval_batch_size=-3",
    "--weight_decay=-1", "--momentum=1.2", "--label_smoothing=-0.1",
    "--mixup_alpha=-1", "--drop_rate=1", "--stochdepth_rate=-0.5",
    "--crop_area_min=0", "--checkpoint_steps=0", "--steps_per_execution=0",
    "--image_size=0", "--eval_crop_padding=-1", "--epochs=nan"])
def test_nonsense_values_are_refused_by_name(parsed, flag):
    parsed(flag)
    name = flag.split("=")[0]
    with pytest.raises(train.UsageError, match=f"{name}=.*must be"):
        train.check_flags()


def test_sensible_values_pass(parsed):
    parsed("--train_steps=3", "--agc_clipping=0", "--ema_decay=0",
           "--lr=0.1", "--eval_batch_size=8", "--drop_rate=0")
    train.check_flags()


def test_agc_refuses_nan_and_negative_clipping():
    import keras  # pylint: disable=import-outside-toplevel
    import keras_nfnets  # pylint: disable=import-outside-toplevel
    for clipping in (float("nan"), -0.01, float("inf")):
        with pytest.raises(ValueError, match="must be a finite number >= 0"):
            keras_nfnets.AGC(keras.optimizers.SGD(0.1), clipping=clipping)
    keras_nfnets.AGC(keras.optimizers.SGD(0.1), clipping=0)


def test_negative_train_steps_writes_nothing(tmp_path):
    """--train_steps=-5 used to train 0 steps and write metrics.json, so the
    corrected rerun refused to train."""
    root = make_folder(tmp_path / "imgs", classes=2, train=2, test=1)
    out = run_train(tiny_flags(write_config(tmp_path / "c.json"),
                               f"folder:{root}", tmp_path / "run",
                               train_steps=-5), timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr[-2000:]
    assert "--train_steps=-5: must be >= 1" in out.stderr
    assert not (tmp_path / "run").exists()


# ------------------------------------- class folders and PYTHONHASHSEED

_SOURCE = """
import sys
from training import data
try:
    s = data.folder_source(sys.argv[1])
    print("accepted", s.class_names, s.files[s.eval_split][0][1])
except data.DatasetError as e:
    print("refused:", e)
"""


@pytest.mark.parametrize("seed", ["0", "3", "6"])  # 3, 6: train split first
def test_split_missing_a_class_is_refused_under_any_hash_seed(tmp_path,
                                                              seed):
    root = make_folder(tmp_path / "imgs", classes=3, train=1, test=1)
    shutil.rmtree(root / "test" / "airplane")
    out = subprocess.run([sys.executable, "-c", _SOURCE, str(root)],
                         cwd=REPO, env=env(PYTHONHASHSEED=seed),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "refused:" in out.stdout, out.stdout
    assert "missing ['airplane']" in out.stdout


def test_empty_class_folder_in_a_split_is_fine(tmp_path):
    root = make_folder(tmp_path / "imgs", classes=3, train=1, test=1)
    for f in (root / "test" / "airplane").iterdir():
        f.unlink()
    source = data.folder_source(str(root))
    assert source.class_names == ("airplane", "automobile", "bird")
    assert [label for _, label in source.files["test"]] == [1, 2]


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


# ----------------------------------------- resuming with other flags

def test_resume_with_changed_training_flags_is_refused(tmp_path):
    root = make_folder(tmp_path / "imgs", classes=2, train=4, test=1)
    config = write_config(tmp_path / "c.json")
    run = tmp_path / "run"

    def flags(**changes):
        base = dict(batch_size=4, train_steps=2, checkpoint_steps=1)
        return tiny_flags(config, f"folder:{root}", run,
                          **{**base, **changes})

    first = run_train(flags(), timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    stored = json.loads((run / "flags.json").read_text())
    assert stored["batch_size"] == 4 and stored["lr"] == 0.2
    (run / "metrics.json").unlink()  # as if killed after its last backup
    backup = (run / "backup" / "latest.weights.h5").read_bytes()

    changed = run_train(flags(batch_size=8, lr=0.3, seed=2), timeout=300)
    assert changed.returncode == 2, changed.stderr[-3000:]
    message = changed.stderr.strip().splitlines()[-1]
    for part in ("--batch_size=4 -> 8", "--lr=0.2 -> 0.3", "--seed=1 -> 2",
                 "--allow_changed_flags"):
        assert part in message, message

    # Overridden, a backup that cannot fit (no EMA now) is refused clearly,
    # not restarted from step 0 on the old weights.
    no_ema = run_train(flags(ema_decay=0, allow_changed_flags="true"),
                       timeout=300)
    assert no_ema.returncode == 2, no_ema.stderr[-3000:]
    assert "does not fit" in no_ema.stderr
    assert (run / "backup" / "latest.weights.h5").read_bytes() == backup

    same = run_train(flags(), timeout=300)
    assert same.returncode == 0, same.stderr[-3000:]
    assert "Resuming from step 2/2" in same.stdout
