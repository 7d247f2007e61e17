"""Inference and export: `fold_weight_standardization`.

Every keras_nfnets model exports with Keras's own `model.export(path,
format="tf_saved_model" | "onnx" | "litert")`. A trainable model carries
what training needs into the exported graph: each `WSConv2D` standardizes
its kernel on every call (made to depend on the input, so that training
memory stays low), and the gamma-scaled activations and `remat` are custom
gradients, which TensorFlow saves as extra gradient functions. The exported
artefact then recomputes every standardized kernel per inference, and the
exporters spend most of their time on those gradient functions.

`fold_weight_standardization(model)` returns an inference copy in which each
`WSConv2D` kernel *is* the standardized kernel (a plain convolution plus
bias), with plain activations and no remat: the same numbers, a graph of
plain convolutions. Use it before `export` (and for CPU serving in Keras).

Example:
```python
model = keras_nfnets.NFNetF0(weights="imagenet")
serving = keras_nfnets.fold_weight_standardization(model)
serving.export("nfnet_f0", format="tf_saved_model")
serving.export("nfnet_f0.onnx", format="onnx")
serving.export("nfnet_f0.tflite", format="litert")
```

`export_quantized(model, path, format="litert" | "onnx",
calibration_data=None)` writes an int8 artefact of the same folded model:
dynamic-range (weights int8) without calibration data, full-integer
(activations int8 too, their ranges measured on the calibration images)
with them. Its numbers are not the model's: the int8 rounding changes the
logits a little (docs/performance.md measures how much on the demo model's
held-out images).
"""

import dataclasses
import os
import tempfile

import keras
import numpy as np
from keras import ops

from keras_nfnets import layers as nf_layers
from keras_nfnets import optional


@keras.saving.register_keras_serializable(package="keras_nfnets")
class InputNormalization(keras.layers.Layer):
    """`(x - mean) / max(sqrt(variance), epsilon)` over the last axis, as
    `keras.layers.Normalization` with a given mean and variance, but with
    the statistics as constants of the traced graph.

    `fold_weight_standardization` puts it in place of the models'
    `preprocessing` layer: Keras's `Normalization` keeps them as tensors
    that a traced function captures, and the ONNX export then turns them
    into two extra graph inputs (`preprocessing/Sub/y:0`, `.../Sqrt/x:0`)
    that onnxruntime demands from the caller.
    """

    def __init__(self, mean, variance, **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(v) for v in mean]
        self.variance = [float(v) for v in variance]

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        mean = ops.convert_to_tensor(self.mean, dtype=self.compute_dtype)
        variance = ops.convert_to_tensor(self.variance,
                                         dtype=self.compute_dtype)
        return (x - mean) / ops.maximum(ops.sqrt(variance),
                                        keras.backend.epsilon())

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": self.mean,
                "variance": self.variance}


def _folded_conv_options(options):
    """A `WSConv2D`'s keyword arguments for its folded copy: the kernel is
    the standardized kernel, standardized with the plain (DeepMind) form so
    that a copy reloaded by code that ignores `folded` computes the same
    numbers (see `_fold_conv`)."""
    return {**options, "folded": True, "eps_mode": "floor", "gamma": 1.0}


def _folded_config(layer):
    """The config of `layer`'s inference copy, or None to copy it as is.

    Everything the fold changes is in the config (nothing is written into
    a built layer): each `WSConv2D` is marked `folded`, activations take
    their plain (not custom-gradient) form with the model's own numerics
    (gamma and GELU form: DeepMind's or timm's), and blocks do not
    rematerialize."""
    config = layer.get_config()
    if isinstance(layer, nf_layers.WSConv2D):
        return _folded_conv_options(config)
    if isinstance(layer, nf_layers.ScaledActivation):
        return {**config, "lean_gradient": False}
    if isinstance(layer, nf_layers.NFBlock):
        spec = layer.spec
        spec = dataclasses.replace(
            spec, conv_options=_folded_conv_options(spec.conv_options),
            activation_options={**spec.activation_options,
                                "lean_gradient": False})
        return {**config, "spec": spec, "remat": False}
    return None


