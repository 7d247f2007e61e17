"""Input pipelines: tfds datasets and class-per-folder image trees.

`Source` describes a dataset (classes, split sizes) and reads its *encoded*
images, sharded per input pipeline. `train_dataset_fn` / `eval_dataset_fn`
return the functions that `strategy.distribute_datasets_from_function` calls
once per input pipeline with a `tf.distribute.InputContext`.

Training stream: global examples are numbered 0, 1, 2, ... across epochs and
every random draw of example `i` (crop, flip, RandAugment) comes from
`fold_in(seed, i)`; batch-level MixUp/CutMix seeds from the global step.
Resuming at step `s` skips the already-consumed encoded records (no decode),
so a restarted run sees exactly the stream an uninterrupted one would.
"""

import dataclasses
import os
from typing import Optional

import tensorflow as tf

from . import augment

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
IMAGENET_MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


class DatasetError(ValueError):
    """A dataset that cannot be read, with what to do about it."""


def _tfds():
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    return tfds


def is_gcs(path):
    return str(path).startswith("gs://")


def join(*parts):
    """os.path.join that keeps gs:// URLs intact."""
    return os.path.join(*[str(p) for p in parts])


# ---------------------------------------------------------------- sources

@dataclasses.dataclass
class Source:
    """A dataset: `kind` is 'tfds' or 'folder'."""
    kind: str
    name: str
    num_classes: int
    num_train: int
    num_eval: int
    train_split: str
    eval_split: str
    data_dir: Optional[str] = None
    class_names: tuple = ()
    # folder: sorted (path, label) lists per split
    files: Optional[dict] = None

    # -- encoded records -------------------------------------------------
    def train_records(self, ctx, seed):
        """Infinite, per-pipeline stream of (index, image_bytes, label):
        `index` numbers examples globally (folder) or per pipeline (tfds)."""
        if self.kind == "folder":
            return _folder_train_records(self, ctx, seed)
        return _tfds_train_records(self, ctx, seed)

    def eval_records(self, ctx, split=None):
        """This pipeline's share of an evaluation split (elements i with
        i % num_input_pipelines == pipeline id), as (image_bytes, label)."""
        split = split or self.eval_split
        if self.kind == "folder":
            paths, labels = zip(*self.files[split]) if self.files[split] else ((), ())
            ds = tf.data.Dataset.from_tensor_slices(
                (list(paths), tf.constant(labels, tf.int64)))
            ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
            return ds.map(lambda p, l: (tf.io.read_file(p), l), AUTOTUNE)
        tfds = _tfds()
        ds = tfds.builder(self.name, data_dir=self.data_dir).as_dataset(
            split=split, shuffle_files=False,
            decoders={"image": tfds.decode.SkipDecoding()})
        ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
        return ds.map(lambda ex: (ex["image"], ex["label"]), AUTOTUNE)

    def split_size(self, split):
        if self.kind == "folder":
            return len(self.files[split])
        return _tfds().builder(self.name, data_dir=self.data_dir).info.splits[
            split].num_examples


def _list_folder(root):
    if not tf.io.gfile.isdir(root):
        raise DatasetError(f"--dataset=folder:{root}: no such directory.")
    classes = sorted(d.rstrip("/") for d in tf.io.gfile.listdir(root)
                     if tf.io.gfile.isdir(join(root, d)))
    items = []
    for label, name in enumerate(classes):
        for f in sorted(tf.io.gfile.listdir(join(root, name))):
            if f.lower().endswith(IMAGE_EXTENSIONS):
                items.append((join(root, name, f), label))
    return classes, items


