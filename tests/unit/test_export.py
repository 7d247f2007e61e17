"""`model.export` to SavedModel, ONNX, LiteRT and OpenVINO, and
`fold_weight_standardization`: the artefacts, run by their own runtimes
(`tf.saved_model.load`, onnxruntime, the LiteRT interpreter, OpenVINO at
fp32), give the Keras model's outputs and DeepMind's reference numbers."""

import gc

import numpy as np
import pytest

import keras

import keras_nfnets
from keras_nfnets import builder, export as nf_export, layers as nf_layers
from keras_nfnets import variants

from conftest import deepmind_fixture, fixture_path, relative_error

FORMATS = ("tf_saved_model", "onnx", "litert", "openvino")

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="SavedModel/ONNX/LiteRT/OpenVINO export is tested on the "
    "TensorFlow backend")


@pytest.fixture(autouse=True)
def _free_models():
    yield
    keras.backend.clear_session()
    gc.collect()


def _path(tmp_path, fmt):
    if fmt == "openvino":
        pytest.importorskip("openvino")
    return str(tmp_path / {"tf_saved_model": "saved_model", "onnx": "m.onnx",
                           "litert": "m.tflite", "openvino": "m.xml"}[fmt])


def run_artefact(fmt, path, x):
    """Runs an exported model with its own runtime; returns a list of
    arrays (one per output)."""
    x = np.asarray(x, "float32")
    if fmt == "tf_saved_model":
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        loaded = tf.saved_model.load(path)  # keep it alive while it runs
        out = loaded.serve(tf.constant(x))
        out = list(out.values()) if isinstance(out, dict) else [out]
        return [np.asarray(o) for o in out]
    if fmt == "onnx":
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(path,
                                       providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})
    if fmt == "openvino":
        ov = pytest.importorskip("openvino")
        # fp32: on a CPU with bf16 arithmetic OpenVINO's default is bf16.
        compiled = ov.Core().compile_model(
            path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        out = compiled(x)
        return [np.asarray(out[o]) for o in compiled.outputs]
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    interpreter = litert.Interpreter(model_path=path)
    inp = interpreter.get_input_details()[0]
    if tuple(inp["shape"]) != x.shape:
        interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"])
            for d in interpreter.get_output_details()]


def _by_shape(outputs):
    return {tuple(o.shape): o for o in outputs}


def tiny_nfnet(**kwargs):
    args = dict(config=str(fixture_path("nfnet_tiny_config.json")),
                weights=str(fixture_path("nfnet_tiny_haiku.npz")), classes=10,
                input_shape=(40, 40, 3), classifier_activation=None,
                include_preprocessing=False)
    args.update(kwargs)
    return keras_nfnets.NFNet(**args)


@pytest.mark.parametrize("fmt", FORMATS)
def test_folded_tiny_nfnet_dynamic_batch(fmt, tmp_path):
    """The recommended path: fold, export with a dynamic batch, run at two
    batch sizes: DeepMind's logits and the Keras model's."""
    ref = deepmind_fixture("nfnet_tiny_reference.npz")
    model = tiny_nfnet()
    serving = keras_nfnets.fold_weight_standardization(model)
    path = _path(tmp_path, fmt)
    serving.export(path, format=fmt, verbose=False)
    x2 = ref["inputs"]
    x3 = np.concatenate([x2, x2[::-1], x2[:1]])[:3] * 0.5
    for x in (x2, x3):
        (got,) = run_artefact(fmt, path, x)
        expected = np.asarray(model(x, training=False))
        assert got.shape == expected.shape == (len(x), 10)
        assert np.max(np.abs(got - expected)) < 1e-4
    (got,) = run_artefact(fmt, path, x2)
    assert relative_error(got, ref["logits"]) < 1e-4
    if fmt != "tf_saved_model":
        _assert_one_conv_per_layer(fmt, path, serving)
    if fmt == "onnx":
        _assert_gelus_fused_by_onnxruntime(path)