def _clone_layer(layer):
    if isinstance(layer, keras.layers.Normalization):
        config = layer.get_config()
        if (config.get("mean") is not None and not config.get("invert")
                and config.get("axis") in (-1, (-1,), [-1])):
            mean = np.broadcast_to(np.asarray(config["mean"], "float64"),
                                   (layer.input.shape[-1],))
            variance = np.broadcast_to(
                np.asarray(config["variance"], "float64"), mean.shape)
            return InputNormalization(mean, variance, name=layer.name,
                                      dtype=layer.dtype_policy)
    config = _folded_config(layer)
    return layer.__class__.from_config(
        layer.get_config() if config is None else config)


def _named_layers(model, prefix=""):
    """`(path, layer)` for every layer of `model`, nested models and
    blocks' sub-layers included (paths by layer name)."""
    for layer in model.layers:
        path = prefix + layer.name
        yield path, layer
        if isinstance(layer, nf_layers.NFBlock):
            for name, sub in layer.named_sublayers().items():
                yield f"{path}/{name}", sub
        elif isinstance(layer, keras.Model):
            yield from _named_layers(layer, path + "/")


def _fold_conv(original, copy):
    """`copy.kernel = w_hat` of `original` (its own numerics: DeepMind's or
    timm's), and `copy.gain` the per-channel norm for which standardizing
    `w_hat` (floor form) gives `w_hat` back."""
    w_hat = original.standardized_kernel()
    norm = ops.sqrt(ops.maximum(ops.sum(ops.square(w_hat), axis=(0, 1, 2)),
                                copy.eps))
    copy.kernel.assign(ops.cast(w_hat, copy.kernel.dtype))
    copy.gain.assign(ops.cast(norm, copy.gain.dtype))


