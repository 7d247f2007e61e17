"""channels_first checks, one family per backend (run by
tests/integration/test_channels_first.py in a fresh process per backend, so that the
image data format and KERAS_BACKEND are this process's own).

    KERAS_BACKEND=torch python tests/channels_first_checks.py nf_regnet_b0

Builds the DeepMind fixture's model under channels_last and under
channels_first, feeds the same images (NHWC and NCHW), and prints a RESULT
line: the logits' error against DeepMind's, the largest difference between
the two layouts (logits and every feature map), the NCHW feature shapes,
and the errors the constructors give for a channels_last shape."""

import json
import os
import pathlib
import sys

import numpy as np

import keras

import keras_nfnets

# The folder holding the fixture's files, as tests/integration/test_channels_first.py
# found it (the repository's copy or ../shared's); by default ../shared's.
FIXTURES = pathlib.Path(os.environ.get(
    "KERAS_NFNETS_FIXTURES",
    pathlib.Path(__file__).resolve().parents[2] / "shared" / "fixtures"
    / "deepmind"))

MODELS = {
    "nfnet_tiny": lambda **kw: keras_nfnets.NFNet(
        config=str(FIXTURES / "nfnet_tiny_config.json"), **kw),
    "nf_resnet50_w1": lambda **kw: keras_nfnets.NFResNet50(width=1, **kw),
    "nf_regnet_b0": lambda **kw: keras_nfnets.NFRegNetB0(**kw),
}


def build(fixture, data_format, size, **kwargs):
    keras.config.set_image_data_format(data_format)
    shape = (3, size, size) if data_format == "channels_first" else (
        size, size, 3)
    try:
        return MODELS[fixture](
            weights=str(FIXTURES / f"{fixture}_haiku.npz"),
            input_shape=shape, include_preprocessing=False, **kwargs)
    finally:
        keras.config.set_image_data_format("channels_last")


def numpy(x):
    if isinstance(x, dict):
        return {k: numpy(v) for k, v in x.items()}
    return keras.ops.convert_to_numpy(x)


def main(fixture):
    with np.load(FIXTURES / f"{fixture}_reference.npz") as ref:
        x, ref_logits = ref["inputs"], ref["logits"]
    size = x.shape[1]
    x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    top = dict(classes=10, classifier_activation=None)
    result = dict(backend=keras.backend.backend(), fixture=fixture)

    last = build(fixture, "channels_last", size, **top)
    first = build(fixture, "channels_first", size, **top)
    logits_last = numpy(last(x, training=False))
    keras.config.set_image_data_format("channels_first")  # as a user has it
    logits_first = numpy(first(x_nchw, training=False))
    keras.config.set_image_data_format("channels_last")
    result["input_shape"] = list(first.input_shape)
    result["logits_rel_err"] = float(
        np.abs(logits_first - ref_logits).max() / np.abs(ref_logits).max())
    result["logits_layout_diff"] = float(
        np.abs(logits_first - logits_last).max())

    feats_last = numpy(build(fixture, "channels_last", size,
                             feature_extractor=True)(x, training=False))
    backbone = build(fixture, "channels_first", size, feature_extractor=True)
    keras.config.set_image_data_format("channels_first")
    feats_first = numpy(backbone(x_nchw, training=False))
    keras.config.set_image_data_format("channels_last")
    result["feature_shapes"] = {k: list(v.shape)
                                for k, v in feats_first.items()}
    result["features_layout_diff"] = max(
        float(np.abs(feats_first[k].transpose(0, 2, 3, 1)
                     - feats_last[k]).max()) for k in feats_last)

    keras.config.set_image_data_format("channels_first")
    try:
        MODELS[fixture](weights=None, input_shape=(size, size, 3))
        result["channels_last_shape_error"] = None
    except ValueError as e:
        result["channels_last_shape_error"] = str(e)
    finally:
        keras.config.set_image_data_format("channels_last")
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