def folder_source(root, train_split="train", eval_split=None):
    """A class-per-folder tree: `root/train/<class>/*.jpg` and
    `root/{validation,test,val}/<class>/*.jpg`; or `root/<class>/*.jpg`,
    in which case it is used for both training and evaluation."""
    root = str(root).rstrip("/")
    if not tf.io.gfile.isdir(root):
        raise DatasetError(f"--dataset=folder:{root}: no such directory.")
    subdirs = {d.rstrip("/") for d in tf.io.gfile.listdir(root)}
    if train_split in subdirs:
        if eval_split is None:
            eval_split = next((s for s in ("validation", "val", "test")
                               if s in subdirs), train_split)
        splits = {s: join(root, s) for s in {train_split, eval_split}}
    else:  # classes directly under root
        eval_split = eval_split or train_split
        splits = {train_split: root, eval_split: root}
    # Labels are positions in the sorted class list, so every split must
    # have exactly the training split's classes (in a fixed order: sorted
    # split names, independent of PYTHONHASHSEED).
    files, classes = {}, {}
    for split in sorted(splits):
        classes[split], files[split] = _list_folder(splits[split])
    class_names = classes[train_split]
    for split in sorted(splits):
        if classes[split] != class_names:
            missing = sorted(set(class_names) - set(classes[split]))
            extra = sorted(set(classes[split]) - set(class_names))
            raise DatasetError(
                f"folder:{root}: the {split!r} split's class folders differ "
                f"from the {train_split!r} split's (labels are positions in "
                f"the sorted class list, so they would be shifted): "
                f"missing {missing}, extra {extra}. Give every split the "
                "same class folders (an empty folder is fine).")
    if not files[train_split]:
        raise DatasetError(
            f"--dataset=folder:{root}: no images ({', '.join(IMAGE_EXTENSIONS)}"
            f") in class folders under {splits[train_split]}.")
    return Source(kind="folder", name=f"folder:{root}",
                  num_classes=len(class_names),
                  num_train=len(files[train_split]),
                  num_eval=len(files[eval_split]), train_split=train_split,
                  eval_split=eval_split, class_names=tuple(class_names),
                  files=files)


def find_unreadable(paths):
    """The files among `paths` that cannot be read or decoded as images
    (TensorFlow's decoders, as the input pipeline uses them), in order."""
    paths = [str(p) for p in paths]
    if not paths:
        return []

    def probe(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                                   expand_animations=False)
        return path, tf.shape(image)

    ds = tf.data.Dataset.from_tensor_slices(paths).map(
        probe, num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors()
    good = {p.decode() for p, _ in ds.as_numpy_iterator()}
    return [p for p in paths if p not in good]


def drop_unreadable(source):
    """Removes unreadable images from a folder `Source` (every split).
    Returns the removed paths."""
    if source.kind != "folder":
        raise DatasetError(
            f"--skip_unreadable_images checks image folders; {source.name} is "
            "a prepared tfds dataset (its images were checked when tfds built "
            "it).")
    removed = []
    for split, items in source.files.items():
        bad = set(find_unreadable([p for p, _ in items]))
        if bad:
            source.files[split] = [(p, l) for p, l in items if p not in bad]
            removed.extend(sorted(bad))
    source.num_train = len(source.files[source.train_split])
    source.num_eval = len(source.files[source.eval_split])
    if not source.num_train:
        raise DatasetError(f"{source.name}: no readable training images.")
    return sorted(set(removed))


def unreadable_error(source, split):
    """A DatasetError naming the unreadable images of `split` of a folder
    source (None when all of them decode: the error was something else)."""
    if source.kind != "folder":
        return None
    bad = find_unreadable([p for p, _ in source.files[split]])
    if not bad:
        return None
    shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more"
                                  if len(bad) > 10 else "")
    return DatasetError(
        f"{source.name}: {len(bad)} image(s) of the {split!r} split cannot "
        f"be decoded: {shown}. Remove or replace them, or pass "
        "--skip_unreadable_images to leave them out (their count is "
        "reported).")


def imagenet_manual_dir(data_dir):
    return join(data_dir or os.path.expanduser("~/tensorflow_datasets"),
                "downloads", "manual")


