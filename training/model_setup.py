"""The model of a run: the NFNet the flags describe (with --weights loaded)
and DeepMind's optimizer recipe compiled onto it. Call both inside the
strategy's scope:

    with strategy.scope():
        model = build_model(plan, num_classes=10, seed=0)
        compile_model(model, steps_per_epoch=100, total_steps=1000,
                      jit_compile="auto")
"""

import keras

import keras_nfnets
from keras_nfnets import optimizers

from .finetune import load_finetune_weights
from .flags import FLAGS


def build_model(plan, num_classes, seed):
    """The NFNet (logits out, any input size), with --weights loaded."""
    model = keras_nfnets.NFNet(
        plan.config, weights=None, classes=num_classes,
        input_shape=(None, None, 3), classifier_activation=None,
        drop_rate=plan.drop_rate, stochdepth_rate=plan.stochdepth_rate,
        seed=seed, remat={"true": True, "false": False}.get(
            FLAGS.remat, "auto"), name="nfnet")
    if FLAGS.weights:
        load_finetune_weights(model, FLAGS.weights, plan.variant_name,
                              num_classes)
    return model


def compile_model(model, steps_per_epoch, total_steps, jit_compile):
    """DeepMind's optimizer recipe + AGC, all from keras_nfnets (the one
    place where the optimizer is chosen)."""
    warmup = int(FLAGS.warmup_epochs * steps_per_epoch)
    warmup = min(warmup, max(total_steps - 1, 0))
    schedule = optimizers.WarmupCosineDecay(
        FLAGS.lr * FLAGS.batch_size / 256.0, warmup_steps=warmup,
        total_steps=max(total_steps, warmup + 1))
    optimizer = optimizers.NFNetSGD(
        schedule, momentum=FLAGS.momentum, nesterov=True,
        weight_decay=FLAGS.weight_decay, use_ema=FLAGS.ema_decay > 0,
        ema_momentum=FLAGS.ema_decay or 0.99)
    # NFNetModel.compile wraps it in AGC and, under mixed_float16, in the
    # loss-scale optimizer that counts skipped steps (keras_nfnets.optim).
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=FLAGS.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="top1"),
                 # (k <= classes: PyTorch's topk rejects a larger k)
                 keras.metrics.TopKCategoricalAccuracy(
                     min(5, model.output_shape[-1]), name="top5")],
        agc_clipping=FLAGS.agc_clipping or None,
        steps_per_execution=FLAGS.steps_per_execution,
        jit_compile={"auto": "auto", "true": True,
                     "false": False}[FLAGS.jit_compile])
