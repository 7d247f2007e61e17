"""Top-1 / top-5 of any NFNet weights on a tfds split or image folder.

    python -m training.evaluate --weights=/tmp/keras_nfnets_demo/model.keras \\
        --dataset=folder:training/demo_data
    python -m training.evaluate --variant=F0 --weights=imagenet \\
        --dataset=imagenet2012 --data_dir=gs://BUCKET/tfds

`--weights`: a `.keras` file (variant and classes come from it), `imagenet`,
a DeepMind `*_haiku.npz` or a `.weights.h5` (with `--variant`). DeepMind's
evaluation preprocessing: a centred size/(size + 32) crop of the short side,
bicubic resize to size.
"""

import os
import sys

if __name__ == "__main__":  # --backend must reach keras before its import
    from . import backends as _backends
    _backends.select_from_argv()

from absl import app
from absl import flags

FLAGS = flags.FLAGS


def define_flags():
    """The command-line flags (only when run as a program, so that
    training.train can import this module)."""
    flags.DEFINE_string("weights", None, "A .keras file, 'imagenet', a DeepMind "
                        ".npz or a .weights.h5.")
    flags.DEFINE_string("variant", "F0", "Variant, for weights other than "
                        ".keras files.")
    flags.DEFINE_string("dataset", "imagenet2012", "tfds name or folder:/path.")
    flags.DEFINE_string("data_dir", None, "tfds data_dir (local or gs://).")
    flags.DEFINE_string("split", None, "Split (default: validation, else test).")
    flags.DEFINE_integer("image_size", None, "Default: the variant's test size "
                         "(or the size the .keras model was evaluated at).")
    flags.DEFINE_integer("crop_padding", 32, "Centre-crop size/(size + "
                         "padding) of the short side, then resize to size "
                         "(DeepMind's crop_resize).")
    flags.DEFINE_integer("batch_size", 256, "Global evaluation batch size.")
    flags.DEFINE_string("backend", None, "Keras backend: tensorflow, jax "
                        "(DataParallel over the local devices) or torch. "
                        "Default: $KERAS_BACKEND, else tensorflow.")
    flags.DEFINE_string("tpu", None, "TPU name, 'local' or grpc:// "
                        "(TensorFlow backend).")
    flags.DEFINE_enum("strategy", "auto", ["auto", "tpu", "mirrored",
                                           "multi_worker", "one_device",
                                           "default"], "tf.distribute strategy.")


def evaluate_model(model, strategy, source, global_batch_size, image_size,
                   crop_padding=32, split=None):
    """Top-1 and top-5 accuracy of `model` on `split` (every example once).

    Returns {'top1', 'top5', 'examples'}."""
    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    from . import data  # pylint: disable=import-outside-toplevel
    from . import strategy as strategy_lib  # pylint: disable=import-outside-toplevel
    split = split or source.eval_split
    n = source.split_size(split)
    dataset_fn = data.eval_dataset_fn(source, global_batch_size, image_size,
                                      crop_padding, split, n)
    dist = strategy.distribute_datasets_from_function(dataset_fn)
    steps = data.eval_steps(n, global_batch_size)
    with strategy.scope():
        metrics = [keras.metrics.CategoricalAccuracy(name="top1"),
                   keras.metrics.TopKCategoricalAccuracy(
                       min(5, source.num_classes), name="top5")]
        probe = keras.Model(model.inputs, model.outputs)
        # Keras' evaluate needs a loss; report none (the model may end in
        # logits or probabilities, top-k is the same on both).
        # (Not XLA on TensorFlow; compiled on JAX, which is eager otherwise.)
        # weighted_metrics: the weight-0 padding of the last batches (see
        # data.eval_dataset_fn) must not be scored; `metrics=` ignores
        # sample weights.
        probe.compile(weighted_metrics=metrics, jit_compile=(
            False if keras.backend.backend() == "tensorflow" else "auto"),
                      loss=lambda y, p: keras.ops.zeros_like(y[..., 0]))
    strategy_lib.build_without_data_probe(probe, strategy, (
        np.zeros((1, image_size, image_size, 3), "float32"),
        np.zeros((1, source.num_classes), "float32"),
        np.zeros((1,), "float32")))
    strategy_lib.fix_multi_worker_logs(probe, strategy)
    result = probe.evaluate(dist, steps=steps, verbose=0, return_dict=True)
    return {"top1": float(result["top1"]), "top5": float(result["top5"]),
            "examples": n}


def load_for_eval(weights, variant, num_classes):
    """A model (logits or probabilities; top-k does not care)."""
    import keras  # pylint: disable=import-outside-toplevel
    import keras_nfnets  # pylint: disable=import-outside-toplevel
    if str(weights).endswith(".keras"):
        return keras.models.load_model(weights, compile=False)
    return keras_nfnets.NFNet(variant, weights=weights, classes=num_classes,
                              input_shape=(None, None, 3))


def run():
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from . import data  # pylint: disable=import-outside-toplevel
    from . import strategy as strategy_lib  # pylint: disable=import-outside-toplevel
    from keras_nfnets import variants  # pylint: disable=import-outside-toplevel
    if not FLAGS.weights:
        raise ValueError("--weights is required (a .keras file, 'imagenet', "
                         "a DeepMind .npz or a .weights.h5).")
    source = data.get_source(FLAGS.dataset, FLAGS.data_dir,
                             eval_split=FLAGS.split)
    from . import backends  # pylint: disable=import-outside-toplevel
    backend = backends.requested_backend(FLAGS.backend)
    problem = backends.check_active(backend)
    if problem:
        raise ValueError(problem)
    if backend == "tensorflow":
        name = strategy_lib.resolve_strategy_name(FLAGS.strategy, FLAGS.tpu)
        strategy = strategy_lib.make_strategy(name, FLAGS.tpu)
    else:
        strategy = strategy_lib.KerasDistribution(backend)
    if FLAGS.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"--batch_size={FLAGS.batch_size} is not divisible "
                         f"by {strategy.num_replicas_in_sync} replicas.")
    image_size = FLAGS.image_size
    crop_padding = FLAGS.crop_padding
    if str(FLAGS.weights).endswith(".keras"):
        # A model from training.train: evaluate as training did.
        metrics_path = data.join(os.path.dirname(FLAGS.weights),
                                 "metrics.json")
        if tf.io.gfile.exists(metrics_path):
            import json  # pylint: disable=import-outside-toplevel
            with tf.io.gfile.GFile(metrics_path) as f:
                saved = json.load(f)
            image_size = image_size or saved.get("eval_image_size")
            if not FLAGS["crop_padding"].present:
                crop_padding = saved.get("eval_crop_padding", crop_padding)
    if image_size is None:
        image_size = variants.get_config(FLAGS.variant).test_imsize
    with strategy.scope():
        model = load_for_eval(FLAGS.weights, FLAGS.variant,
                              source.num_classes)
    result = evaluate_model(model, strategy, source, FLAGS.batch_size,
                            image_size, crop_padding, source.eval_split)
    print(f"top-1 accuracy: {100 * result['top1']:.1f}%  (top-5 "
          f"{100 * result['top5']:.1f}%, {result['examples']} "
          f"{source.eval_split} images, {image_size}px)")
    return result


def main(argv):
    del argv
    try:
        run()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    define_flags()
    app.run(main)
