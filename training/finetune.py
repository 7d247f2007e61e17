"""--weights for fine-tuning: pretrained weights into the training program's
model (the classifier is kept only when its shape matches)."""

import os

from .errors import UsageError


def load_finetune_weights(model, weights, variant, num_classes):
    """--weights into the training program's model, through the one
    dispatcher (`keras_nfnets.weights.load_weights`): "imagenet" (the
    variant's published file, DeepMind's or timm's), a DeepMind checkpoint,
    a timm `.safetensors`, a `.weights.h5` or a `.keras` file. The
    classifier is kept only when its shape matches (same number of
    classes); otherwise the model keeps its new one."""
    del num_classes  # the classifier's shape decides ("auto")
    from keras_nfnets import weights as nf_weights  # pylint: disable=import-outside-toplevel
    local = weights if weights == "imagenet" else _local_copy(weights)
    try:
        stats = nf_weights.load_weights(model, local, variant=variant,
                                        skip_classifier="auto")
    except ValueError as e:  # CheckpointError or no published file
        raise UsageError(f"--weights={weights}: {e}") from e
    if str(local).endswith(".keras"):
        n = len(stats.assigned) + len(stats.skipped)
        print(f"fine-tuning from {weights}: copied {len(stats.assigned)} of "
              f"{n} layers with weights"
              + (f"; skipped {len(stats.skipped)}: "
                 + "; ".join(stats.skipped) if stats.skipped else ""),
              flush=True)
    else:
        print(f"fine-tuning from {weights}: loaded {len(stats.assigned)} "
              "weights" + (f"; kept the model's own {', '.join(stats.skipped)}"
                           if stats.skipped else ""), flush=True)
    return stats


def weights_exist(path):
    """--weights exists: a local path, or a gs:// (any tf.io.gfile) URL."""
    if "://" not in str(path):
        return os.path.exists(path)
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    try:
        return tf.io.gfile.exists(path)
    except tf.errors.OpError as e:
        raise UsageError(f"--weights={path!r}: cannot be read ({e.message})"
                         ) from e


def _local_copy(path):
    """A gs:// (tf.io.gfile) weights file copied to a local temporary file
    with the same name (the loaders read local files); local paths as is."""
    if "://" not in str(path):
        return path
    import tempfile  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    local = os.path.join(tempfile.mkdtemp(prefix="nfnet_weights_"),
                         os.path.basename(str(path).rstrip("/")))
    tf.io.gfile.copy(path, local, overwrite=True)
    return local