def _assert_gelus_fused_by_onnxruntime(path):
    """Every scaled GELU of the ONNX export is one `FastGelu` kernel once
    onnxruntime has optimized the graph (`keras_nfnets.onnx_gelu`), with
    no `Tanh` left."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    gelus = [n for n in onnx.load(path).graph.node if n.op_type == "Tanh"]
    assert gelus  # one per activation (the stem's and each block's)
    options = ort.SessionOptions()
    options.optimized_model_filepath = path + ".optimized.onnx"
    ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    ops_ = [n.op_type for n in
            onnx.load(options.optimized_model_filepath).graph.node]
    assert ops_.count("FastGelu") == len(gelus) and "Tanh" not in ops_


def _assert_one_conv_per_layer(fmt, path, model):
    """ONNX, LiteRT and OpenVINO exports hold one convolution op per
    `WSConv2D` layer, grouped ones included (`NFNetModel.export`: not one
    per group), and no split."""
    convs = [layer for _, layer in nf_export._named_layers(model)
             if isinstance(layer, nf_layers.WSConv2D)]
    grouped = sum(layer.groups > 1 for layer in convs)
    assert grouped > 0
    if fmt == "onnx":
        onnx = pytest.importorskip("onnx")
        nodes = onnx.load(path).graph.node
        ops_ = [n.op_type for n in nodes]
        groups = [next((a.i for a in n.attribute if a.name == "group"), 1)
                  for n in nodes if n.op_type == "Conv"]
        assert ops_.count("Conv") == len(convs) and "Split" not in ops_
        assert sum(g > 1 for g in groups) == grouped
    elif fmt == "openvino":
        ov = pytest.importorskip("openvino")
        ops_ = [op.get_type_name() for op in ov.Core().read_model(path).get_ops()]
        assert ops_.count("GroupConvolution") == grouped
        assert ops_.count("Convolution") + grouped == len(convs)
        assert "Split" not in ops_ and "VariadicSplit" not in ops_
    else:
        litert = pytest.importorskip("ai_edge_litert.interpreter")
        interpreter = litert.Interpreter(
            model_path=path,
            experimental_op_resolver_type=(
                litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
        ops_ = [op["op_name"] for op in interpreter._get_ops_details()]
        assert ops_.count("CONV_2D") == len(convs) and "SPLIT" not in ops_


@pytest.mark.slow  # CI time: the folded dynamic-batch test covers the four formats
@pytest.mark.parametrize("fmt", FORMATS)
def test_unfolded_tiny_nfnet_fixed_batch(fmt, tmp_path):
    """`model.export` on the training model itself, at a fixed batch size."""
    ref = deepmind_fixture("nfnet_tiny_reference.npz")
    model = tiny_nfnet(classifier_activation="softmax")
    path = _path(tmp_path, fmt)
    model.export(path, format=fmt, verbose=False,
                 input_signature=[keras.InputSpec(shape=(2, 40, 40, 3),
                                                  dtype="float32")])
    (got,) = run_artefact(fmt, path, ref["inputs"])
    expected = np.asarray(model(ref["inputs"], training=False))
    assert got.shape == (2, 10)
    assert np.max(np.abs(got - expected)) < 1e-5  # probabilities
    reference = keras.ops.convert_to_numpy(
        keras.ops.softmax(ref["logits"], axis=-1))
    assert np.max(np.abs(got - reference)) < 1e-5


def _unnormalize(x):
    return (x * np.array(builder.IMAGENET_STD, "float32")
            + np.array(builder.IMAGENET_MEAN, "float32"))


@pytest.mark.slow  # CI time: the folded dynamic-batch test covers the four formats
@pytest.mark.parametrize("fmt", FORMATS)
def test_nf_resnet_headless_with_preprocessing(fmt, tmp_path):
    """NF-ResNet-50 (DeepMind fixture), no top, pooled, with the model's
    own 0-255 preprocessing, folded, dynamic batch."""
    ref = deepmind_fixture("nf_resnet50_w1_reference.npz")
    model = keras_nfnets.NFResNet50(
        weights=str(fixture_path("nf_resnet50_w1_haiku.npz")), width=1,
        include_top=False, pooling="avg", input_shape=(64, 64, 3))
    path = _path(tmp_path, fmt)
    keras_nfnets.fold_weight_standardization(model).export(
        path, format=fmt, verbose=False)
    x = _unnormalize(ref["inputs"])  # 4 images, 0-255
    for batch in (x, x[:1]):
        (got,) = run_artefact(fmt, path, batch)
        expected = np.asarray(model(batch, training=False))
        assert np.max(np.abs(got - expected)) < 1e-4 * np.abs(expected).max()
    (got,) = run_artefact(fmt, path, x)
    assert relative_error(got, ref["pool"]) < 1e-4


# CI time: ONNX (the format that needs the fold) in `make test`; the other three
# formats run the same feature maps in `make test-all`.
@pytest.mark.parametrize("fmt", [
    pytest.param(f, marks=() if f == "onnx" else pytest.mark.slow)
    for f in FORMATS])
def test_nf_regnet_feature_maps_fixed_batch(fmt, tmp_path):
    """NF-RegNet-B0 (DeepMind fixture) as a backbone: the five feature maps
    of `feature_extractor=True`, folded, exported at a fixed batch size."""
    ref = deepmind_fixture("nf_regnet_b0_reference.npz")
    model = keras_nfnets.NFRegNetB0(
        weights=str(fixture_path("nf_regnet_b0_haiku.npz")),
        feature_extractor=True, include_preprocessing=False)
    path = _path(tmp_path, fmt)
    keras_nfnets.fold_weight_standardization(model).export(
        path, format=fmt, verbose=False,
        input_signature=[keras.InputSpec(shape=(4, 64, 64, 3),
                                         dtype="float32")])
    got = _by_shape(run_artefact(fmt, path, ref["inputs"]))
    expected = model(ref["inputs"], training=False)
    assert len(got) == 5
    for key, value in expected.items():
        value = np.asarray(value)
        diff = np.max(np.abs(got[value.shape] - value))
        assert diff < 1e-4 * np.abs(value).max(), key
    assert relative_error(got[(4, 2, 2, 960)].mean(axis=(1, 2)),
                          ref["pool"]) < 1e-4


def test_fold_gives_plain_kernels_and_the_same_numbers(tmp_path):
    """Every WSConv2D of the copy holds the standardized kernel; the
    original is untouched; the copy reloads (still folded) to the same
    numbers; the exported graph has no custom gradients."""
    ref = deepmind_fixture("nfnet_tiny_reference.npz")
    model = tiny_nfnet()
    before = [np.array(v) for v in model.weights]
    folded = keras_nfnets.fold_weight_standardization(model)
    assert type(folded) is type(model)
    for a, b in zip(model.weights, before):
        np.testing.assert_array_equal(np.array(a), b)

    def convs(m):
        out = []
        for layer in m.layers:
            if isinstance(layer, nf_layers.WSConv2D):
                out.append(layer)
            if isinstance(layer, nf_layers.NFBlock):
                out.extend(s for s in layer.named_sublayers().values()
                           if isinstance(s, nf_layers.WSConv2D))
        return out

    pairs = list(zip(convs(model), convs(folded)))
    assert len(pairs) == 33  # 4 stem, 6 blocks x 4, 4 shortcuts, final_conv
    for original, copy in pairs:
        assert copy.folded and not original.folded
        np.testing.assert_allclose(np.array(copy.kernel),
                                   np.array(original.standardized_kernel()),
                                   atol=0, rtol=0)
    x = ref["inputs"]
    logits = np.asarray(folded(x, training=False))
    np.testing.assert_allclose(logits, np.asarray(model(x, training=False)),
                               atol=1e-6)
    assert relative_error(logits, ref["logits"]) < 1e-4

    folded.save(tmp_path / "folded.keras")
    again = keras.saving.load_model(tmp_path / "folded.keras")
    assert all(c.folded for c in convs(again))  # the flag is in the config
    np.testing.assert_allclose(np.asarray(again(x, training=False)), logits,
                               atol=1e-5)

    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    graph = tf.function(lambda t: folded(t, training=False)).get_concrete_function(
        tf.TensorSpec((None, 40, 40, 3), tf.float32)).graph.as_graph_def()
    ops = {n.op for n in graph.node} | {
        n.op for f in graph.library.function for n in f.node_def}
    assert "IdentityN" not in ops  # what tf.custom_gradient leaves
    with pytest.raises(TypeError, match="keras.Model"):
        keras_nfnets.fold_weight_standardization(object())


# Tiny models of each family in each numerics, random weights (the timm
# models have no skip gain, so their residual branches act at init).
TINY_TIMM = {
    "eca_nfnet": variants.NFNetConfig(
        width=(16, 32, 32, 64), depth=(1, 1, 1, 1), group_width=(8,) * 4,
        expansion=(0.5,) * 4, activation="silu", attention="eca", ch_div=8,
        se_divisor=8, skip_gain=False, stem_width=16, numerics="timm",
        final_conv_mult=1.5, drop_rate=0.0, stochdepth_rate=0.0),
    "nf_resnet": variants.NFResNetConfig(
        depth=(1, 1, 1, 1), width=0.25, strided_shortcut=False,
        skip_gain=False, numerics="timm", stochdepth_rate=0.0),
    "nf_regnet": variants.NFRegNetConfig(
        width=(16, 24, 32, 48), depth=(1, 1, 1, 1), ch_div=8,
        width_multiplier=1.0, skip_gain=False, numerics="timm",
        drop_rate=0.0, stochdepth_rate=0.0),
}


def _tiny_timm(name):
    return builder.build_nfnet(TINY_TIMM[name], classes=5,
                               input_shape=(32, 32, 3), seed=1,
                               classifier_activation=None)


def _images(n=2, size=32, seed=3):
    return np.random.default_rng(seed).uniform(
        0, 255, (n, size, size, 3)).astype("float32")


@pytest.mark.parametrize("name", sorted(TINY_TIMM))
def test_fold_keeps_timm_numerics(name, tmp_path):
    """Regression (issue 32, item 1): the folded copy of a timm-numerics
    model used DeepMind's activation gain; its logits and its `.keras`
    reload equal the unfolded model's."""
    model = _tiny_timm(name)
    x = _images()
    expected = np.asarray(model(x, training=False))
    folded = keras_nfnets.fold_weight_standardization(model)
    got = np.asarray(folded(x, training=False))
    assert relative_error(got, expected) < 1e-4
    folded.save(tmp_path / "folded.keras")
    again = keras.saving.load_model(tmp_path / "folded.keras")
    assert relative_error(np.asarray(again(x, training=False)),
                          expected) < 1e-4


