"""Input pipeline: folder and tfds sources (a split missing a class under
any hash seed, empty class folders), the dataset functions with an
InputContext of several pipelines, augmentation, determinism, resume skip."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from training import augment
from training import data
from training_helpers import REPO, env, make_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = make_folder(tmp_path_factory.mktemp("imgs"), classes=3, train=8,
                       test=4)
    return data.folder_source(str(root))


def _cfg(**kw):
    base = dict(global_batch_size=8, image_size=24, num_classes=3, seed=3)
    base.update(kw)
    return data.TrainInput(**base)


def _take(ds, n):
    return [tuple(np.asarray(t) for t in b) for b in ds.take(n)]


def test_folder_source(folder):
    assert folder.num_classes == 3 and folder.num_train == 24
    assert folder.num_eval == 12 and folder.eval_split == "test"
    assert folder.class_names == ("airplane", "automobile", "bird")


def test_folder_errors(tmp_path):
    with pytest.raises(data.DatasetError, match="no such directory"):
        data.get_source(f"folder:{tmp_path}/missing")
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(data.DatasetError, match="no images"):
        data.get_source(f"folder:{tmp_path}")


def test_parse_randaugment():
    assert augment.parse_randaugment("405") == (4, 5)
    assert augment.parse_randaugment("415") == (4, 15)
    assert augment.parse_randaugment("none") is None
    with pytest.raises(ValueError, match="RA level"):
        augment.parse_randaugment("4x5")


def test_train_batches_are_per_replica_and_deterministic(folder):
    cfg = _cfg(randaugment=(2, 5), mixup_alpha=0.2, cutmix=True)
    fn = data.train_dataset_fn(folder, cfg)
    a = _take(fn(tf.distribute.InputContext()), 3)
    b = _take(fn(tf.distribute.InputContext()), 3)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.shape == (8, 24, 24, 3) and ya.shape == (8, 3)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_allclose(ya.sum(-1), 1.0, rtol=1e-6)
        assert 0.0 <= xa.min() and xa.max() <= 255.0
    other = _take(data.train_dataset_fn(folder, _cfg(seed=4))(None), 1)
    assert not np.array_equal(other[0][0], a[0][0])


def test_resume_skip_equals_uninterrupted_stream(folder):
    cfg = _cfg(randaugment=(2, 5), mixup_alpha=0.2, cutmix=True)
    full = _take(data.train_dataset_fn(folder, cfg)(None), 5)
    cfg.start_step = 3
    resumed = _take(data.train_dataset_fn(folder, cfg)(None), 2)
    for (x1, y1), (x2, y2) in zip(full[3:], resumed):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_input_context_with_several_pipelines(folder):
    """4 pipelines x 2 replicas each (8 replicas, as on a 4-host TPU pod
    slice): per-replica batches of global/8, disjoint shards whose union is
    what one pipeline reads for the same global steps."""
    cfg = _cfg(global_batch_size=16)
    fn = data.train_dataset_fn(folder, cfg)
    single = _take(fn(tf.distribute.InputContext()), 3)  # 3 steps of 16
    shards = []
    for pid in range(4):
        ctx = tf.distribute.InputContext(num_input_pipelines=4,
                                         input_pipeline_id=pid,
                                         num_replicas_in_sync=8)
        assert ctx.get_per_replica_batch_size(16) == 2
        batches = _take(fn(ctx), 6)  # 2 local replicas x 3 steps
        assert all(x.shape == (2, 24, 24, 3) for x, _ in batches)
        shards.append(batches)

    def key(x):
        return x.round(3).tobytes()

    for step in range(3):
        want = sorted(key(x) for x in single[step][0])
        got = sorted(key(x) for s in shards for x, _ in
                     (s[2 * step], s[2 * step + 1]) for x in x)
        assert want == got


def test_eval_dataset_pads_every_pipeline_to_the_same_steps(folder):
    fn = data.eval_dataset_fn(folder, 9, 24, crop_padding=8)
    steps = data.eval_steps(folder.num_eval, 9)  # 12 examples: 2 steps
    seen, labels = 0.0, 0
    for pid in range(3):
        ctx = tf.distribute.InputContext(3, pid, 3)
        batches = list(fn(ctx))
        assert len(batches) == steps  # the same on every pipeline
        for x, y, w in batches:
            assert x.shape[1:] == (24, 24, 3)
            seen += float(tf.reduce_sum(w))
            labels += int(tf.reduce_sum(y))
    assert seen == folder.num_eval == labels


def _png_bytes(h, w):
    return tf.io.encode_png(tf.cast(tf.random.uniform([h, w, 3], 0, 255),
                                    tf.uint8))


def test_crops_work_on_jpeg_and_png(folder):
    jpeg = tf.io.read_file(folder.files["train"][0][0])
    seed = tf.constant([1, 2], tf.int64)
    for raw in (jpeg, _png_bytes(40, 30)):
        assert data.inception_crop(raw, 20, seed).shape == (20, 20, 3)
        assert data.eval_preprocess(raw, 20).shape == (20, 20, 3)


@pytest.mark.parametrize("shape,encode", [((64, 64, 3), "png"),
                                          ((75, 100, 3), "png"),
                                          ((67, 48, 3), "jpeg")])
def test_eval_preprocess_is_deepmind_centre_crop_then_resize(shape, encode):
    """DeepMind's `_decode_and_center_crop` + bicubic resize, written out
    from nfnets/dataset.py: crop size/(size+32) of the short side."""
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    raw = (tf.io.encode_png(image) if encode == "png"
           else tf.io.encode_jpeg(image, quality=100))
    decoded = tf.io.decode_image(raw, channels=3)
    size = 32
    h, w = shape[0], shape[1]
    crop = int(min(h, w) / (size + 32) * size)
    top, left = (h - crop + 1) // 2, (w - crop + 1) // 2
    if encode == "jpeg":  # DeepMind's crop(): cut while decoding a JPEG
        cropped = tf.image.decode_and_crop_jpeg(raw, [top, left, crop, crop],
                                                channels=3)
    else:
        cropped = decoded[top:top + crop, left:left + crop]
    expected = tf.image.resize(cropped, [size, size], method="bicubic").numpy()
    out = data.eval_preprocess(raw, size, crop_padding=32).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-3)


def test_mixup_cutmix_halves():
    images = tf.concat([tf.zeros([4, 8, 8, 3]), 255 * tf.ones([4, 8, 8, 3])],
                       0)
    labels = tf.one_hot([0, 0, 0, 0, 1, 1, 1, 1], 2)
    seed = tf.constant([5, 6], tf.int64)
    x, y = augment.mixup_cutmix(images, labels, seed, 0.2, True)
    np.testing.assert_allclose(tf.reduce_sum(y, -1), 1.0, rtol=1e-6)
    # second half is CutMix: label weight of the partner = pasted area
    pasted = tf.reduce_mean(tf.cast(x[4:, ..., 0] == 0, tf.float32), [1, 2])
    np.testing.assert_allclose(y[4:, 0], pasted, atol=1e-6)
    # first half is MixUp within the (all-zero) half: unchanged images
    np.testing.assert_allclose(x[:4], 0.0)


def test_gcs_paths():
    assert data.is_gcs("gs://bucket/x") and not data.is_gcs("/tmp/x")
    assert data.join("gs://bucket/run", "backup", "latest.json") == \
        "gs://bucket/run/backup/latest.json"
    assert data.imagenet_manual_dir("gs://b/tfds") == \
        "gs://b/tfds/downloads/manual"


def test_unprepared_tfds_dataset_names_the_fix(tmp_path):
    with pytest.raises(data.DatasetError, match="tfds build mnist"):
        data.get_source("mnist", str(tmp_path))
    with pytest.raises(data.DatasetError) as e:
        data.get_source("imagenet2012", str(tmp_path))
    assert "ILSVRC2012_img_train.tar" in str(e.value)
    assert f"{tmp_path}/downloads/manual" in str(e.value)


# ------------------------------------- class folders and PYTHONHASHSEED

_SOURCE = """
import sys
from training import data
try:
    s = data.folder_source(sys.argv[1])
    print("accepted", s.class_names, s.files[s.eval_split][0][1])
