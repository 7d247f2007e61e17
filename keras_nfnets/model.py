"""`NFNetModel`: the functional `keras.Model` that the constructors return."""

import keras


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
        # Without a tf.distribute strategy, Keras builds the optimizer inside
        # the first trace of the train step; creating its variables there
        # makes tf.function trace the whole step a second time. Build it
        # first, as Keras does
        # itself under a strategy.
        optimizer = getattr(self, "optimizer", None)
        if (keras.backend.backend() == "tensorflow" and self.built
                and optimizer is not None and not optimizer.built):
            with self.distribute_strategy.scope():
                optimizer.build(self.trainable_variables)
        return super().make_train_function(force=force)

    def get_config(self):
        config = super().get_config()
        config["default_agc_clipping"] = (
            None if not self.default_agc_clipping
            else float(self.default_agc_clipping))
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        default = config.pop("default_agc_clipping", cls.default_agc_clipping)
        model = super().from_config(config, custom_objects=custom_objects)
        model.default_agc_clipping = default
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