def test_fold_keeps_deepmind_numerics():
    """The same check on DeepMind's numerics (tiny NFNet, fixture weights,
    non-zero skip gains), against DeepMind's logits too."""
    ref = deepmind_fixture("nfnet_tiny_reference.npz")
    model = tiny_nfnet()
    folded = keras_nfnets.fold_weight_standardization(model)
    got = np.asarray(folded(ref["inputs"], training=False))
    assert relative_error(
        got, np.asarray(model(ref["inputs"], training=False))) < 1e-4
    assert relative_error(got, ref["logits"]) < 1e-4


def test_fold_keeps_the_evaluation_preprocessing(tmp_path):
    """The folded copy carries the model's `preprocessing` (the weights'
    evaluation recipe), also through a .keras round trip."""
    model = tiny_nfnet()
    model.preprocessing = keras_nfnets.NFNetImagePreprocessing(
        size=40, crop_padding=8)
    def recipe(m):  # the config without the per-instance layer name
        return {k: v for k, v in m.preprocessing.get_config().items()
                if k != "name"}

    folded = keras_nfnets.fold_weight_standardization(model)
    assert recipe(folded) == recipe(model)
    path = str(tmp_path / "folded.keras")
    folded.save(path)
    assert recipe(keras.saving.load_model(path)) == recipe(model)
    model.preprocessing = None
    assert keras_nfnets.fold_weight_standardization(
        model).preprocessing is None


