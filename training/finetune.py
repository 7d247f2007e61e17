"""--weights for fine-tuning: pretrained weights into the training program's
model (the classifier is kept only when its shape matches)."""

import os

from .errors import UsageError


def load_finetune_weights(model, weights, variant, num_classes):
    """Pretrained weights for fine-tuning; the classifier is kept only when
    its shape matches (same number of classes)."""
    import keras  # pylint: disable=import-outside-toplevel
    from keras_nfnets import weights as nf_weights  # pylint: disable=import-outside-toplevel
    from keras_nfnets import pretrained  # pylint: disable=import-outside-toplevel
    skip = () if num_classes == 1000 else ("linear",)
    if weights == "imagenet":
        pretrained.load_imagenet_weights(model, variant, skip_layers=skip)
        return
    source_name, weights = weights, _local_copy(weights)
    if str(weights).endswith(".keras"):
        source = keras.models.load_model(weights, compile=False)
        copied, skipped = _copy_matching_layers(model, source)
        print(f"fine-tuning from {source_name}: copied {len(copied)} of "
              f"{len(copied) + len(skipped)} layers with weights"
              + (f"; skipped {len(skipped)}: " + "; ".join(skipped)
                 if skipped else ""), flush=True)
        if not copied:
            raise UsageError(
                f"--weights={source_name}: no layer of the model matches a "
                f"layer of that .keras file by name and weight shapes "
                f"(skipped: {'; '.join(skipped[:8])}); is it another "
                "architecture?")
    else:
        nf_weights.load_weights(model, weights, skip_layers=skip)


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


def _copy_matching_layers(model, source):
    """Copies each layer's weights from `source` (a loaded .keras model)
    when a layer of the same name has the same weight shapes. Returns the
    copied layer names and a description of each skipped layer."""
    copied, skipped = [], []
    for layer in model.layers:
        mine = layer.get_weights()
        if not mine:
            continue
        try:
            src = source.get_layer(layer.name).get_weights()
        except ValueError:
            skipped.append(f"{layer.name} (not in the file)")
            continue
        shapes = [tuple(w.shape) for w in src]
        wanted = [tuple(w.shape) for w in mine]
        if shapes != wanted:
            skipped.append(f"{layer.name} (shapes {shapes} in the file, "
                           f"{wanted} in the model)")
            continue
        layer.set_weights(src)
        copied.append(layer.name)
    return copied, skipped
