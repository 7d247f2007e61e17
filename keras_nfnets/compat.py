"""The one place where keras_nfnets touches private Keras / TensorFlow API.

Everything else in the package and in `training/` uses public API only.
Each touch-point below:

* is checked before it is used (`require`): if the private attribute is
  missing, it raises `CompatError` naming the installed Keras / TensorFlow
  version, at build time, never a silent no-op;
* where Keras calls *us* through a private hook, is checked to still be
  called (the callers count the calls and raise `CompatError` if a Keras
  release stops calling it);
* says which public API would replace it.

Tested range: `keras>=3.10` with `tensorflow>=2.20` (`make test-floor` runs
the fast subset on keras 3.10 / TF 2.20, `make test` on the latest).
"""

import contextlib

import keras


class CompatError(RuntimeError):
    """A private Keras/TF attribute keras_nfnets relies on is missing or no
    longer used by this Keras/TF release."""


def versions():
    """'keras X.Y.Z' (and 'tensorflow A.B.C' when TF is importable)."""
    out = f"keras {keras.__version__}"
    try:
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        out += f", tensorflow {tf.__version__}"
    except ImportError:  # pragma: no cover - TF is a dependency
        pass
    return out


def require(obj, attribute, what):
    """Raises `CompatError` unless `obj` has `attribute`."""
    if not hasattr(obj, attribute):
        raise CompatError(
            f"keras_nfnets needs `{getattr(obj, '__name__', type(obj).__name__)}"
            f".{attribute}` ({what}), which {versions()} does not have. "
            "keras_nfnets is tested with keras>=3.10 and tensorflow>=2.20; "
            "please report this Keras version.")


def not_called(hook, what):
    """The error for a private hook that Keras no longer calls."""
    return CompatError(
        f"{versions()} no longer calls `{hook}` ({what}); keras_nfnets "
        "refuses to go on without it rather than silently skip it. Please "
        "report this Keras version.")


# ------------------------------------------------------------- optimizers
def variable_index(optimizer, variable):
    """The index of `variable` in the list `optimizer` was built with.

    `update_step(gradient, variable, lr)` gets a backend variable (on
    TensorFlow under `tf.distribute`, the per-device component of a mirrored
    variable); Keras's private `_get_variable_index` maps it back. Public
    replacement: none yet (Keras's own optimizers use this private method
    for the same purpose); a public `Optimizer.variable_index()` would do.
    """
    require(optimizer, "_get_variable_index",
            "maps a variable in update_step to its slot")
    return optimizer._get_variable_index(variable)  # pylint: disable=protected-access


def ema_averages(optimizer):
    """The optimizer's EMA variables (one per trainable variable, in
    build order; `None` for non-trainable ones).

    Public replacement: none (Keras keeps them in the private
    `_model_variables_moving_average`; `keras.callbacks.SwapEMAWeights`
    reads the same attribute)."""
    require(optimizer, "_model_variables_moving_average",
            "the EMA of the weights (use_ema=True)")
    return optimizer._model_variables_moving_average  # pylint: disable=protected-access


class EMAHooks:
    """Mixin for an optimizer that replaces Keras's EMA rule with its own.

    Keras calls two private methods for `use_ema=True`; this mixin is the
    only place that defines them, and forwards them to the public-named
    `update_ema(trainable_variables)` and
    `overwrite_with_ema(trainable_variables)` of the class that mixes it in.
    `ema_hook_calls` counts the calls so that the optimizer can check, once
    per trace, that Keras still calls the hook (see
    `keras_nfnets.NFNetSGD.apply`). Public replacement: an EMA-rule argument
    of `keras.optimizers.Optimizer` (there is none).
    """

    ema_hook_calls = 0

    @staticmethod
    def check_ema_hooks():
        """Raises `CompatError` if Keras has neither hook to override."""
        for hook in ("_update_model_variables_moving_average",
                     "_overwrite_model_variables_with_average_value"):
            require(keras.optimizers.Optimizer, hook,
                    "the EMA update that keras_nfnets replaces with "
                    "DeepMind's warmed-up EMA")

    def _update_model_variables_moving_average(self, trainable_variables):
        self.ema_hook_calls += 1
        self.update_ema(trainable_variables)

    def _overwrite_model_variables_with_average_value(self,
                                                      trainable_variables):
        self.overwrite_with_ema(trainable_variables)


