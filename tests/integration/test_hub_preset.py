"""A KerasHub preset of an NFNet, saved here with `save_to_preset` and
loaded in a fresh process through KerasHub's own entry points
(`keras_hub.models.ImageClassifier.from_preset(dir)`,
`keras_hub.models.Backbone.from_preset(dir)`): the same classes, outputs
and preprocessing. One subprocess for both."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import keras  # noqa: E402

from conftest import REPO  # noqa: E402
from hub_helpers import TINY  # noqa: E402
from keras_nfnets.hub import (NFNetBackbone,  # noqa: E402
                              NFNetImageClassifier,
                              NFNetImageClassifierPreprocessor,
                              NFNetImageConverter)

LOAD = """
import json, sys
import numpy as np
import keras, keras_hub
import keras_nfnets.hub
task_dir, backbone_dir, inputs, out = sys.argv[1:5]
data = np.load(inputs)
classifier = keras_hub.models.ImageClassifier.from_preset(task_dir)
backbone = keras_hub.models.Backbone.from_preset(backbone_dir)
pre = classifier.preprocessor
np.savez(out,
         logits=classifier.predict(data["images"], verbose=0),
         features=keras.ops.convert_to_numpy(backbone(data["crops"])),
         preprocessed=keras.ops.convert_to_numpy(
             pre.image_converter(data["images"])))
print(json.dumps([type(classifier).__name__, type(backbone).__name__,
                  type(pre).__name__, type(pre.image_converter).__name__]))
"""


def test_saved_presets_load_in_a_fresh_process_through_keras_hub(tmp_path):
    backbone = NFNetBackbone("ECA-L0", overrides=TINY["ECA-L0"],
                             image_shape=(32, 32, 3))
    converter = NFNetImageConverter.for_variant("ECA-L0", size=32)
    classifier = NFNetImageClassifier(
        backbone, num_classes=4,
        preprocessor=NFNetImageClassifierPreprocessor(converter))
    task_dir, backbone_dir = tmp_path / "task", tmp_path / "backbone"
    classifier.save_to_preset(str(task_dir))
    backbone.save_to_preset(str(backbone_dir))

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 40, 48, 3)).astype("float32")
    crops = rng.uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.savez(tmp_path / "inputs.npz", images=images, crops=crops)
    out = subprocess.run(
        [sys.executable, "-c", LOAD, str(task_dir), str(backbone_dir),
         str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [
        "NFNetImageClassifier", "NFNetBackbone",
        "NFNetImageClassifierPreprocessor", "NFNetImageConverter"]
    loaded = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(
        loaded["logits"], classifier.predict(images, verbose=0),
        rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        loaded["features"], keras.ops.convert_to_numpy(backbone(crops)),
        rtol=0, atol=1e-6)
    np.testing.assert_array_equal(
        loaded["preprocessed"],
        keras.ops.convert_to_numpy(converter(images)))
