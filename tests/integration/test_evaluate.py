"""Reported accuracy equals a hand count when the evaluation set does not
divide by the batch: metrics.json, training.evaluate (which scores a model
from training as training did), 1 and 2 replicas (issue 14, item 2)."""

import json
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf

from training import data
from training_helpers import (REPO, env, make_folder, run_train, tiny_flags,
                              write_config)

# 7 classes x 2 test images = 14, at eval batch 8: 2 steps, 2 padding rows.
CLASSES, TEST, BATCH = 7, 2, 8


def _hand_count(model_path, root, size=32):
    import keras_nfnets  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    model = keras.models.load_model(model_path, compile=False)
    source = data.folder_source(str(root))
    top1 = top5 = 0
    for path, label in source.files["test"]:
        image = data.eval_preprocess(tf.io.read_file(path), size, 0)
        logits = np.asarray(model(image[None], training=False))[0]
        order = np.argsort(-logits)
        top1 += int(order[0] == label)
        top5 += int(label in order[:5])
    n = len(source.files["test"])
    return top1 / n, top5 / n, n


_TWO_REPLICAS = """
import json, sys
import tensorflow as tf
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import keras_nfnets
from training import data, evaluate
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
source = data.folder_source(sys.argv[2])
with strategy.scope():
    model = keras.models.load_model(sys.argv[1], compile=False)
result = evaluate.evaluate_model(model, strategy, source, int(sys.argv[3]),
                                 32, 0)
print("RESULT", json.dumps(result), strategy.num_replicas_in_sync)
"""


def test_accuracy_is_a_hand_count_on_a_ragged_last_batch(tmp_path):
    root = make_folder(tmp_path / "imgs", classes=CLASSES, train=2,
                       test=TEST)
    run = tmp_path / "run"
    out = run_train(tiny_flags(write_config(tmp_path / "c.json"),
                               f"folder:{root}", run, batch_size=7,
                               train_steps=2, eval_batch_size=BATCH),
                    timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    top1, top5, n = _hand_count(run / "model.keras", root)
    assert n == 14 and n % BATCH
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval_examples"] == n
    np.testing.assert_allclose([metrics["top1"], metrics["top5"]],
                               [top1, top5], atol=1e-6)

    ev = subprocess.run(
        [sys.executable, "-m", "training.evaluate",
         f"--weights={run}/model.keras", f"--dataset=folder:{root}",
         f"--batch_size={BATCH}"],
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert (f"top-1 accuracy: {100 * top1:.1f}%  (top-5 {100 * top5:.1f}%, "
            f"{n} test images") in ev.stdout, ev.stdout
    # ... as training scored it (its size and crop from metrics.json).
    line = [l for l in ev.stdout.splitlines() if "top-1 accuracy" in l][0]
    trained = [l for l in out.stdout.splitlines() if "top-1 accuracy" in l][0]
    assert line.split("(")[0] == trained.split("(")[0]

    two = subprocess.run(
        [sys.executable, "-c", _TWO_REPLICAS, str(run / "model.keras"),
         str(root), str(BATCH)],
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    line = [l for l in two.stdout.splitlines() if l.startswith("RESULT")][0]
    result, replicas = json.loads(line.split(" ", 1)[1].rsplit(" ", 1)[0]), \
        int(line.rsplit(" ", 1)[1])
    assert replicas == 2
    np.testing.assert_allclose([result["top1"], result["top5"]],
                               [top1, top5], atol=1e-6)