@contextlib.contextmanager
def keep_training_weights(optimizer):
    """Within the block, the optimizer's `finalize_variable_values` (which
    `fit` calls at its end to swap the EMA into the model) does nothing.

    It shadows the public method on the instance. Public replacement: a
    `fit(..., finalize_variables=False)` argument or an optimizer option
    (Keras has neither)."""
    require(type(optimizer), "finalize_variable_values",
            "what fit calls at its end to swap the EMA in")
    optimizer.finalize_variable_values = lambda var_list: None
    try:
        yield
    finally:
        del optimizer.finalize_variable_values


def strategy_uses_merge_call():
    """Whether the current `tf.distribute` strategy needs `merge_call` for
    cross-replica decisions (MirroredStrategy on CPU/GPU without XLA), or
    can all-reduce in the replica context (TPU, GPU under XLA).

    Keras's own `LossScaleOptimizer` asks the same private question.
    Public replacement: none (`tf.__internal__`)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    internal = getattr(tf, "__internal__", None)
    distribute = getattr(internal, "distribute", None)
    require(distribute, "strategy_supports_no_merge_call",
            "whether a strategy needs merge_call")
    return not distribute.strategy_supports_no_merge_call()


# ------------------------------------------------------------------ models
def build_compiled_state(model, strategy, batch):
    """Builds `model`'s compiled state (metrics, loss, optimizer) from
    `batch` and stops fit/evaluate from probing their input for it.

    Keras 3 pulls the first batch and `strategy.reduce`s it, which
    MultiWorkerMirroredStrategy cannot do for a nested per-replica batch.
    Uses the private `_symbolic_build` and replaces `_maybe_symbolic_build`
    on the instance. Public replacement: a `Model.build_from_batch()` /
    `compile(..., input_spec=...)` (Keras has neither)."""
    require(model, "_symbolic_build", "builds metrics and optimizer")
    # Only the TensorFlow trainer probes its input (`_maybe_symbolic_build`,
    # under tf.distribute); the JAX and PyTorch trainers build from
    # `_symbolic_build` alone and have no probe to stop.
    probes = keras.backend.backend() == "tensorflow"
    if probes:
        require(model, "_maybe_symbolic_build", "fit's input probe")
    with strategy.scope():
        model._symbolic_build(data_batch=batch)  # pylint: disable=protected-access
    if probes:
        model._maybe_symbolic_build = (  # pylint: disable=protected-access
            lambda iterator=None, data_batch=None: None)


# ------------------------------------------------------------ augmentation
def route_seed_generator_to(attribute):
    """Class decorator: `keras.layers.RandAugment` subclasses draw their
    seeds from the instance's `attribute` (a `keras.random.SeedGenerator`)
    instead of the layer's own stateful generator.

    Keras's image layers get their generator from the private
    `_get_seed_generator(backend)`; the layer's public
    `get_random_transformation(..., seed=...)` ignores its seed in
    RandAugment. The caller checks that the generator was used (it counts
    draws). Public replacement: a `seed` argument honoured by
    `RandAugment.get_random_transformation`."""
    require(keras.layers.RandAugment, "_get_seed_generator",
            "where RandAugment draws its random seeds")

    def _get_seed_generator(self, backend=None):  # pylint: disable=unused-argument
        return getattr(self, attribute)

    def decorate(layer_cls):
        layer_cls._get_seed_generator = _get_seed_generator  # pylint: disable=protected-access
        return layer_cls

    return decorate


def count_histogram_in_one_op(equalization):
    """Gives a `keras.layers.Equalization` (RandAugment's) a histogram of
    one TensorFlow op, for tf.data.

    Keras counts the 256-bin histogram with a Python loop of 256 steps
    (`equal`, `sum`, `one_hot` each) when its global backend is JAX (and on
    every backend from keras-team/keras#23568): in tf.data, where the layer
    runs on TensorFlow whatever the backend, each channel of each traced
    augmentation is ~1,500 ops to trace and to run (25 s of a 50 s tiny
    training run under `KERAS_BACKEND=jax`). The replacement counts the same
    bins (Keras's scaling and clipping, then `unsorted_segment_sum`, of
    static shape `[nbins]`). Public replacement: none (the histogram is the
    layer's private `_custom_histogram_fixed_width`)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    require(equalization, "_custom_histogram_fixed_width",
            "Equalization's histogram")

    def histogram(values, value_range, nbins):
        lo, hi = (float(v) for v in value_range)
        scaled = (tf.cast(values, tf.float32) - lo) * (nbins - 1) / (hi - lo)
        bins = tf.clip_by_value(tf.cast(scaled, tf.int32), 0, nbins - 1)
        bins = tf.reshape(bins, [-1])
        return tf.math.unsorted_segment_sum(tf.ones_like(bins), bins, nbins)

    equalization._custom_histogram_fixed_width = histogram  # pylint: disable=protected-access


# ------------------------------------------------------- graph inspection
def producing_layer(tensor):
    """The layer that produced a symbolic Keras tensor (to walk a
    functional model's graph, `keras_nfnets.spp`).

    Public replacement: none for an arbitrary tensor (`layer.input` /
    `layer.output` go the other way); Keras keeps it in `_keras_history`."""
    require(tensor, "_keras_history", "the layer that produced a tensor")
    return tensor._keras_history[0]  # pylint: disable=protected-access


def tensorflow_started():
    """True once TensorFlow's eager runtime (and so its CPU allocator)
    exists (`keras_nfnets.use_lean_cpu_allocator` must run before).

    Public replacement: none (`tf.config` calls would start the runtime)."""
    import sys  # pylint: disable=import-outside-toplevel
    if "tensorflow" not in sys.modules:
        return False
    from tensorflow.python.eager import context  # pylint: disable=import-outside-toplevel
    ctx = context.context()
    require(ctx, "_context_handle", "whether TF's runtime has started")
    return ctx._context_handle is not None  # pylint: disable=protected-access


def in_xla_compilation():
    """Whether TensorFlow is tracing a graph that XLA will compile (a
    `tf.function(jit_compile=True)`, such as Keras's train step with
    `jit_compile=True`, or a TPU computation), where ops without an XLA
    kernel cannot run (`keras_nfnets.optim.clip` then keeps its plain
    formula).

    Public replacement: none (`tf.function` marks the graph with a private
    XLA control-flow context while it traces a jit-compiled function)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorflow.python.ops import control_flow_util  # pylint: disable=import-outside-toplevel
    require(control_flow_util, "GraphOrParentsInXlaContext",
            "whether a traced graph is compiled by XLA")
    return bool(control_flow_util.GraphOrParentsInXlaContext(
        tf.compat.v1.get_default_graph()))


def tensorflow_uses_onednn():
    """Whether TensorFlow's CPU kernels are oneDNN's in this process.

    TensorFlow turns its oneDNN kernels on by default on x86 CPUs with
    AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX, and off elsewhere;
    `TF_ENABLE_ONEDNN_OPTS=0` / `=1` overrides it (TensorFlow logs the
    choice at import: "oneDNN custom operations are on"). The answer
    decides `runtime.own_conv_gradients` for k x k convolutions.

    Public replacement: none (TensorFlow answers it in the private
    `tensorflow.python.util._pywrap_util_port.IsMklEnabled`)."""
    from tensorflow.python.util import _pywrap_util_port  # pylint: disable=import-outside-toplevel
    require(_pywrap_util_port, "IsMklEnabled",
            "whether TensorFlow runs its oneDNN CPU kernels")
    return bool(_pywrap_util_port.IsMklEnabled())
