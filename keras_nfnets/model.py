"""`NFNetModel`: the functional `keras.Model` that the constructors return."""

import keras


@keras.saving.register_keras_serializable(package="keras_nfnets")
class NFNetModel(keras.Model):
    """A functional Keras model built by keras_nfnets.

    It behaves exactly like `keras.Model`; it is its own class so that
    training features (adaptive gradient clipping) can hook into it.
    """

    # -- adaptive gradient clipping (keras_nfnets.agc) -------------------
    def compile(self, optimizer="rmsprop", *args, agc_clipping=0.01,
                agc_eps=1e-3, agc_exclude=None, **kwargs):
        """`keras.Model.compile`, plus adaptive gradient clipping.

        Training applies DeepMind's AGC to every trainable variable except
        the classifier weight, to the reduced (cross-replica mean) gradient,
        inside the optimizer, by wrapping `optimizer` in `keras_nfnets.AGC`
        (not done if it already is one, e.g. `nfnet_optimizer(...)`).

        Args:
            agc_clipping: the AGC threshold (DeepMind: 0.01); `None` turns
                AGC off (the optimizer is used as given).
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
        from keras_nfnets.agc import AGC  # pylint: disable=import-outside-toplevel
        optimizer = keras.optimizers.get(optimizer)
        if agc_clipping and not isinstance(optimizer, AGC):
            if agc_exclude is None:
                agc_exclude = self._default_agc_exclude()
            optimizer = AGC(optimizer, clipping=agc_clipping, eps=agc_eps,
                            exclude=agc_exclude)
        super().compile(optimizer, *args, **kwargs)
        self._agc_compile_args = {"agc_clipping": agc_clipping,
                                  "agc_eps": agc_eps,
                                  "agc_exclude": agc_exclude}

    def make_train_function(self, force=False):
        # Without a tf.distribute strategy, Keras builds the optimizer inside
        # the first trace of the train step; creating its variables there
        # makes tf.function trace the whole step a second time (~10 s more
        # before the first step on NFNet-F0). Build it first, as Keras does
        # itself under a strategy.
        optimizer = getattr(self, "optimizer", None)
        if (keras.backend.backend() == "tensorflow" and self.built
                and optimizer is not None and not optimizer.built):
            with self.distribute_strategy.scope():
                optimizer.build(self.trainable_variables)
        return super().make_train_function(force=force)

    def _default_agc_exclude(self):
        try:
            linear = self.get_layer("linear")
        except ValueError:
            return ()
        kernel = getattr(linear, "kernel", None)
        return (kernel.path,) if kernel is not None else ("linear",)

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