def tfds_source(name, data_dir=None, train_split="train", eval_split=None):
    """A tfds dataset that must already be prepared in `data_dir`.

    Nothing is downloaded here: an unprepared dataset raises `DatasetError`
    saying how to prepare it (for imagenet2012, where the tar files go)."""
    tfds = _tfds()
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # DatasetNotFoundError and friends
        raise DatasetError(f"--dataset={name}: {e}") from e
    prepared = tf.io.gfile.exists(join(builder.data_dir, "dataset_info.json"))
    if not prepared:
        where = data_dir or "~/tensorflow_datasets"
        if name.split("/")[0].split(":")[0] == "imagenet2012":
            manual = imagenet_manual_dir(data_dir)
            raise DatasetError(
                f"--dataset=imagenet2012 is not prepared in {where}. ImageNet "
                "cannot be downloaded automatically: download "
                f"{' and '.join(IMAGENET_MANUAL_FILES)} from "
                "https://image-net.org/ (registration required), put them in "
                f"{manual}/ and run once: tfds build imagenet2012 "
                f"--data_dir={where} (or python -c \"import tensorflow_datasets"
                f" as tfds; tfds.builder('imagenet2012', data_dir='{where}')"
                ".download_and_prepare()\"); then pass --data_dir="
                f"{where}.")
        raise DatasetError(
            f"--dataset={name} is not prepared in {where} (no "
            f"{builder.data_dir}/dataset_info.json). This program does not "
            f"download: run `tfds build {name} --data_dir={where}` on a "
            "machine with internet access first, or point --data_dir at a "
            "prepared copy.")
    info = builder.info
    splits = info.splits
    if eval_split is None:
        eval_split = next((s for s in ("validation", "test") if s in splits),
                          train_split)
    for split in (train_split, eval_split):
        if split not in splits:
            raise DatasetError(f"--dataset={name} has no split {split!r}; "
                               f"it has {sorted(splits)}.")
    if "image" not in info.features or "label" not in info.features:
        raise DatasetError(f"--dataset={name}: needs 'image' and 'label' "
                           "features.")
    label = info.features["label"]
    return Source(kind="tfds", name=name, num_classes=label.num_classes,
                  num_train=splits[train_split].num_examples,
                  num_eval=splits[eval_split].num_examples,
                  train_split=train_split, eval_split=eval_split,
                  data_dir=data_dir, class_names=tuple(label.names))


def get_source(dataset, data_dir=None, train_split="train", eval_split=None):
    """`--dataset` (a tfds name or `folder:/path`) to a `Source`."""
    if dataset.startswith("folder:"):
        return folder_source(dataset[len("folder:"):], train_split,
                             eval_split)
    return tfds_source(dataset, data_dir, train_split, eval_split)


def _folder_train_records(source, ctx, seed):
    """Epoch e is a stateless permutation (seeded by seed, e) of the whole
    file list, the same on every host; host p takes global positions
    p, p + P, p + 2P, ... so the union over hosts of each global step is
    the same examples a single host would read."""
    paths, labels = zip(*source.files[source.train_split])
    paths = tf.constant(paths)
    labels = tf.constant(labels, tf.int64)
    n = len(source.files[source.train_split])

    def epoch(e):
        perm = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack(
                [tf.constant(seed, tf.int64), e]))
        start = e * n
        return tf.data.Dataset.from_tensor_slices(
            (tf.range(start, start + n, dtype=tf.int64), perm))

    ds = tf.data.Dataset.range(2 ** 62).flat_map(epoch)
    block = getattr(ctx, "contiguous_block", None)
    if block:  # multi-process JAX (training.multihost): host p takes rows
        # [p * block, (p + 1) * block) of each global batch, its devices' rows
        ds = ds.filter(lambda i, _: i // block % ctx.num_input_pipelines
                       == ctx.input_pipeline_id)
    else:
        ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
    return ds, lambda i, j: (i, tf.io.read_file(tf.gather(paths, j)),
                             tf.gather(labels, j))