def test_fold_refuses_a_folded_model_and_training():
    """A second fold is refused by name; the folded copy refuses to train
    (its gains would get no gradient) and still predicts."""
    folded = keras_nfnets.fold_weight_standardization(
        _tiny_timm("eca_nfnet"))
    with pytest.raises(ValueError, match="already folded"):
        keras_nfnets.fold_weight_standardization(folded)
    folded.compile(optimizer="sgd", loss="mse")
    with pytest.raises(RuntimeError, match="folded for inference"):
        folded.fit(_images(), np.zeros((2, 5), "float32"), epochs=1,
                   verbose=0)
    assert folded.predict(_images(), verbose=0).shape == (2, 5)


def test_folded_timm_model_saved_model(tmp_path):
    """The folded timm-numerics model exported as a SavedModel gives the
    unfolded Keras logits."""
    model = _tiny_timm("eca_nfnet")
    path = _path(tmp_path, "tf_saved_model")
    keras_nfnets.fold_weight_standardization(model).export(
        path, format="tf_saved_model", verbose=False)
    x = _images()
    (got,) = run_artefact("tf_saved_model", path, x)
    assert relative_error(got, np.asarray(model(x, training=False))) < 1e-4


# Symmetric 8-bit rounding of a tensor moves each element by at most half
# a step, 1/254 of the tensor's largest magnitude.
INT8_ROUNDING = 1 / 254


