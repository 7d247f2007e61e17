"""`NFNetImagePreprocessing` against the authors' own procedures: DeepMind's
`nfnets/dataset.py` (written below in TensorFlow ops from DeepMind's code)
and timm's `create_transform` (run in a subprocess)."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_nfnets
from keras_nfnets import preprocessing
from keras_nfnets.preprocessing import (NFNetImagePreprocessing,
                                        default_preprocessing)

# (height, width): two non-square ImageNet-like sizes and one square.
SIZES = [(375, 500), (640, 427), (300, 300)]


def natural_image(height, width, seed):
    """A smooth random image with sharp edges, JPEG-encoded and decoded as
    a real photo would be: `(jpeg_bytes, decoded uint8)`."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (1, 12, 16, 3)).astype("float32")
    x = tf.image.resize(coarse, (height, width), "bilinear")[0].numpy()
    x += rng.normal(0, 12, x.shape)
    yy, xx = np.mgrid[:height, :width]
    x[(yy // 37 + xx // 53) % 5 == 0] = [250, 20, 30]  # hard edges
    x = np.clip(x, 0, 255).astype("uint8")
    data = tf.io.encode_jpeg(x, quality=90)
    return data, tf.io.decode_jpeg(data, channels=3).numpy()


# DeepMind's nfnets/dataset.py evaluation paths, in TensorFlow ops, on
# decoded uint8 images (dataset.py's `get_shape` and `crop` take either
# JPEG bytes or a decoded image; decoded, so that JPEG's cropped decoding,
# which upsamples chroma differently at the crop's edge, is not compared).
def deepmind_resize_then_crop(image, size, crop_pct=32):
    image = tf.convert_to_tensor(image)
    scale_size = int(size + crop_pct)  # crop_pct > 1: pad pixels
    image = tf.image.resize(image, (scale_size, scale_size),
                            tf.image.ResizeMethod.BICUBIC)
    offset = ((scale_size - size) + 1) // 2
    return tf.image.crop_to_bounding_box(image, offset, offset, size, size)


def deepmind_center_crop_then_resize(image, size):
    image = tf.convert_to_tensor(image)
    assert image.dtype == tf.uint8
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    scale = tf.minimum(tf.cast(height, tf.float32) / (size + 32),
                       tf.cast(width, tf.float32) / (size + 32))
    crop = tf.cast(scale * size, tf.int32)
    top = ((height - crop) + 1) // 2
    left = ((width - crop) + 1) // 2
    image = tf.image.crop_to_bounding_box(image, top, left, crop, crop)
    return tf.image.resize(image, (size, size), tf.image.ResizeMethod.BICUBIC)


def images():
    return [natural_image(h, w, seed) for seed, (h, w) in enumerate(SIZES)]


@pytest.mark.parametrize("variant,reference", [
    ("F0", deepmind_resize_then_crop),
    ("ResNet50", deepmind_center_crop_then_resize),
    ("B0", deepmind_center_crop_then_resize)])
def test_deepmind_modes_match_deepmind_dataset_code(variant, reference):
    layer = default_preprocessing(variant)
    for data, decoded in images():
        expected = reference(decoded, layer.size).numpy()
        got = np.asarray(layer(decoded))
        assert got.shape == expected.shape == (layer.size, layer.size, 3)
        assert np.abs(got - expected).max() <= 0.5, variant
        # and through preprocess_for_eval, by variant name
        np.testing.assert_array_equal(
            np.asarray(keras_nfnets.preprocess_for_eval(decoded, variant)),
            got)


def test_nfnets_use_resize_crop_not_crop_resize():
    """Issue 27: F0 is evaluated on the squashed whole image; the old crop
    looked at another part of a non-square image."""
    data, decoded = natural_image(375, 500, 0)
    expected = deepmind_resize_then_crop(decoded, 256).numpy()
    old = deepmind_center_crop_then_resize(decoded, 256).numpy()
    assert np.abs(old - expected).max() > 50
    got = np.asarray(keras_nfnets.preprocess_for_eval(decoded, "F0"))
    assert np.abs(got - expected).max() <= 0.5


OTHER_BACKEND = textwrap.dedent("""
    import json, sys
    import numpy as np
    from keras_nfnets.preprocessing import default_preprocessing
    data = np.load(sys.argv[1])
    out = {}
    for variant in ("F0", "ResNet50"):
        layer = default_preprocessing(variant)
        for key in data.files:
            out[variant + key] = np.asarray(layer(data[key]))
    np.savez(sys.argv[2], **out)
""")


@pytest.mark.parametrize("backend,tolerance", [
    # JAX's bicubic (jax.image.scale_and_translate) is TensorFlow's Keys
    # a=-0.5 kernel with half-pixel centres: only float32 rounding differs,
    # so TensorFlow's bound holds.
    ("jax", 0.5),
    # PyTorch's non-antialiased bicubic uses Keys a=-0.75 where TensorFlow
    # uses a=-0.5. The kernels differ by 0.25*|x|(1-|x|)^2 (|x| <= 1) and
    # 0.25*(|x|-1)(2-|x|)^2 (1 < |x| < 2); both sum to 1, so per axis the
    # output moves by at most sum|dw|/2 * 255, largest at a half-pixel
    # offset: 4 taps x 0.03125 / 2 * 255 = 16 per axis, 32 over the two.
    ("torch", 32.0)])
def test_other_backends_follow_deepmind_within_their_kernels(
        tmp_path, backend, tolerance):
    """Runs the layer under JAX / PyTorch in a subprocess (about 20 s per
    backend: a fresh interpreter importing that backend)."""
    decoded = {f"i{i}": d for i, (_, d) in enumerate(images())}
    np.savez(tmp_path / "in.npz", **decoded)
    env = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-c", OTHER_BACKEND, str(tmp_path / "in.npz"),
         str(tmp_path / "out.npz")], env=env, capture_output=True, text=True,
        timeout=600, check=False)
    if proc.returncode and "No module named" in proc.stderr:
        pytest.skip(f"{backend} is not installed")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    for key, data in decoded.items():
        for variant, reference in (("F0", deepmind_resize_then_crop),
                                   ("ResNet50",
                                    deepmind_center_crop_then_resize)):
            size = default_preprocessing(variant).size
            expected = reference(data, size).numpy()
            diff = np.abs(out[variant + key] - expected)
            assert diff.max() <= tolerance, (backend, variant, diff.max())
            # away from the border every backend agrees closely
            assert diff[3:-3, 3:-3].mean() <= 1.0, (backend, variant)


