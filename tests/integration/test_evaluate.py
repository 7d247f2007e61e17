"""Reported accuracy equals a hand count when the evaluation set does not
divide by the batch: metrics.json, training.evaluate (which scores a model
from training as training did), 1 and 2 replicas (issue 14, item 2). The
hand count preprocesses with the Keras layer the model carries
(`preprocess_for_eval(image, model)`), the programs with its tf.data form;
raw and EMA weights are both scored (issue 27)."""

import json
import sys

import keras
import numpy as np
import tensorflow as tf

from training import data
from training_helpers import (finish, make_folder, run_train, start,
                              tiny_flags, write_config)

# 7 classes x 2 test images = 14, at eval batch 8: 2 steps, 2 padding rows.
CLASSES, TEST, BATCH = 7, 2, 8


def _hand_count(model_path, root, weights=None):
    import keras_nfnets  # pylint: disable=import-outside-toplevel
    model = keras.models.load_model(model_path, compile=False)
    if weights is not None:
        model.load_weights(weights)
    source = data.folder_source(str(root))
    top1 = top5 = 0
    for path, label in source.files["test"]:
        decoded = tf.io.decode_image(tf.io.read_file(path), channels=3,
                                     expand_animations=False).numpy()
        image = keras_nfnets.preprocess_for_eval(decoded, model)
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
                                 None, preprocessing=model.preprocessing)
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
    # The evaluation program and the two-replica evaluation run in their
    # own processes while this one counts by hand.
    ev = start([sys.executable, "-m", "training.evaluate",
                f"--weights={run}/model.keras", f"--dataset=folder:{root}",
                f"--batch_size={BATCH}"], tmp_path, "evaluate")
    two = start([sys.executable, "-c", _TWO_REPLICAS, str(run / "model.keras"),
                 str(root), str(BATCH)], tmp_path, "two_replicas")
    try:
        _check_hand_count(run, root, out, ev, two)
    finally:
        for proc in (ev, two):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _check_hand_count(run, root, out, ev, two):
    top1, top5, n = _hand_count(run / "model.keras", root)
    raw_top1, raw_top5, _ = _hand_count(run / "model.keras", root,
                                        run / "model_raw.weights.h5")
    assert n == 14 and n % BATCH
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval_examples"] == n
    # The tiny config is an NFNet: DeepMind's resize_crop, carried by the
    # model (padding 0 from the run's --eval_crop_padding).
    assert metrics["eval_preprocessing"] == "resize_crop"
    loaded = keras.models.load_model(run / "model.keras", compile=False)
    assert (loaded.preprocessing.mode, loaded.preprocessing.size,
            loaded.preprocessing.crop_padding) == ("resize_crop", 32, 0)
    np.testing.assert_allclose(
        [metrics["top1"], metrics["top5"], metrics["raw_top1"],
         metrics["raw_top5"]], [top1, top5, raw_top1, raw_top5], atol=1e-6)

    ev = finish(ev, timeout=300)
    assert ev.returncode == 0, ev.stderr[-3000:]
    # Raw and EMA weights, each its own line, as training reported them.
    assert (f"top-1 accuracy: {100 * top1:.1f}%  (top-5 {100 * top5:.1f}%, "
            f"{n} test images, 32px, EMA weights)") in ev.stdout, ev.stdout
    assert (f"top-1 accuracy: {100 * raw_top1:.1f}%  (top-5 "
            f"{100 * raw_top5:.1f}%, {n} test images, 32px, raw weights)"
            ) in ev.stdout, ev.stdout
    lines = [l for l in ev.stdout.splitlines() if "top-1 accuracy" in l]
    trained = [l for l in out.stdout.splitlines() if "top-1 accuracy" in l]
    assert [l.split("(")[0] for l in lines] == [
        l.split("(")[0] for l in trained]

    two = finish(two, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    line = [l for l in two.stdout.splitlines() if l.startswith("RESULT")][0]
    result, replicas = json.loads(line.split(" ", 1)[1].rsplit(" ", 1)[0]), \
        int(line.rsplit(" ", 1)[1])
    assert replicas == 2
    np.testing.assert_allclose([result["top1"], result["top5"]],
                               [top1, top5], atol=1e-6)
