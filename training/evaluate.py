"""Top-1 / top-5 of any NFNet weights on a tfds split or image folder.

    python -m training.evaluate --weights=/tmp/keras_nfnets_demo/model.keras \\
        --dataset=folder:training/demo_data
    python -m training.evaluate --variant=F0 --weights=imagenet \\
        --dataset=imagenet2012 --data_dir=gs://BUCKET/tfds

`--weights`: a `.keras` file (variant and classes come from it), `imagenet`,
a DeepMind `*_haiku.npz` or a `.weights.h5` (with `--variant`).

Images are preprocessed as the model says (`model.preprocessing`, which
every constructor attaches and `.keras` files carry: DeepMind's
`resize_crop_32` for the NFNets, `crop_resize` for NF-ResNets/RegNets,
timm's centre crop for timm's models); `--image_size` and `--crop_padding`
override its size and padding. A `.keras` file saved before models carried
their preprocessing is evaluated as training scored it (`metrics.json`),
else with DeepMind's `crop_resize`.

Raw and EMA weights: a training run with EMA saves the EMA weights as
`model.keras` and the raw (last-step) weights beside it as
`model_raw.weights.h5`; given such a `model.keras` (or `--raw_weights`),
both are scored and printed, as DeepMind evaluates both.
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
    flags.DEFINE_integer("crop_padding", None, "Padding of DeepMind's "
                         "crops (resize_crop: squash to size + padding, "
                         "centre-crop size; crop_resize: centre-crop "
                         "size/(size + padding) of the short side). "
                         "Default: the model's preprocessing's (32).")
    flags.DEFINE_string("raw_weights", None, "The raw (non-EMA) weights "
                        "(.weights.h5) to score beside --weights. Default: "
                        "model_raw.weights.h5 next to a .keras file, if "
                        "there.")
    flags.DEFINE_integer("batch_size", 256, "Global evaluation batch size.")
    flags.DEFINE_string("backend", None, "Keras backend: tensorflow, jax "
                        "(DataParallel over the local devices) or torch. "
                        "Default: $KERAS_BACKEND, else tensorflow.")
    flags.DEFINE_string("tpu", None, "TPU name, 'local' or grpc:// "
                        "(TensorFlow backend).")
    flags.DEFINE_enum("strategy", "auto", ["auto", "tpu", "mirrored",
                                           "multi_worker", "one_device",
                                           "default"], "tf.distribute strategy.")


def tf_preprocess(preprocessing):
    """`image_bytes -> float32 (size, size, 3)`: an
    `NFNetImagePreprocessing` (or its config) in TensorFlow ops, for
    tf.data's images of any size, with the layer's numbers on the
    TensorFlow backend. `crop_resize` (bicubic, no antialias) is DeepMind's
    own `_decode_and_center_crop` path (`data.eval_preprocess`, which crops
    JPEGs while decoding)."""
    import math  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from . import data  # pylint: disable=import-outside-toplevel
    config = (dict(preprocessing) if isinstance(preprocessing, dict)
              else preprocessing.get_config())
    size, mode = int(config["size"]), config["mode"]
    padding, crop_pct = config.get("crop_padding", 32), config.get("crop_pct")
    method, antialias = config.get("interpolation", "bicubic"), bool(
        config.get("antialias", mode == "center"))
    mean, std = config.get("mean"), config.get("std")

    def resize(image, height, width):
        same = tf.logical_and(tf.shape(image)[0] == height,
                              tf.shape(image)[1] == width)
        return tf.cond(same, lambda: tf.cast(image, tf.float32),
                       lambda: tf.image.resize(image, tf.stack([height, width]),
                                               method=method,
                                               antialias=antialias))

    def decode(image_bytes):
        return tf.io.decode_image(image_bytes, channels=3,
                                  expand_animations=False)

    def preprocess(image_bytes):
        if mode == "crop_resize" and method == "bicubic" and not antialias:
            image = data.eval_preprocess(image_bytes, size, padding)
        elif mode == "crop_resize":
            image = decode(image_bytes)
            h, w = tf.shape(image)[0], tf.shape(image)[1]
            pad = tf.cast(size + padding, tf.float32)
            scale = tf.minimum(tf.cast(h, tf.float32) / pad,
                               tf.cast(w, tf.float32) / pad)
            crop = tf.maximum(tf.cast(scale * size, tf.int32), 1)
            image = tf.image.crop_to_bounding_box(
                image, (h - crop + 1) // 2, (w - crop + 1) // 2, crop, crop)
            image = resize(image, size, size)
        elif mode == "resize_crop":
            scale = (int(size + padding) if crop_pct is None
                     else int(float(size) / crop_pct))
            offset = ((scale - size) + 1) // 2
            image = resize(decode(image_bytes), scale, scale)
            image = image[offset:offset + size, offset:offset + size]
        else:  # "center": timm's Resize(int(size / crop_pct)), CenterCrop
            scale = math.floor(size / crop_pct)
            image = decode(image_bytes)
            h = tf.cast(tf.shape(image)[0], tf.float64)
            w = tf.cast(tf.shape(image)[1], tf.float64)
            scale = tf.constant(scale, tf.float64)
            new_h = tf.cast(tf.where(w <= h, tf.floor(scale * h / w), scale),
                            tf.int32)
            new_w = tf.cast(tf.where(w <= h, scale, tf.floor(scale * w / h)),
                            tf.int32)
            image = resize(image, new_h, new_w)
            # torchvision: int(round((h - crop) / 2.0)), half to even.
            top = tf.cast(tf.round(tf.cast(new_h - size, tf.float64) / 2),
                          tf.int32)
            left = tf.cast(tf.round(tf.cast(new_w - size, tf.float64) / 2),
                           tf.int32)
            image = image[top:top + size, left:left + size]
        image = tf.cast(image, tf.float32)
        if mean is not None:
            image = (image - tf.constant(mean, tf.float32)) / tf.constant(
                std, tf.float32)
        return tf.ensure_shape(image, [size, size, 3])

    return preprocess


def evaluate_model(model, strategy, source, global_batch_size, image_size,
                   crop_padding=32, split=None, preprocessing=None):
    """Top-1 and top-5 accuracy of `model` on `split` (every example once),
    its images preprocessed by `preprocessing` (an
    `NFNetImagePreprocessing` or its config; its size is used), else by
    DeepMind's `crop_resize` at `image_size` / `crop_padding`.

    Returns {'top1', 'top5', 'examples'}."""
    return scorer(model, strategy, source, global_batch_size, image_size,
                  crop_padding, split, preprocessing)()


def scorer(model, strategy, source, global_batch_size, image_size,
           crop_padding=32, split=None, preprocessing=None):
    """`evaluate_model` as a function of no arguments that scores the
    weights `model` holds when it is called: the evaluation is built and
    traced once, and scores EMA and raw weights (swapped in between calls)
    without a second trace."""
    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    from . import data  # pylint: disable=import-outside-toplevel
    from . import strategy as strategy_lib  # pylint: disable=import-outside-toplevel
    split = split or source.eval_split
    n = source.split_size(split)
    preprocess = None
    if preprocessing is not None:
        preprocess = tf_preprocess(preprocessing)
        image_size = (preprocessing["size"] if isinstance(preprocessing, dict)
                      else preprocessing.size)
    dataset_fn = data.eval_dataset_fn(source, global_batch_size, image_size,
                                      crop_padding, split, n,
                                      preprocess=preprocess)
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

    def score():
        result = probe.evaluate(dist, steps=steps, verbose=0,
                                return_dict=True)
        return {"top1": float(result["top1"]), "top5": float(result["top5"]),
                "examples": n}
    return score


#: The raw (non-EMA) weights a training run with EMA saves beside
#: model.keras.
RAW_WEIGHTS = "model_raw.weights.h5"


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
    with strategy.scope():
        model = load_for_eval(FLAGS.weights, FLAGS.variant,
                              source.num_classes)
    preprocessing = eval_preprocessing(model, FLAGS.weights,
                                       FLAGS.image_size, FLAGS.crop_padding)
    raw_path = FLAGS.raw_weights
    if raw_path is None and str(FLAGS.weights).endswith(".keras"):
        beside = data.join(os.path.dirname(FLAGS.weights), RAW_WEIGHTS)
        raw_path = beside if tf.io.gfile.exists(beside) else None
    score = scorer(model, strategy, source, FLAGS.batch_size, None,
                   split=source.eval_split, preprocessing=preprocessing)
    results = {}
    if raw_path:
        results["EMA"] = score()
        with strategy.scope():
            model.load_weights(raw_path)
        results["raw"] = score()
    else:
        results[""] = score()
    for label, result in results.items():
        print(f"top-1 accuracy: {100 * result['top1']:.1f}%  (top-5 "
              f"{100 * result['top5']:.1f}%, {result['examples']} "
              f"{source.eval_split} images, {preprocessing.size}px"
              f"{', ' + label + ' weights' if label else ''})")
    return results if raw_path else results[""]


def eval_preprocessing(model, weights, image_size=None, crop_padding=None):
    """The `NFNetImagePreprocessing` to score `model` with: the model's
    own, else (a `.keras` file saved before models carried one) the size
    and padding its training run recorded in `metrics.json` with DeepMind's
    `crop_resize`, as training scored it then. `image_size` and
    `crop_padding` override."""
    import json  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from keras_nfnets import imagenet  # pylint: disable=import-outside-toplevel
    from keras_nfnets.preprocessing import NFNetImagePreprocessing  # pylint: disable=import-outside-toplevel
    from . import data  # pylint: disable=import-outside-toplevel
    layer = getattr(model, "preprocessing", None)
    if layer is None:
        saved = {}
        if str(weights).endswith(".keras"):
            path = data.join(os.path.dirname(weights), "metrics.json")
            if tf.io.gfile.exists(path):
                with tf.io.gfile.GFile(path) as f:
                    saved = json.load(f)
        size = saved.get("eval_image_size") or imagenet.eval_image_size(
            FLAGS.variant)
        layer = NFNetImagePreprocessing(
            size, mode="crop_resize",
            crop_padding=saved.get("eval_crop_padding", 32))
    config = layer.get_config()
    config.pop("name", None)
    if image_size is not None:
        config["size"] = image_size
    if crop_padding is not None:
        config["crop_padding"] = crop_padding
    return NFNetImagePreprocessing.from_config(config)


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
