"""`NFNetModel`: the functional `keras.Model` that the constructors return."""

import json
import logging

import keras

from keras_nfnets import onnx_gelu, runtime


@keras.saving.register_keras_serializable(package="keras_nfnets")
class NFNetModel(keras.Model):
    """A functional Keras model built by keras_nfnets.

    It behaves exactly like `keras.Model`; it is its own class so that
    training features (adaptive gradient clipping) can hook into it.
    """

    #: `compile()`'s AGC threshold when `agc_clipping` is not given; the
    #: constructors set it per family
    #: (`keras_nfnets.optim.agc.FAMILY_DEFAULTS`).
    default_agc_clipping = 0.01
    #: The evaluation preprocessing's config (JSON), or None; read and set
    #: through `preprocessing`.
    _preprocessing_json = None

    # -- evaluation preprocessing (keras_nfnets.preprocessing) -----------
    @property
    def preprocessing(self):
        """The evaluation preprocessing the model's weights were evaluated
        with (a `keras_nfnets.NFNetImagePreprocessing`), or None.

        The constructors attach their family's default (DeepMind's
        `resize_crop_32` for the NFNets, ...); it is saved in the model's
        config, so `.keras` files and fine-tuned copies carry it, and
        `keras_nfnets.preprocess_for_eval(images, model)` applies it.
        Each read returns a new layer: assign another layer, its config or
        None to change it.

        Example:
        >>> model = keras_nfnets.NFNetF0(weights=None)
        >>> model.preprocessing.mode, model.preprocessing.size
        ('resize_crop', 256)
        """
        if self._preprocessing_json is None:
            return None
        # pylint: disable-next=import-outside-toplevel
        from keras_nfnets import preprocessing
        return preprocessing.NFNetImagePreprocessing.from_config(
            json.loads(self._preprocessing_json))

    def __dir__(self):
        # Keras's saving walks `dir(model)` and saves every layer it finds
        # there: the preprocessing lives in the config, not in the weights
        # tree (which stays as before, for old and new files alike).
        return [name for name in super().__dir__() if name != "preprocessing"]

    def __setattr__(self, name, value):
        if name == "preprocessing":
            # Kept as a JSON string: a Layer attribute would become one of
            # the model's tracked sublayers (Keras tracks on assignment).
            name, value = "_preprocessing_json", _preprocessing_json(value)
        super().__setattr__(name, value)

    # -- export: grouped convolutions as one op for ONNX / LiteRT ---------
    def export(self, filepath, format="tf_saved_model", *args, **kwargs):
        """`keras.Model.export`. For `format="onnx"` and `"litert"` on the
        TensorFlow backend, each grouped convolution is exported as one
        grouped convolution op (ONNX `Conv` with `group`, LiteRT `CONV_2D`)
        rather than one convolution per group: the runtimes run it faster
        (docs/performance.md, "Inference and export"). An ONNX file's
        scaled GELUs are then written in the form onnxruntime fuses into
        one kernel each (`keras_nfnets.onnx_gelu`). The numbers are the
        same, up to float rounding. Any format is traced without the
        custom gradients of training (`runtime.exporting`): for
        `format="openvino"` (an OpenVINO IR `.xml` and `.bin`; needs the
        `openvino` package), compile it with
        `{"INFERENCE_PRECISION_HINT": "f32"}` for the model's numbers: on a
        CPU with bf16 arithmetic (AMX, AVX512-BF16), OpenVINO computes in
        bf16 unless told otherwise.

        Example:
        >>> folded = keras_nfnets.fold_weight_standardization(model)
        >>> folded.export("nfnet_f0.onnx", format="onnx")
        >>> folded.export("nfnet_f0.xml", format="openvino")
        """
        with runtime.export_scope(format):
            result = super().export(filepath, format, *args, **kwargs)
        if format == "onnx":
            onnx_gelu.canonical_gelu_file(filepath)
        return result

    # -- remat="auto": decided once per traced training step -------------
    def call(self, inputs, training=None, mask=None, **kwargs):
        with step_remat_scope(self, inputs, training):
            return super().call(inputs, training=training, mask=mask,
                                **kwargs)

    # -- adaptive gradient clipping (keras_nfnets.optim) -----------------
    def compile(self, optimizer="rmsprop", *args, agc_clipping="default",
                agc_eps=1e-3, agc_exclude=None, **kwargs):
        """`keras.Model.compile`, plus adaptive gradient clipping.

        Training applies DeepMind's AGC to every trainable variable except
        the classifier weight, to the reduced (cross-replica mean) gradient,
        inside the optimizer's `update_step`, by making the optimizer a
        `keras_nfnets.AGC` (not done if it already is one, e.g.
        `nfnet_optimizer(...)`). Under the `mixed_float16` policy the
        optimizer goes inside a `SkipCountingLossScaleOptimizer` (Keras's
        `LossScaleOptimizer`, counting the non-finite steps it skips in the
        AGC's `skipped_steps`).

        Args:
            agc_clipping: the AGC threshold; `None` turns AGC off (the
                optimizer is used as given). `"default"`: the model
                family's, as DeepMind trained it (`default_agc_clipping`):
                0.01 for NFNets, off for NF-ResNets and NF-RegNets. The
                0.01 default was tuned for SGD: with Adam and other
                adaptive optimizers AGC warns unless you pass a value.
            agc_eps: floor of the unit-wise weight norm (1e-3).
            agc_exclude: layer names or variable paths not clipped.
                Default: the classifier weight, `linear/kernel` (as
                DeepMind, the classifier bias is clipped); nothing without
                a top. `("linear",)` excludes the whole classifier.

        Example:
        ```python
        model = keras_nfnets.NFNetF0(weights=None, classes=10)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                      loss="sparse_categorical_crossentropy",
                      agc_clipping=0.01)
        ```
        """
        # pylint: disable-next=import-outside-toplevel
        from keras_nfnets.optim import agc, skip
        if agc_clipping == "default":
            agc_clipping = self.default_agc_clipping
            if agc_clipping == agc.DEFAULT_CLIPPING:
                agc_clipping = agc.DEFAULT_CLIPPING  # the SGD-tuned value
        optimizer = keras.optimizers.get(optimizer)
        # (a skip-counting LossScaleOptimizer around an AGC: a recompile)
        inner = getattr(optimizer, "inner_optimizer", optimizer)
        if agc_clipping and not isinstance(inner, agc.AGC):
            if agc_exclude is None:
                agc_exclude = default_agc_exclude(self)
            optimizer = agc.AGC(optimizer, clipping=agc_clipping, eps=agc_eps,
                                exclude=agc_exclude)
        if (isinstance(optimizer, agc.AGC)
                and kwargs.get("auto_scale_loss", True)
                and self.dtype_policy.name == "mixed_float16"):
            # Keras would wrap a plain LossScaleOptimizer, whose skipped
            # steps no one counts.
            optimizer = skip.SkipCountingLossScaleOptimizer(optimizer)
        super().compile(optimizer, *args, **kwargs)
        self._agc_compile_args = {
            "agc_clipping": None if not agc_clipping else float(agc_clipping),
            "agc_eps": agc_eps, "agc_exclude": agc_exclude}

    def make_train_function(self, force=False):
        build_optimizer_first(self)
        return super().make_train_function(force=force)

    def get_config(self):
        config = super().get_config()
        config["default_agc_clipping"] = (
            None if not self.default_agc_clipping
            else float(self.default_agc_clipping))
        if self._preprocessing_json is not None:
            config["preprocessing"] = json.loads(self._preprocessing_json)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        default = config.pop("default_agc_clipping", cls.default_agc_clipping)
        # (absent from files saved before it existed: None, and
        # preprocess_for_eval asks for a variant name)
        preprocessing = config.pop("preprocessing", None)
        model = super().from_config(config, custom_objects=custom_objects)
        model.default_agc_clipping = default
        model.preprocessing = preprocessing
        return model

    def get_compile_config(self):
        config = super().get_compile_config()
        if config is not None and hasattr(self, "_agc_compile_args"):
            config = dict(config)
            args = dict(self._agc_compile_args)
            if args["agc_exclude"] is not None:
                args["agc_exclude"] = list(args["agc_exclude"])
            config.update(args)
        return config

    def compile_from_config(self, config):
        """Recompiles a loaded model (AGC settings included)."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if hasattr(self, "optimizer") and self.built:
            self.optimizer.build(self.trainable_variables)


def default_agc_exclude(model):
    """DeepMind's exclusion: the classifier weight (`linear/kernel`), or
    nothing for a model without the `linear` classifier."""
    try:
        linear = model.get_layer("linear")
    except ValueError:
        return ()
    kernel = getattr(linear, "kernel", None)
    return (kernel.path,) if kernel is not None else ("linear",)


def _preprocessing_json(layer):
    """`NFNetModel.preprocessing`'s stored form: a JSON string, or None."""
    # pylint: disable-next=import-outside-toplevel
    from keras_nfnets import preprocessing
    if isinstance(layer, dict):
        layer = preprocessing.NFNetImagePreprocessing.from_config(layer)
    if layer is None:
        return None
    if not isinstance(layer, preprocessing.NFNetImagePreprocessing):
        raise TypeError(
            "`preprocessing` must be a keras_nfnets.NFNetImagePreprocessing, "
            f"its config dict or None; got {type(layer).__name__}.")
    return json.dumps(_plain_config(layer))