TIMM_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from PIL import Image
    import timm
    from timm.data import create_transform, resolve_data_config
    from torchvision import transforms
    data = np.load(sys.argv[1])
    out, info = {}, {}
    for name in sys.argv[3:]:
        cfg = timm.models.get_pretrained_cfg(name).to_dict()
        config = resolve_data_config(pretrained_cfg=cfg, use_test_size=True)
        transform = create_transform(**config)
        steps = [t for t in transform.transforms
                 if isinstance(t, (transforms.Resize, transforms.CenterCrop))]
        info[name] = dict(config=config, steps=[repr(t) for t in steps])
        for key in data.files:
            image = Image.fromarray(data[key])
            resized = steps[0](image)
            cropped = steps[1](resized)
            out[name + "/" + key + "/resized"] = np.asarray(resized)
            out[name + "/" + key + "/cropped"] = np.asarray(cropped)
    np.savez(sys.argv[2], **out)
    print(json.dumps(info))
""")

TIMM_NAMES = {"ECA-L0": "eca_nfnet_l0", "ResNet50-timm": "nf_resnet50",
              "B1-timm": "nf_regnet_b1"}


def test_center_mode_matches_timms_eval_transform(tmp_path):
    """Sizes and crop boxes exactly as timm's `create_transform`; pixels
    against timm's PIL resize-then-crop within a stated bound. timm runs
    in a subprocess (torch and TensorFlow in one process can crash)."""
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed (test extras)")
    decoded = {f"i{i}": d for i, (_, d) in enumerate(images())}
    np.savez(tmp_path / "in.npz", **decoded)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    proc = subprocess.run(
        [sys.executable, "-c", TIMM_SCRIPT, str(tmp_path / "in.npz"),
         str(tmp_path / "out.npz"), *TIMM_NAMES.values()], env=env,
        capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    out = np.load(tmp_path / "out.npz")
    for variant, name in TIMM_NAMES.items():
        layer = default_preprocessing(variant)
        config = info[name]["config"]
        assert config["crop_mode"] == "center"
        assert config["interpolation"] == layer.interpolation == "bicubic"
        assert (layer.size, layer.size) == tuple(config["input_size"][1:])
        assert layer.crop_pct == config["crop_pct"]
        for key, image in decoded.items():
            resized = out[f"{name}/{key}/resized"]
            cropped = out[f"{name}/{key}/cropped"]
            (new_h, new_w), (top, left, ch, cw) = preprocessing._crop_window(
                "center", *image.shape[:2], layer.size, 32, layer.crop_pct)
            assert (new_h, new_w) == resized.shape[:2], (variant, key)
            assert (ch, cw) == cropped.shape[:2] == (layer.size, layer.size)
            np.testing.assert_array_equal(
                resized[top:top + ch, left:left + cw], cropped)
            got = np.asarray(layer(image))
            diff = np.abs(got - cropped.astype("float32"))
            # PIL resizes uint8 with an antialiased Keys a=-0.5 kernel in
            # fixed point, one axis at a time, rounding and clipping to
            # uint8 after each pass; TensorFlow's antialiased bicubic is the
            # same kernel in float32, unclipped. So: rounding (under 0.5)
            # on average; in the maximum, the overshoot PIL clips at hard
            # edges, and once clipped and rounded, the rounding and
            # clipping between PIL's two passes carried through the
            # second pass's kernel (sum of |weights| under 1.2), a few
            # units.
            assert diff.mean() <= 0.5, (variant, key, diff.mean())
            clipped = np.abs(np.clip(np.round(got), 0, 255) - cropped)
            assert clipped.mean() <= 0.5, (variant, key, clipped.mean())
            assert clipped.max() <= 6, (variant, key, clipped.max())
            assert diff.max() <= 32.0, (variant, key, diff.max())


def test_config_round_trip():
    layer = NFNetImagePreprocessing(288, mode="center", crop_pct=0.94,
                                    mean=(1, 2, 3), std=(4, 5, 6))
    config = layer.get_config()
    again = NFNetImagePreprocessing.from_config(config)
    assert again.get_config() == config
    assert (again.mode, again.size, again.crop_pct, again.antialias) == (
        "center", 288, 0.94, True)
    assert keras.saving.get_registered_object(
        "keras_nfnets>NFNetImagePreprocessing") is NFNetImagePreprocessing


def test_keras_file_round_trip_keeps_settings(tmp_path):
    inputs = keras.Input((120, 90, 3))
    x = NFNetImagePreprocessing(32, mode="resize_crop", crop_padding=8,
                                name="prep")(inputs)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    layer = loaded.get_layer("prep")
    assert isinstance(layer, NFNetImagePreprocessing)
    assert layer.get_config() == model.get_layer("prep").get_config()
    x = np.random.default_rng(0).uniform(0, 255, (2, 120, 90, 3))
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               model.predict(x, verbose=0), rtol=1e-6)


@pytest.mark.parametrize("variant,mode,size,crop_pct", [
    ("F0", "resize_crop", 256, None), ("NFNetF0", "resize_crop", 256, None),
    ("F7+", "resize_crop", None, None), ("dm_nfnet_f3", "resize_crop", 416,
                                         None),
    ("ResNet50", "crop_resize", 224, None), ("NFRegNetB1", "crop_resize",
                                             256, None),
    ("ECA-L0", "center", 288, 1.0), ("eca_nfnet_l0", "center", 288, 1.0),
    ("NFResNet50Timm", "center", 288, 0.94), ("B1-timm", "center", 288, 0.9)])
def test_default_preprocessing_per_family(variant, mode, size, crop_pct):
    layer = default_preprocessing(variant)
    assert layer.mode == mode and layer.crop_pct == crop_pct
    if size is not None:
        assert layer.size == size
    assert layer.crop_padding == 32


def test_default_preprocessing_from_configs():
    from keras_nfnets import variants
    assert default_preprocessing(variants.get_config("F1")).size == 320
    b1 = default_preprocessing(variants.NF_REGNET_VARIANTS["B1-timm"])
    assert (b1.mode, b1.crop_pct) == ("center", 0.9)
    assert default_preprocessing(
        variants.NF_RESNET_VARIANTS["ResNet50"]).mode == "crop_resize"
    with pytest.raises(ValueError, match="Unknown variant"):
        default_preprocessing("F99")


# Issue 32 items 3 and 7: each input is converted as documented or refused
# with a ValueError that says what was expected.
RGB = np.random.default_rng(0).integers(0, 256, (40, 60, 3)).astype("uint8")


@pytest.mark.parametrize("bad,match", [
    (RGB.astype("uint16") * 257, "0-255.*uint16"),
    (RGB / 255.0, r"\[0, 1\].*255"),
    (np.moveaxis(RGB, -1, 0), "channels-first"),
    (np.moveaxis(RGB[None], -1, 1), "channels-first"),
    (RGB.astype("float32") * 2, "0-255"),
    (np.full((40, 60, 3), np.nan, "float32"), "non-finite"),
    (np.zeros((0, 60, 3), "uint8"), "empty"),
    (RGB[..., :2], "channels"),
    (np.zeros((2, 2, 40, 60, 3), "uint8"), "batch")])
def test_bad_input_is_refused_with_what_was_expected(bad, match):
    with pytest.raises(ValueError, match=match):
        keras_nfnets.preprocess_for_eval(bad, "F0")


def test_size_must_be_positive():
    for size in (0, -3, 2.5):
        with pytest.raises(ValueError, match="positive int"):
            keras_nfnets.preprocess_for_eval(RGB, "F0", size=size)


def test_grayscale_rgba_tiny_and_lists_are_handled():
    layer = default_preprocessing("F0")
    rgb = np.asarray(layer(RGB))
    gray = RGB[..., 0]
    expected_gray = np.asarray(layer(np.repeat(gray[..., None], 3, -1)))
    np.testing.assert_array_equal(np.asarray(layer(gray)), expected_gray)
    np.testing.assert_array_equal(np.asarray(layer(gray[..., None])),
                                  expected_gray)
    rgba = np.concatenate([RGB, np.full_like(RGB[..., :1], 7)], -1)
    np.testing.assert_array_equal(np.asarray(layer(rgba)), rgb)
    np.testing.assert_array_equal(np.asarray(layer(RGB.astype("float32"))),
                                  rgb)
    for variant in ("F0", "ResNet50", "ECA-L0"):  # smaller than the crop
        tiny = keras_nfnets.preprocess_for_eval(
            np.full((1, 1, 3), 90, "uint8"), variant)
        size = default_preprocessing(variant).size
        assert tiny.shape == (size, size, 3)
        np.testing.assert_allclose(np.asarray(tiny), 90, atol=1e-3)
    mixed = [RGB, RGB[:17, :50], gray]
    stacked = np.asarray(keras_nfnets.preprocess_for_eval(mixed, "F0"))
    assert stacked.shape == (3, 256, 256, 3)
    np.testing.assert_array_equal(stacked[0], rgb)
    np.testing.assert_array_equal(stacked[2], expected_gray)
    batch = np.asarray(layer(np.stack([RGB, RGB])))
    np.testing.assert_array_equal(batch[1], rgb)


def test_layer_arguments_are_checked():
    with pytest.raises(ValueError, match="mode"):
        NFNetImagePreprocessing(224, mode="squash")
    with pytest.raises(ValueError, match="crop_pct"):
        NFNetImagePreprocessing(224, mode="center")
    with pytest.raises(ValueError, match="crop_pct"):
        NFNetImagePreprocessing(224, mode="center", crop_pct=1.5)
    with pytest.raises(ValueError, match="interpolation"):
        NFNetImagePreprocessing(224, interpolation="lanczos7")
    with pytest.raises(ValueError, match="mean"):
        NFNetImagePreprocessing(224, mean=(1, 2, 3))


# Issue 27: the preprocessing travels with the model.
@pytest.mark.parametrize("constructor,mode,size,crop_pct", [
    ("ECANFNetL0", "center", 288, 1.0), ("NFNetF0", "resize_crop", 256,
                                         None)])
def test_fine_tuned_keras_file_keeps_its_preprocessing(
        tmp_path, constructor, mode, size, crop_pct):
    """A constructor attaches its weights' authors' preprocessing (read
    from presets.PRESETS); after two SGD steps on 32-px inputs and a
    `.keras` round trip, the loaded model carries the same preprocessing
    and gives the same outputs, and `preprocess_for_eval(images, model)`
    applies it. Each model is built once (F0 is the full 70M-parameter
    network, as the acceptance line asks: its build, two steps and the
    ~280 MB file take most of this test)."""
    model = getattr(keras_nfnets, constructor)(
        weights=None, classes=3, input_shape=(32, 32, 3))
    expected = default_preprocessing(constructor).get_config()
    expected.pop("name")
    got = model.preprocessing.get_config()
    got.pop("name")
    assert got == expected
    assert (got["mode"], got["size"], got["crop_pct"]) == (mode, size,
                                                           crop_pct)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    # (eager steps: tracing the full network's train step would cost more
    # than the two steps; what is tested is the fine-tuned file)
    model.compile(keras.optimizers.SGD(0.01), run_eagerly=True,
                  loss="sparse_categorical_crossentropy")
    model.fit(x, np.array([0, 2]), batch_size=2, epochs=2, verbose=0)
    path = tmp_path / "fine_tuned.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    got = loaded.preprocessing.get_config()
    got.pop("name")
    assert got == expected
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x, training=False)),
        keras.ops.convert_to_numpy(model(x, training=False)), rtol=1e-5,
        atol=1e-6)
    image = rng.integers(0, 256, (120, 90, 3), "uint8")
    np.testing.assert_array_equal(
        np.asarray(keras_nfnets.preprocess_for_eval(image, loaded)),
        np.asarray(keras_nfnets.preprocess_for_eval(image, constructor)))


def test_model_preprocessing_is_config_not_a_sublayer(tmp_path):
    """`NFNetModel.preprocessing` is saved in the model's config (not as a
    tracked sublayer); a config without it (files saved before issue 27)
    loads with None, and anything but the layer, its config or None is
    refused by name."""
    from backend_checks import tiny_model  # pylint: disable=import-outside-toplevel
    model = tiny_model()
    assert model.preprocessing.mode == "resize_crop"  # DeepMind's NFNet
    # Not a tracked sublayer: the weights file's tree does not name it.
    import h5py  # pylint: disable=import-outside-toplevel
    model.save_weights(tmp_path / "tiny.weights.h5")
    with h5py.File(tmp_path / "tiny.weights.h5") as f:
        names = []
        f.visit(names.append)
    assert names and not any("preprocessing" in n for n in names), names
    model.preprocessing = NFNetImagePreprocessing(24, mode="center",
                                                  crop_pct=0.9)
    config = model.get_config()
    assert config["preprocessing"]["mode"] == "center"
    again = keras_nfnets.NFNetModel.from_config(config)
    assert (again.preprocessing.size, again.preprocessing.crop_pct) == (
        24, 0.9)
    del config["preprocessing"]
    assert keras_nfnets.NFNetModel.from_config(config).preprocessing is None
    with pytest.raises(TypeError, match="NFNetImagePreprocessing"):
        model.preprocessing = "resize_crop"
    model.preprocessing = None
    assert "preprocessing" not in model.get_config()
