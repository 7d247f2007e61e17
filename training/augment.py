"""Training augmentations in tf.data: RandAugment, MixUp/CutMix, labels.

Every random draw is *stateless*, from a seed tensor that the input pipeline
derives from `--seed` and the example's (or batch's) position in the stream.
The same flags therefore give the same augmented stream on every run, on any
number of workers, and after a restart from a checkpoint.
"""

import keras
import tensorflow as tf

from keras_nfnets import compat


def parse_randaugment(level):
    """DeepMind's RA level string to (num_layers, magnitude).

    '405' is 4 layers at magnitude 5, '415' 4 layers at magnitude 15.
    None, '', '0' or 'none' turn RandAugment off (returns None).

    >>> parse_randaugment("405")
    (4, 5)
    """
    if level is None:
        return None
    level = str(level).strip().lower()
    if level in ("", "0", "none", "off", "false"):
        return None
    if not level.isdigit() or len(level) < 2:
        raise ValueError(
            f"--randaugment={level!r}: expected DeepMind's RA level, a digit "
            "string 'LMM' (L layers, magnitude MM), e.g. '405' or '415', or "
            "'none'.")
    layers, magnitude = int(level[0]), int(level[1:])
    if layers == 0:
        return None
    if magnitude > 30:
        raise ValueError(f"--randaugment={level!r}: magnitude {magnitude} > 30.")
    return layers, magnitude


class _FoldInSeeds(keras.random.SeedGenerator):
    """A `SeedGenerator` that hands out `fold_in(seed, 1), fold_in(seed, 2)...`
    of a seed *tensor* set while tf.data traces the map function: stateless,
    so parallel maps stay deterministic."""

    def __init__(self):  # pylint: disable=super-init-not-called
        self.seed = None
        self.count = 0

    def next(self, ordered=True):
        if self.seed is None:
            raise RuntimeError("call RandAugment.augment(image, seed)")
        self.count += 1
        return tf.random.experimental.stateless_fold_in(self.seed, self.count)


@compat.route_seed_generator_to("fold_in_seeds")
class RandAugment(keras.layers.RandAugment):
    """`keras.layers.RandAugment` with explicit stateless seeds.

    `num_ops` operations per image, at strength `magnitude / 10` (DeepMind's
    RandAugment levels run 0..10, so '405' is factor 0.5).
    """

    def __init__(self, num_ops, magnitude, **kwargs):
        super().__init__(num_ops=num_ops, factor=min(magnitude / 10.0, 1.0),
                         value_range=(0, 255), **kwargs)
        # Not tracked as one of the layer's seed generators (it has no state
        # variable: Layer.variables on PyTorch would ask for one).
        object.__setattr__(self, "fold_in_seeds", _FoldInSeeds())
        compat.count_histogram_in_one_op(self.equalization)

    def augment(self, image, seed):
        """Augments one HWC float image in [0, 255] with a (2,) int seed."""
        seeds = self.fold_in_seeds
        seeds.seed, seeds.count = seed, 0
        out = self(image, training=True)
        seeds.seed = None
        if not seeds.count:
            raise compat.not_called(
                "RandAugment._get_seed_generator",
                "RandAugment's seeds: the stream would not be reproducible")
        return tf.clip_by_value(out, 0.0, 255.0)


def _beta(shape, alpha, seed):
    s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    g1 = tf.random.stateless_gamma(shape, seed=s1, alpha=alpha)
    g2 = tf.random.stateless_gamma(shape, seed=s2, alpha=alpha)
    return g1 / (g1 + g2)


def mixup(images, labels, alpha, seed):
    """MixUp with the batch reversed: per-example ratio ~ Beta(a, a),
    folded to >= 0.5 so each image keeps its identity."""
    n = tf.shape(images)[0]
    lam = _beta([n], alpha, seed)
    lam = tf.maximum(lam, 1.0 - lam)
    li = tf.reshape(lam, [-1, 1, 1, 1])
    images = li * images + (1.0 - li) * tf.reverse(images, [0])
    ll = tf.reshape(lam, [-1, 1])
    labels = ll * labels + (1.0 - ll) * tf.reverse(labels, [0])
    return images, labels


def cutmix(images, labels, seed):
    """CutMix with the batch reversed: per example, a box of area 1 - lam
    (lam ~ U(0, 1)) is pasted from the partner; labels mix by the box's
    actual area."""
    shape = tf.shape(images)
    n, h, w = shape[0], shape[1], shape[2]
    s_lam, s_y, s_x = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    lam = tf.random.stateless_uniform([n], s_lam)
    cut = tf.sqrt(1.0 - lam)
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    cy = tf.random.stateless_uniform([n], s_y) * hf
    cx = tf.random.stateless_uniform([n], s_x) * wf
    y0 = tf.clip_by_value(tf.round(cy - cut * hf / 2), 0, hf)
    y1 = tf.clip_by_value(tf.round(cy + cut * hf / 2), 0, hf)
    x0 = tf.clip_by_value(tf.round(cx - cut * wf / 2), 0, wf)
    x1 = tf.clip_by_value(tf.round(cx + cut * wf / 2), 0, wf)
    ys = tf.cast(tf.range(h), tf.float32)[None, :, None]
    xs = tf.cast(tf.range(w), tf.float32)[None, None, :]
    inside = ((ys >= y0[:, None, None]) & (ys < y1[:, None, None]) &
              (xs >= x0[:, None, None]) & (xs < x1[:, None, None]))
    mask = tf.cast(inside, images.dtype)[..., None]
    images = images * (1.0 - mask) + tf.reverse(images, [0]) * mask
    kept = 1.0 - (y1 - y0) * (x1 - x0) / (hf * wf)
    kept = tf.reshape(kept, [-1, 1])
    labels = kept * labels + (1.0 - kept) * tf.reverse(labels, [0])
    return images, labels


def mixup_cutmix(images, labels, seed, mixup_alpha=0.2, use_cutmix=True):
    """DeepMind's batch augmentation: MixUp on the first half of the batch
    and CutMix on the second (either alone on the whole batch if the other
    is off). `labels` are one-hot (or already soft) float vectors."""
    s_mix, s_cut = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    use_mixup = bool(mixup_alpha) and mixup_alpha > 0
    if use_mixup and use_cutmix:
        half = tf.shape(images)[0] // 2
        i1, l1 = mixup(images[:half], labels[:half], mixup_alpha, s_mix)
        i2, l2 = cutmix(images[half:], labels[half:], s_cut)
        return tf.concat([i1, i2], 0), tf.concat([l1, l2], 0)
    if use_mixup:
        return mixup(images, labels, mixup_alpha, s_mix)
    if use_cutmix:
        return cutmix(images, labels, s_cut)
    return images, labels