def _int8_bound(roundings):
    """The largest relative change of the logits (`relative_error`) that
    `roundings` 8-bit roundings on the path from input to logits can make
    to first order, each at most `INT8_ROUNDING` of its tensor's range,
    compounded (a conservative bound: residual sums only add errors)."""
    return (1 + INT8_ROUNDING) ** roundings - 1


def test_export_quantized_litert_stays_near_float(tmp_path):
    """Dynamic-range int8 LiteRT of the tiny NFNet (DeepMind's weights):
    the file holds int8 weights, and its logits are within what 8-bit
    rounding of each kernel and of each kernel's input can change."""
    ref = deepmind_fixture("nfnet_tiny_reference.npz")
    model = tiny_nfnet()
    path = str(tmp_path / "m.tflite")
    keras_nfnets.export_quantized(model, path, verbose=False)
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    details = litert.Interpreter(model_path=path).get_tensor_details()
    assert any(d["dtype"] == np.int8 for d in details)  # weights in int8
    expected = np.asarray(model(ref["inputs"], training=False))
    (got,) = run_artefact("litert", path, ref["inputs"])
    assert got.shape == expected.shape == (2, 10)
    kernels = sum(1 for v in model.weights if v.name == "kernel")
    # Two roundings per kernel (the weights and the activations it meets).
    assert 0 < relative_error(got, expected) < _int8_bound(2 * kernels)
    assert relative_error(got, ref["logits"]) < _int8_bound(2 * kernels)


@pytest.mark.slow  # CI time: the LiteRT test above covers export_quantized
def test_export_quantized_onnx_calibrated(tmp_path):
    """Full-integer (static, QDQ) int8 ONNX of the tiny NFNet calibrated on
    a few images: the graph quantizes, and its logits stay within what its
    roundings can change."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    ref = deepmind_fixture("nfnet_tiny_reference.npz")
    model = tiny_nfnet()
    rng = np.random.default_rng(0)
    calibration = np.concatenate(
        [ref["inputs"], rng.normal(size=(6, 40, 40, 3)).astype("float32")])
    path = str(tmp_path / "m.onnx")
    keras_nfnets.export_quantized(model, path, format="onnx",
                                  calibration_data=calibration, verbose=False)
    nodes = [n.op_type for n in onnx.load(path).graph.node]
    roundings = nodes.count("QuantizeLinear")
    assert roundings and "DequantizeLinear" in nodes
    expected = np.asarray(model(ref["inputs"], training=False))
    (got,) = run_artefact("onnx", path, ref["inputs"])
    kernels = sum(1 for v in model.weights if v.name == "kernel")
    assert 0 < relative_error(got, expected) < _int8_bound(
        roundings + kernels)


def test_export_quantized_refuses_bad_input(tmp_path):
    """A bad format, path or calibration set is refused by name before any
    work, and a file already at the path is left as it was."""
    model = _tiny_timm("eca_nfnet")  # 32 px
    keep = tmp_path / "m.tflite"
    keep.write_bytes(b"keep")
    export = keras_nfnets.export_quantized
    with pytest.raises(ValueError, match="format must be one of"):
        export(model, tmp_path / "m", format="tf_saved_model")
    with pytest.raises(ValueError, match=r"writes a \.onnx file"):
        export(model, keep, format="onnx")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export(model, tmp_path / "missing" / "m.tflite")
    with pytest.raises(ValueError, match=r"calibration_data.*shape \(2, 40"):
        export(model, keep, calibration_data=np.zeros((2, 40, 40, 3)))
    with pytest.raises(ValueError, match="holds no inputs"):
        export(model, keep, calibration_data=[])
    with pytest.raises(ValueError, match="NaN or infinite"):
        export(model, keep, calibration_data=np.full((1, 32, 32, 3), np.nan))
    with pytest.raises(TypeError, match="calibration_data must be"):
        export(model, keep, calibration_data="train_images/")
    with pytest.raises(TypeError, match="keras.Model"):
        export(object(), keep)
    assert keep.read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite"]