def _tfds_train_records(source, ctx, seed):
    """tfds with per-host file sharding (`ReadConfig(input_context=ctx)`),
    seeded file shuffling and a seeded shuffle buffer. Falls back to
    `tfds.even_splits` when the split has fewer files than pipelines."""
    tfds = _tfds()
    builder = tfds.builder(source.name, data_dir=source.data_dir)
    split = source.train_split
    num_shards = len(builder.info.splits[split].file_instructions)
    use_ctx = ctx.num_input_pipelines == 1 or num_shards >= ctx.num_input_pipelines
    if not use_ctx:
        split = tfds.even_splits(split, n=ctx.num_input_pipelines)[
            ctx.input_pipeline_id]
    read_config = tfds.ReadConfig(
        input_context=ctx if use_ctx and ctx.num_input_pipelines > 1 else None,
        shuffle_seed=seed, shuffle_reshuffle_each_iteration=True,
        interleave_cycle_length=16, interleave_block_length=1)
    ds = builder.as_dataset(split=split, shuffle_files=True,
                            read_config=read_config,
                            decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.map(lambda ex: (ex["image"], ex["label"]))
    ds = ds.repeat()
    buffer = min(16 * 1024, max(source.num_train // ctx.num_input_pipelines, 1))
    ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.enumerate()
    pid = ctx.input_pipeline_id
    # per-pipeline index -> a global-looking index unique across pipelines
    return ds, lambda i, rec: (i * ctx.num_input_pipelines + pid,
                               rec[0], rec[1])


# ---------------------------------------------------------- preprocessing

def _decode_and_crop(image_bytes, window_fn):
    """Decodes only the crop window of a JPEG (`decode_and_crop_jpeg`);
    other formats are decoded whole and then cropped."""
    def jpeg():
        shape = tf.image.extract_jpeg_shape(image_bytes)
        y, x, h, w = window_fn(shape)
        return tf.image.decode_and_crop_jpeg(
            image_bytes, tf.stack([y, x, h, w]), channels=3)

    def other():
        image = tf.io.decode_image(image_bytes, channels=3,
                                   expand_animations=False)
        y, x, h, w = window_fn(tf.shape(image))
        return image[y:y + h, x:x + w]

    return tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)


def inception_crop(image_bytes, image_size, seed, area_range=(0.08, 1.0)):
    """Inception-style random crop (area 8-100%, aspect 3/4-4/3), decoded
    with `decode_and_crop_jpeg`, bicubic-resized to image_size^2."""
    def window(shape):
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=seed, min_object_covered=0.1,
            aspect_ratio_range=(3 / 4, 4 / 3), area_range=area_range,
            max_attempts=10, use_image_if_no_bounding_boxes=True)
        return begin[0], begin[1], size[0], size[1]

    image = _decode_and_crop(image_bytes, window)
    image = tf.image.resize(tf.cast(image, tf.float32),
                            [image_size, image_size], method="bicubic")
    return tf.clip_by_value(image, 0.0, 255.0)


def eval_preprocess(image_bytes, image_size, crop_padding=32):
    """DeepMind's evaluation crop (`_decode_and_center_crop`, 'crop_resize'):
    a centred square of `size / (size + padding)` of the short side, cut
    while decoding (JPEG) and resized bicubically to `size`. Returns float32
    RGB, not clipped (bicubic overshoots slightly, as in DeepMind's code)."""
    is_jpeg = tf.strings.substr(image_bytes, 0, 3) == b"\xff\xd8\xff"
    shape = tf.cond(
        is_jpeg, lambda: tf.image.extract_jpeg_shape(image_bytes),
        lambda: tf.shape(tf.io.decode_image(image_bytes, channels=3,
                                            expand_animations=False)))
    h, w = shape[0], shape[1]
    scale = tf.minimum(tf.cast(h, tf.float32), tf.cast(w, tf.float32)) / (
        image_size + crop_padding)
    crop = tf.cast(scale * image_size, tf.int32)
    window = tf.stack([(h - crop + 1) // 2, (w - crop + 1) // 2, crop, crop])

    def from_jpeg():
        return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)

    def from_other():
        image = tf.io.decode_image(image_bytes, channels=3,
                                   expand_animations=False)
        return tf.image.crop_to_bounding_box(image, window[0], window[1],
                                             crop, crop)

    image = tf.cond(is_jpeg, from_jpeg, from_other)
    image = tf.image.resize(image, [image_size, image_size], method="bicubic")
    return tf.ensure_shape(image, [image_size, image_size, 3])


# ---------------------------------------------------------- dataset fns

@dataclasses.dataclass
class TrainInput:
    """What the training dataset function needs (all plain values)."""
    global_batch_size: int
    image_size: int
    num_classes: int
    seed: int = 0
    randaugment: Optional[tuple] = None  # (num_layers, magnitude)
    mixup_alpha: float = 0.0
    cutmix: bool = False
    crop_area_min: float = 0.08
    start_step: int = 0


def _options():
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    return options


def train_dataset_fn(source, cfg):
    """Returns `dataset_fn(input_context)` for
    `strategy.distribute_datasets_from_function`: an infinite dataset of
    per-replica batches (images float32 [0, 255], one-hot float labels),
    starting at global step `cfg.start_step`."""
    def dataset_fn(ctx=None):
        ctx = ctx or tf.distribute.InputContext()
        batch = ctx.get_per_replica_batch_size(cfg.global_batch_size)
        local_replicas = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        seed = tf.constant(cfg.seed, tf.int64)
        records, read = source.train_records(ctx, cfg.seed)
        # Skip what earlier steps consumed, before any decoding.
        records = records.skip(cfg.start_step * batch * local_replicas)
        # float32 whatever the global (mixed) policy: images stay float32
        # in the input pipeline; the model casts them.
        ra = (augment.RandAugment(*cfg.randaugment, dtype="float32")
              if cfg.randaugment else None)

        def example(*rec):
            index, image_bytes, label = read(*rec)
            s_crop, s_flip, s_ra = tf.unstack(
                tf.random.experimental.stateless_split(
                    tf.random.experimental.stateless_fold_in(
                        tf.stack([seed, tf.constant(0, tf.int64)]), index), 3))
            image = inception_crop(image_bytes, cfg.image_size, s_crop,
                                   (cfg.crop_area_min, 1.0))
            image = tf.image.stateless_random_flip_left_right(image, s_flip)
            if ra is not None:
                image = ra.augment(image, s_ra)
            image = tf.ensure_shape(image, [cfg.image_size, cfg.image_size, 3])
            return image, tf.one_hot(label, cfg.num_classes)

        ds = records.map(example, num_parallel_calls=AUTOTUNE)
        ds = ds.batch(batch, drop_remainder=True)
        if cfg.mixup_alpha or cfg.cutmix:
            # batch k of this pipeline is replica (k % local_replicas) of
            # step start_step + k // local_replicas.
            def mix(k, b):
                images, labels = b
                step = cfg.start_step + k // local_replicas
                replica = (ctx.input_pipeline_id * local_replicas
                           + k % local_replicas)
                s = tf.random.experimental.stateless_fold_in(
                    tf.random.experimental.stateless_fold_in(
                        tf.stack([seed, tf.constant(1, tf.int64)]), step),
                    replica)
                return augment.mixup_cutmix(images, labels, s,
                                            cfg.mixup_alpha, cfg.cutmix)
            ds = ds.enumerate().map(mix, num_parallel_calls=AUTOTUNE)
        return ds.prefetch(AUTOTUNE).with_options(_options())

    return dataset_fn


def eval_steps(num_examples, global_batch_size):
    """Steps that cover every example once. With P pipelines each reading
    every P-th example (at most ceil(N/P)), ceil(N/G) steps of G/P examples
    per pipeline always suffice, whatever P is."""
    return max(1, -(-num_examples // global_batch_size))


def eval_dataset_fn(source, global_batch_size, image_size, crop_padding=32,
                    split=None, num_examples=None, preprocess=None):
    """Returns `dataset_fn(ctx)` for evaluation: batches of
    (image, one-hot label, weight), each pipeline padded with weight-0
    examples to the same number of whole batches, so every example counts
    once and shapes stay static (TPU). `preprocess(image_bytes)`, when
    given, replaces `eval_preprocess` (a model's own preprocessing, see
    training.evaluate.tf_preprocess)."""
    split = split or source.eval_split
    n = num_examples if num_examples is not None else source.split_size(split)

    def dataset_fn(ctx=None):
        ctx = ctx or tf.distribute.InputContext()
        batch = ctx.get_per_replica_batch_size(global_batch_size)
        local_replicas = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        steps = eval_steps(n, global_batch_size)
        total = steps * batch * local_replicas

        def example(image_bytes, label):
            image = (preprocess(image_bytes) if preprocess is not None
                     else eval_preprocess(image_bytes, image_size,
                                          crop_padding))
            return image, tf.one_hot(label, source.num_classes), 1.0

        ds = source.eval_records(ctx, split).map(example, AUTOTUNE)
        pad = tf.data.Dataset.from_tensors(
            (tf.zeros([image_size, image_size, 3]),
             tf.zeros([source.num_classes]), 0.0)).repeat()
        ds = ds.concatenate(pad).take(total)
        ds = ds.batch(batch, drop_remainder=True)
        return ds.prefetch(AUTOTUNE).with_options(_options())

    return dataset_fn