except data.DatasetError as e:
    print("refused:", e)
"""


def test_split_missing_a_class_is_refused_under_any_hash_seed(tmp_path):
    """One fresh process per PYTHONHASHSEED (3, 6: the train split is
    listed first), side by side."""
    root = make_folder(tmp_path / "imgs", classes=3, train=1, test=1)
    shutil.rmtree(root / "test" / "airplane")
    procs = {seed: subprocess.Popen(
        [sys.executable, "-c", _SOURCE, str(root)], cwd=REPO,
        env=env(PYTHONHASHSEED=seed), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for seed in ("0", "3", "6")}
    try:
        outs = {seed: p.communicate(timeout=300) for seed, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.communicate()
    for seed, (out, err) in outs.items():
        assert procs[seed].returncode == 0, (seed, err[-2000:])
        assert "refused:" in out, (seed, out)
        assert "missing ['airplane']" in out


def test_empty_class_folder_in_a_split_is_fine(tmp_path):
    root = make_folder(tmp_path / "imgs", classes=3, train=1, test=1)
    for f in (root / "test" / "airplane").iterdir():
        f.unlink()
    source = data.folder_source(str(root))
    assert source.class_names == ("airplane", "automobile", "bird")
    assert [label for _, label in source.files["test"]] == [1, 2]
