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
"""

import dataclasses

import keras
import numpy as np
from keras import ops

from keras_nfnets import layers as nf_layers


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
    needs that). `model` itself is not changed.

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