def _plain_config(layer):
    """The preprocessing layer's config without its (per-instance) name
    and dtype policy: what defines the procedure."""
    config = layer.get_config()
    for key in ("name", "dtype", "trainable"):
        config.pop(key, None)
    return config


def build_optimizer_first(model):
    """Builds `model`'s optimizer before the first trace of its train step.

    Without a tf.distribute strategy, Keras builds the optimizer inside the
    first trace; creating its variables there makes tf.function trace the
    whole step a second time. Building it first, as Keras does itself under
    a strategy, keeps it to one trace. Called by `make_train_function` of
    `NFNetModel` and of `keras_nfnets.hub.NFNetImageClassifier`.
    """
    optimizer = getattr(model, "optimizer", None)
    if (keras.backend.backend() == "tensorflow" and model.built
            and optimizer is not None and not optimizer.built):
        with model.distribute_strategy.scope():
            optimizer.build(model.trainable_variables)


def _blocks_with_input_sizes(model, height, width):
    """(block, input height, input width) of each NFBlock of `model` (and
    of nested keras_nfnets models) on a `height` x `width` input, from the
    strides of the layers before it."""
    from keras_nfnets.layers import NFBlock  # pylint: disable=import-outside-toplevel
    found, stride = [], 1
    for layer in model.layers:
        if isinstance(layer, NFBlock):
            found.append((layer, -(-height // stride), -(-width // stride)))
            stride *= layer.strides
        elif isinstance(getattr(layer, "layers", None), list):
            inner = _blocks_with_input_sizes(layer, -(-height // stride),
                                             -(-width // stride))
            found.extend(inner)
        else:
            strides = getattr(layer, "strides", 1)
            stride *= strides[0] if isinstance(strides, (tuple, list)) \
                else (strides or 1)
    return found


def kept_activation_bytes(model, batch, height, width, remat=False):
    """Bytes a training step of `model` keeps for its backward pass in its
    NFBlocks, at `batch` images of `height` x `width` (the compute dtype's
    size), with or without remat: the estimate behind `remat="auto"`.

    Example:
    >>> model = keras_nfnets.NFNetF0(weights=None)
    >>> gb = kept_activation_bytes(model, 8, 192, 192) / 1e9
    """
    itemsize = 2 if model.dtype_policy.compute_dtype in (
        "float16", "bfloat16") else 4
    elements = sum(block.kept_activations(h, w, remat)
                   for block, h, w in _blocks_with_input_sizes(
                       model, height, width))
    return batch * elements * itemsize


def _spatial_size(model, inputs):
    """(batch, height, width) of `inputs` as known now (at trace time), or
    None where a size is unknown."""
    shape = tuple(getattr(inputs, "shape", ()) or ())
    if len(shape) != 4:
        return None
    declared = tuple(model.inputs[0].shape) if model.inputs else shape
    channels_first = declared[-1] is None and declared[1] is not None
    n, h, w = ((shape[0], shape[2], shape[3]) if channels_first
               else shape[:3])
    sizes = []
    for v in (n, h, w):
        try:
            sizes.append(int(v))
        except (TypeError, ValueError):
            return None
    return tuple(sizes)


def step_remat_scope(model, inputs, training):
    """`runtime.remat_scope` with `model`'s decision for this call: by
    memory in a training step (`remat_for_step`), off at inference (no
    backward pass). The `call` of keras_nfnets' models runs in it."""
    return runtime.remat_scope(
        remat_for_step(model, inputs) if training else False)


def remat_for_step(model, inputs):
    """The `remat="auto"` decision for a training step of `model` on
    `inputs` (see `keras_nfnets.runtime`): True when the activations the
    step would keep without remat take more than
    `runtime.REMAT_MEMORY_SHARE` of the memory available now; None (the device rule) when the sizes or the memory are
    unknown at trace time. Said in one line when it changes."""
    if not any(block.remat == "auto"
               for block, _, _ in _blocks_with_input_sizes(model, 1, 1)):
        return None
    sizes = _spatial_size(model, inputs)
    available, where = runtime.available_memory()
    if sizes is None or available is None:
        decision = None
        reason = ("the batch or image size is unknown at trace time"
                  if sizes is None else f"the {where}'s free memory is not "
                  "reported")
        note = (f"remat {'on' if runtime.resolve_remat('auto') else 'off'}"
                f" (device rule: {reason})")
    else:
        kept = kept_activation_bytes(model, *sizes)
        decision = runtime.remat_needed(kept, available)
        note = (f"remat {'on' if decision else 'off'}: a step at batch "
                f"{sizes[0]}, {sizes[1]}x{sizes[2]} keeps ~{kept / 1e9:.2f} "
                f"GB of activations without remat, "
                f"{available / 1e9:.1f} GB free on the {where}")
    _say_once(model, note)
    return decision


def step_remats(model, inputs):
    """Whether a training step of `model` on `inputs` recomputes its
    blocks: forced settings as set, `"auto"` by `remat_for_step` (its
    device-rule fallback included). What benchmarks record per row."""
    with runtime.remat_scope(remat_for_step(model, inputs)):
        return any(runtime.resolve_remat(block.remat) for block, _, _ in
                   _blocks_with_input_sizes(model, 1, 1))


def _say_once(model, note):
    """Prints `note` (Keras-style: stdout, or the log when Keras's
    interactive logging is off) unless it is what the model said last."""
    key = note.split(":")[0] if ":" in note else note
    if getattr(model, "_remat_said", None) == key:
        return
    object.__setattr__(model, "_remat_said", key)
    message = f"keras_nfnets ({model.name}): {note}"
    if keras.config.is_interactive_logging_enabled():
        print(message, flush=True)
    else:
        logging.getLogger("keras_nfnets").info(message)