def fold_weight_standardization(model):
    """Returns an inference copy of `model` with the standardized kernels
    folded into plain convolution kernels.

    Each `WSConv2D` of the copy holds `w_hat` (the kernel its original
    standardizes to, with the model's own numerics: DeepMind's
    `(w - mean) * rsqrt(max(N var, eps)) * gain` or timm's) and is marked
    `folded` (kept in its config, so a saved copy reloads folded); its
    `gain` is set to the per-channel norm `sqrt(max(||w_hat||^2, eps))`,
    for which standardizing `w_hat` gives `w_hat` back. Activations use
    their plain (not custom-gradient) form with the model's gamma and GELU
    form, and blocks do not rematerialize. The input normalization
    (`include_preprocessing`) becomes an `InputNormalization` layer with
    the same formula, whose statistics are graph constants (ONNX export
    needs that). The evaluation preprocessing (`NFNetModel.preprocessing`)
    is the copy's too. `model` itself is not changed.

    The copy is for inference and export: its outputs equal `model`'s to
    float rounding (same kernels, same convolutions). It refuses to run in
    training (`fit`, or a call with `training=True`, raises
    `RuntimeError`): the gains no longer act as in training.

    Args:
        model: a model built by keras_nfnets (any family and numerics, with
            or without the top, `feature_extractor=True` included), or any
            functional model containing `WSConv2D`/`NFBlock` layers.

    Returns:
        A new `keras.Model` (same class, layers and layer names).

    Raises:
        TypeError: `model` is not a `keras.Model`.
        ValueError: `model` is already folded.

    Example:
    ```python
    model = keras_nfnets.NFNetF0(weights="imagenet")
    serving = keras_nfnets.fold_weight_standardization(model)
    serving.export("nfnet_f0.onnx", format="onnx")
    ```
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"fold_weight_standardization expects a keras.Model, got "
            f"{type(model).__name__}.")
    originals = dict(_named_layers(model))
    already = [path for path, layer in originals.items()
               if isinstance(layer, nf_layers.WSConv2D) and layer.folded]
    if already:
        raise ValueError(
            f"Model {model.name!r} is already folded (its WSConv2D "
            f"{already[0]!r} holds a standardized kernel); folding it again "
            "would standardize twice. Fold the original model once.")
    folded = keras.models.clone_model(model, clone_function=_clone_layer,
                                      recursive=True)
    for layer in model.layers:
        if layer.weights:
            folded.get_layer(layer.name).set_weights(layer.get_weights())
    copies = dict(_named_layers(folded))
    for path, layer in originals.items():
        if isinstance(layer, nf_layers.WSConv2D):
            _fold_conv(layer, copies[path])
    if getattr(model, "preprocessing", None) is not None:
        # The evaluation preprocessing travels with the weights (it lives
        # in the model's config, which cloning does not carry over).
        folded.preprocessing = model.preprocessing
    # One call on a small batch: exporters expect a model that has run
    # (and it checks the folded graph end to end).
    folded(_probe_inputs(folded), training=False)
    return folded


def _probe_inputs(model):
    def probe(tensor):
        shape = [1] + [32 if d is None else d for d in tensor.shape[1:]]
        return ops.zeros(shape, tensor.dtype)
    return (probe(model.inputs[0]) if len(model.inputs) == 1
            else [probe(t) for t in model.inputs])


#: The formats `export_quantized` writes.
QUANTIZED_FORMATS = ("litert", "onnx")
# Calibration batches handed to onnxruntime's calibrator at a time.
_ONNX_CALIBRATION_BATCH = 8


def _is_folded(model):
    convs = [layer for _, layer in _named_layers(model)
             if isinstance(layer, nf_layers.WSConv2D)]
    return bool(convs) and all(layer.folded for layer in convs)


def _calibration_samples(model, calibration_data):
    """`calibration_data` as a list of float32 batches of the model's input
    shape, checked: None stays None."""
    if calibration_data is None:
        return None
    spec = tuple(model.inputs[0].shape)
    what = ("calibration_data must be model inputs: an array of shape "
            f"(n, {', '.join('any' if d is None else str(d) for d in spec[1:])})"
            ", or an iterable (a list, a generator, a tf.data.Dataset) of "
            "such batches or of (inputs, labels) pairs")
    if isinstance(calibration_data, (str, bytes, dict)):
        raise TypeError(f"{what}; got {type(calibration_data).__name__}.")
    if hasattr(calibration_data, "shape") and hasattr(calibration_data,
                                                      "dtype"):
        batches = [calibration_data]
    else:
        try:
            batches = iter(calibration_data)
        except TypeError:
            raise TypeError(f"{what}; got "
                            f"{type(calibration_data).__name__}.") from None
    out = []
    for i, batch in enumerate(batches):
        if isinstance(batch, (tuple, list)) and batch and hasattr(
                batch[0], "shape"):
            batch = batch[0]  # (inputs, labels[, weights])
        try:
            batch = np.asarray(ops.convert_to_numpy(batch)
                               if hasattr(batch, "shape") else batch,
                               dtype="float32")
        except (TypeError, ValueError) as e:
            raise TypeError(f"{what}; batch {i} is not numeric ({e}).") \
                from None
        if batch.ndim == len(spec) - 1:
            batch = batch[None]  # one image
        shape_ok = batch.ndim == len(spec) and all(
            d is None or d == b for d, b in zip(spec[1:], batch.shape[1:]))
        if not shape_ok:
            raise ValueError(f"{what}; batch {i} has shape {batch.shape}.")
        if not np.all(np.isfinite(batch)):
            raise ValueError(f"calibration_data batch {i} holds NaN or "
                             "infinite values.")
        if len(batch):
            out.append(batch)
    if not out:
        raise ValueError("calibration_data holds no inputs: give a few "
                         "hundred representative images (or pass "
                         "calibration_data=None for dynamic-range "
                         "quantization).")
    return out


def _litert_int8(model, path, samples):
    tf = optional.require("tensorflow", "int8 LiteRT export")
    options = dict(optimizations=[tf.lite.Optimize.DEFAULT])
    if samples is not None:
        def representative_dataset():
            for batch in samples:
                for i in range(len(batch)):
                    yield [batch[i:i + 1]]
        options["representative_dataset"] = representative_dataset
    model.export(path, format="litert", verbose=False, **options)


def _onnx_int8(model, path, samples, workdir):
    optional.require("onnxruntime", "int8 ONNX export")
    source = os.path.join(workdir, "float32.onnx")
    model.export(source, format="onnx", verbose=False)
    quantize_onnx_file(source, path, samples, workdir)


def quantize_onnx_file(source, path, samples=None, workdir=None):
    """Writes an int8 copy of the float ONNX model `source` to `path` with
    onnxruntime's quantizer, after its recommended pre-processing (shape
    inference, and graph optimization, which also folds constant
    sub-graphs such as the grouped convolutions' kernel splits into
    plain weights): `quantize_dynamic` (weights uint8, the activations
    quantized per call: onnxruntime's CPU `ConvInteger` has only the uint8
    x uint8 kernel) without `samples`, else `quantize_static` in QDQ form
    (per-channel int8 weights, int8 activations with the ranges of
    `samples`, a list of input batches). The result is loaded once in an
    `InferenceSession`, so that a graph onnxruntime cannot run fails here
    rather than at serving time."""
    # pylint: disable=import-outside-toplevel
    ort = optional.require("onnxruntime", "int8 ONNX export")
    quantization = optional.require("onnxruntime.quantization",
                                    "int8 ONNX export")
    onnx = optional.require("onnx", "int8 ONNX export")
    from onnxruntime.quantization.shape_inference import quant_pre_process
    workdir = workdir or os.path.dirname(os.path.abspath(path))
    prepared = os.path.join(workdir, "prepared.onnx")
    # (Symbolic shape inference is for transformer graphs; it gives up on
    # the convolutions' padding, and ONNX's own shape inference runs.)
    quant_pre_process(source, prepared, skip_symbolic_shape=True)
    if samples is None:
        quantization.quantize_dynamic(
            prepared, path, weight_type=quantization.QuantType.QUInt8)
    else:
        graph = onnx.load(prepared, load_external_data=False).graph
        weights = {t.name for t in graph.initializer}
        name = next(t.name for t in graph.input if t.name not in weights)

        class Reader(quantization.CalibrationDataReader):
            def __init__(self):
                self._feeds = iter(_onnx_feeds(name, samples))

            def get_next(self):
                return next(self._feeds, None)

        quantization.quantize_static(
            prepared, path, Reader(),
            quant_format=quantization.QuantFormat.QDQ, per_channel=True,
            # int8 x int8: onnxruntime's documented first choice; its
            # uint8 x int8 kernels can saturate on AVX2 CPUs without VNNI.
            activation_type=quantization.QuantType.QInt8,
            weight_type=quantization.QuantType.QInt8,
            calibrate_method=quantization.CalibrationMethod.MinMax)
    ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def _onnx_feeds(name, samples):
    """Calibration batches for onnxruntime, at most
    `_ONNX_CALIBRATION_BATCH` images each."""
    for batch in samples:
        for i in range(0, len(batch), _ONNX_CALIBRATION_BATCH):
            yield {name: batch[i:i + _ONNX_CALIBRATION_BATCH]}


def export_quantized(model, filepath, format="litert",
                     calibration_data=None, verbose=True):
    """Exports an int8 copy of `model` for CPU serving, as LiteRT or ONNX.

    The model is folded first (`fold_weight_standardization`, unless it is
    already folded) and exported as `model.export` would export it (dynamic
    batch, float32 input and output); then its weights, and with
    `calibration_data` its activations, are quantized to 8 bits:

    * `calibration_data=None`: **dynamic-range**. Weights are stored in
      int8 (LiteRT: per channel; ONNX: onnxruntime's `quantize_dynamic`,
      uint8), activations are quantized on the fly for each call. No data
      needed.
    * `calibration_data` given: **full-integer** (static). The
      activations' ranges are measured by running the folded model on
      these inputs; convolutions and the other ops with int8 kernels run
      in int8 (LiteRT's converter with a representative dataset, ops
      without an int8 kernel stay float; ONNX: onnxruntime's
      `quantize_static` in QDQ form, per-channel int8 weights, int8
      activations). Give a few hundred images the model will see, from
      the training set, preprocessed as for inference.

    The artefact's numbers are not the model's: each quantized tensor is
    rounded to 256 levels, so the logits change a little and a prediction
    near a tie can flip. Measure the change on held-out data before
    serving it (docs/performance.md has the demo model's). For the
    model's exact numbers, export the folded model in float32
    (`model.export`).

    The file is written atomically: on any error nothing is left at
    `filepath`, and a file already there is kept.

    Args:
        model: a keras_nfnets model (any family, folded or not) with one
            input.
        filepath: where to write the artefact: a `.tflite` file for
            `"litert"`, a `.onnx` file for `"onnx"`. Its folder must exist.
        format: `"litert"` (the LiteRT interpreter, XNNPACK; needs the
            TensorFlow backend) or `"onnx"` (onnxruntime; needs the
            `onnx` and `onnxruntime` packages).
        calibration_data: None (dynamic-range), or model inputs for
            full-integer quantization: an array of shape `(n, height,
            width, 3)` as the model takes it, or an iterable (list,
            generator, `tf.data.Dataset`) of such batches or of `(inputs,
            labels)` pairs.
        verbose: print where the artefact was written.

    Raises:
        TypeError: `model` is not a `keras.Model`, or `calibration_data`
            is not model inputs.
        ValueError: an unknown `format`, a `filepath` of the wrong kind, a
            model with several inputs, or calibration data of the wrong
            shape, empty, or not finite.
        FileNotFoundError: the folder of `filepath` does not exist.

    Example:
    ```python
    model = keras_nfnets.NFNetF0(weights="imagenet")
    # Weights in int8, nothing else needed:
    keras_nfnets.export_quantized(model, "nfnet_f0_int8.tflite")
    # Full-integer, calibrated on training images (n, 256, 256, 3), 0-255:
    keras_nfnets.export_quantized(model, "nfnet_f0_int8.onnx",
                                  format="onnx", calibration_data=images)
    ```
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"export_quantized expects a keras.Model, got "
                        f"{type(model).__name__}.")
    if format not in QUANTIZED_FORMATS:
        raise ValueError(
            f"export_quantized: format must be one of {QUANTIZED_FORMATS} "
            f"(int8 LiteRT or ONNX), got {format!r}. For a float32 artefact "
            "use model.export(path, format=...).")
    filepath = os.fspath(filepath)
    suffix = {"litert": ".tflite", "onnx": ".onnx"}[format]
    if not filepath.endswith(suffix):
        raise ValueError(f"export_quantized: format={format!r} writes a "
                         f"{suffix} file; got filepath {filepath!r}.")
    folder = os.path.dirname(os.path.abspath(filepath))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"export_quantized: the folder {folder!r} "
                                f"of {filepath!r} does not exist.")
    if os.path.isdir(filepath):
        raise ValueError(f"export_quantized: {filepath!r} is a folder; "
                         f"give the path of a {suffix} file.")
    if len(model.inputs) != 1:
        raise ValueError(f"export_quantized: model {model.name!r} has "
                         f"{len(model.inputs)} inputs; only one-input "
                         "models are supported.")
    if format == "litert" and keras.backend.backend() != "tensorflow":
        raise ValueError("export_quantized(format='litert') converts with "
                         "TensorFlow's LiteRT converter: use the TensorFlow "
                         f"backend (KERAS_BACKEND=tensorflow); this is "
                         f"{keras.backend.backend()!r}.")
    samples = _calibration_samples(model, calibration_data)
    serving = model if _is_folded(model) else fold_weight_standardization(
        model)
    with tempfile.TemporaryDirectory(dir=folder,
                                     prefix=".export_quantized-") as tmp:
        partial = os.path.join(tmp, "int8" + suffix)
        if format == "litert":
            _litert_int8(serving, partial, samples)
        else:
            _onnx_int8(serving, partial, samples, tmp)
        os.replace(partial, filepath)
    if verbose:
        mode = ("dynamic-range" if samples is None else
                f"full-integer, {sum(len(b) for b in samples)} calibration "
                "inputs")
        print(f"Saved int8 ({mode}) {format} artifact at '{filepath}'.")
