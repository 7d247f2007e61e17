"""Trains an NFNet: `python -m training.train --variant=F0 --dataset=...`.

Defaults are DeepMind's ImageNet recipe (batch 4096, lr 0.1 per 256, 5
warmup epochs then cosine, Nesterov SGD with coupled weight decay 2e-5, AGC
0.01, label smoothing 0.1, EMA 0.99999, MixUp 0.2 + CutMix, the variant's
RandAugment level, stochastic depth and dropout, bfloat16, 360 epochs).
`--demo` trains a small NFNet on the CIFAR-10 sample shipped in
training/demo_data, offline, on CPU.

Readable top to bottom: flags -> checks -> strategy -> data -> model ->
fit (resumable) -> evaluation on the EMA weights -> metrics.json + .keras.
"""

import dataclasses
import json
import math
import os
import sys
import time

if __name__ == "__main__":  # --backend must reach keras before its import
    from . import backends as _backends
    _backends.select_from_argv()

from absl import app
from absl import flags
from absl import logging

from .errors import UsageError  # noqa: F401 (re-exported: train.UsageError)
from .loss_scale import SkipCountingLossScaleOptimizer
from .finetune import load_finetune_weights, weights_exist as _weights_exist  # noqa: F401

FLAGS = flags.FLAGS
HERE = os.path.dirname(os.path.abspath(__file__))
DEMO_DATA = os.path.join(HERE, "demo_data")

# --- model and data
flags.DEFINE_string("variant", "F0", "F0..F7, F0+..F7+, or a JSON config "
                    "file in DeepMind's nfnet_params vocabulary.")
flags.DEFINE_string("dataset", "imagenet2012", "A tfds name (prepared in "
                    "--data_dir) or folder:/path (class-per-folder images, "
                    "with train/ and validation/ or test/ subfolders).")
flags.DEFINE_string("data_dir", None, "tfds data_dir, local or gs://.")
flags.DEFINE_string("train_split", "train", "Training split.")
flags.DEFINE_string("eval_split", None,
                    "Evaluation split (default: validation, else test).")
flags.DEFINE_string("model_dir", None, "Checkpoints, logs and the model "
                    "(local or gs://; must be gs:// on TPU).")
# --- backend and distribution
flags.DEFINE_string("backend", None, "Keras backend: tensorflow (default; "
                    "--strategy/--tpu, tf.distribute), jax (keras.distribution"
                    ".DataParallel over every local device: several GPUs, or "
                    "a TPU VM with jax[tpu]; several hosts: "
                    "--jax_distributed) or torch (one "
                    "device). Default: $KERAS_BACKEND, else tensorflow. "
                    "Resuming from a backup works on each backend.")
flags.DEFINE_string("tpu", None, "TPU name, 'local' (TPU VM) or grpc:// "
                    "(TensorFlow backend; on JAX, jax[tpu] finds the TPU).")
flags.DEFINE_enum("strategy", "auto", ["auto", "tpu", "mirrored",
                                       "multi_worker", "one_device",
                                       "default"], "tf.distribute strategy "
                  "(TensorFlow backend).")
from . import multihost  # pylint: disable=wrong-import-position
multihost.define_flags()  # --jax_distributed, --coordinator_address, ...
# --- schedule
flags.DEFINE_integer("batch_size", 4096, "Global batch size.")
flags.DEFINE_float("epochs", 360, "Training epochs.")
flags.DEFINE_integer("train_steps", None, "Training steps (overrides "
                     "--epochs).")
flags.DEFINE_integer("steps_per_epoch", None, "Steps per Keras epoch "
                     "(default: one pass over the training split).")
# --- optimizer
flags.DEFINE_float("lr", 0.1, "Learning rate per 256 examples.")
flags.DEFINE_float("warmup_epochs", 5, "Linear warmup epochs.")
flags.DEFINE_float("weight_decay", 2e-5, "Coupled L2 weight decay.")
flags.DEFINE_float("momentum", 0.9, "Nesterov momentum.")
flags.DEFINE_float("agc_clipping", 0.01, "AGC threshold; 0 turns AGC off.")
flags.DEFINE_float("label_smoothing", 0.1, "Label smoothing.")
flags.DEFINE_float("ema_decay", 0.99999, "EMA decay of the weights used "
                   "for evaluation; 0 turns the EMA off.")
# --- precision and sizes
flags.DEFINE_enum("mixed_precision", "bfloat16",
                  ["bfloat16", "float16", "none"], "Mixed precision.")
flags.DEFINE_integer("image_size", None, "Training size (default: the "
                     "variant's train_imsize).")
flags.DEFINE_integer("eval_image_size", None, "Evaluation size (default: "
                     "the variant's test_imsize).")
flags.DEFINE_integer("eval_crop_padding", 32, "Evaluation centre-crops "
                     "size/(size + padding) of the short side and resizes "
                     "to size (DeepMind's crop_resize).")
flags.DEFINE_integer("eval_batch_size", None, "Default: --batch_size.")
# --- regularisation
flags.DEFINE_string("randaugment", None, "RandAugment level, e.g. '405' (4 "
                    "layers, magnitude 5); default the variant's; 'none'.")
flags.DEFINE_float("mixup_alpha", 0.2, "MixUp alpha (0: off).")
flags.DEFINE_bool("cutmix", True, "CutMix on half of each batch.")
flags.DEFINE_float("stochdepth_rate", None, "Default: the variant's.")
flags.DEFINE_float("drop_rate", None, "Default: the variant's.")
flags.DEFINE_float("crop_area_min", 0.08, "Smallest Inception crop area.")
# --- run control
flags.DEFINE_string("weights", None, "Fine-tune from 'imagenet', a "
                    "DeepMind .npz, a .weights.h5 or a .keras file.")
flags.DEFINE_integer("seed", 0, "Seed for initialisation and the data.")
flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"], "XLA.")
flags.DEFINE_integer("steps_per_execution", 1, "Steps per tf.function call "
                     "(raise on TPU, e.g. 100).")
flags.DEFINE_bool("lean_cpu_allocator", False, "Return freed memory to the "
                  "OS at once (keras_nfnets.use_lean_cpu_allocator): lower "
                  "peak memory, slower CPU steps (docs/performance.md).")
flags.DEFINE_integer("checkpoint_steps", 500, "Steps between backups.")
flags.DEFINE_bool("deterministic_ops", False, "tf.config.experimental."
                  "enable_op_determinism() (bit-exact, slower on GPU).")
flags.DEFINE_bool("allow_changed_flags", False, "Resume a run in --model_dir "
                  "even though training flags differ from the ones it was "
                  "started with (stored in flags.json); refused otherwise.")
flags.DEFINE_bool("skip_unreadable_images", False, "Folder datasets: check "
                  "every image first and leave out the ones that cannot be "
                  "decoded (their count and names are printed); otherwise "
                  "an unreadable image stops the run, named.")
flags.DEFINE_bool("demo", False, "Train the offline demo (a small NFNet on "
                  "the CIFAR-10 sample in training/demo_data).")

# Demo: a small NFNet (the layout of DeepMind's F-series, narrower and
# shallower) on 3,000 CIFAR-10 JPEGs at 32px (`make demo`).
DEMO_FLAGS = dict(
    variant=os.path.join(DEMO_DATA, "nfnet_demo.json"),
    dataset="folder:" + DEMO_DATA, model_dir="/tmp/keras_nfnets_demo",
    batch_size=64, epochs=25, lr=0.4, warmup_epochs=1, weight_decay=5e-5,
    agc_clipping=0.04, ema_decay=0.999, mixed_precision="none",
    image_size=32, eval_image_size=32, eval_crop_padding=0,
    randaugment="205", mixup_alpha=0.0, cutmix=False, crop_area_min=0.25,
    stochdepth_rate=0.0, drop_rate=0.1, checkpoint_steps=100)


def apply_demo_defaults():
    """--demo: the demo's values for every flag not given explicitly."""
    for name, value in DEMO_FLAGS.items():
        if not FLAGS[name].present:
            FLAGS[name].value = value


def is_finished(model_dir):
    from . import data  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return tf.io.gfile.exists(data.join(model_dir, "metrics.json"))


@dataclasses.dataclass
class Plan:
    """Everything resolved from the flags before any work."""
    config: object
    variant_name: str
    image_size: int
    eval_image_size: int
    randaugment: object
    stochdepth_rate: float
    drop_rate: float
    backend: str = "tensorflow"


def _finite(value):
    return value is not None and math.isfinite(value)


# (flag, test, what it must be): every numeric flag, checked before any work.
_VALUE_RULES = (
    ("batch_size", lambda v: v >= 1, ">= 1"),
    ("train_steps", lambda v: v is None or v >= 1, ">= 1 (or unset)"),
    ("steps_per_epoch", lambda v: v is None or v >= 1, ">= 1 (or unset)"),
    ("epochs", lambda v: _finite(v) and v > 0, "a finite number > 0"),
    ("lr", lambda v: _finite(v) and v > 0, "a finite number > 0"),
    ("warmup_epochs", lambda v: _finite(v) and v >= 0, "finite and >= 0"),
    ("weight_decay", lambda v: _finite(v) and v >= 0, "finite and >= 0"),
    ("momentum", lambda v: _finite(v) and 0 <= v < 1, "in [0, 1)"),
    ("agc_clipping", lambda v: _finite(v) and v >= 0,
     "finite and >= 0 (0 turns AGC off)"),
    ("label_smoothing", lambda v: _finite(v) and 0 <= v < 1, "in [0, 1)"),
    ("ema_decay", lambda v: _finite(v) and 0 <= v < 1,
     "in [0, 1) (0 turns the EMA off)"),
    ("image_size", lambda v: v is None or v >= 1, ">= 1 (or unset)"),
    ("eval_image_size", lambda v: v is None or v >= 1, ">= 1 (or unset)"),
    ("eval_crop_padding", lambda v: v >= 0, ">= 0"),
    ("eval_batch_size", lambda v: v is None or v >= 1, ">= 1 (or unset)"),
    ("mixup_alpha", lambda v: _finite(v) and v >= 0, "finite and >= 0"),
    ("stochdepth_rate", lambda v: v is None or (_finite(v) and 0 <= v < 1),
     "in [0, 1)"),
    ("drop_rate", lambda v: v is None or (_finite(v) and 0 <= v < 1),
     "in [0, 1)"),
    ("crop_area_min", lambda v: _finite(v) and 0 < v <= 1, "in (0, 1]"),
    ("steps_per_execution", lambda v: v >= 1, ">= 1"),
    ("checkpoint_steps", lambda v: v >= 1, ">= 1"),
)


def check_values():
    """Refuses numeric flags that make no sense (a negative --lr or
    --agc_clipping would turn descent into ascent, --train_steps=-5 would
    train nothing and mark the run finished), naming every bad flag."""
    bad = [f"--{name}={FLAGS[name].value}: must be {what}"
           for name, ok, what in _VALUE_RULES if not ok(FLAGS[name].value)]
    if bad:
        raise UsageError("; ".join(bad) + ".")


def check_flags():
    """Flag checks that need no data and no devices. Returns a Plan."""
    from keras_nfnets import variants  # pylint: disable=import-outside-toplevel
    from . import augment  # pylint: disable=import-outside-toplevel
    from . import backends  # pylint: disable=import-outside-toplevel
    try:
        config = variants.get_config(FLAGS.variant)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--variant={FLAGS.variant!r}: {e}") from e
    check_values()
    try:
        ra = augment.parse_randaugment(
            FLAGS.randaugment if FLAGS.randaugment is not None
            else config.RA_level)
    except ValueError as e:
        raise UsageError(str(e)) from e
    backend = backends.requested_backend(FLAGS.backend)
    if backend not in backends.BACKENDS:
        raise UsageError(f"--backend={backend!r}: expected one of "
                         f"{', '.join(backends.BACKENDS)}.")
    if backend != "tensorflow" and (FLAGS.tpu or FLAGS.strategy not in (
            "auto", "default")):
        raise UsageError(
            f"--tpu/--strategy select a tf.distribute strategy (TensorFlow "
            f"backend); --backend={backend} uses "
            + ("keras.distribution.DataParallel over every device JAX sees "
               "(on a TPU VM: pip install 'jax[tpu]', no --tpu needed)."
               if backend == "jax" else "one device."))
    uses_tpu = backend == "tensorflow" and (FLAGS.strategy == "tpu" or (
        FLAGS.strategy == "auto" and FLAGS.tpu))
    if uses_tpu and not str(FLAGS.model_dir or "").startswith("gs://"):
        raise UsageError(
            f"--model_dir={FLAGS.model_dir!r}: on TPU the model directory "
            "must be a gs:// bucket path (e.g. --model_dir=gs://BUCKET/nfnet_"
            "f0): the TPU workers write checkpoints and logs there directly.")
    if not FLAGS.model_dir:
        raise UsageError("--model_dir is required (checkpoints, logs, the "
                         "trained model and metrics.json go there).")
    if FLAGS.weights not in (None, "imagenet") and not _weights_exist(
            FLAGS.weights):
        raise UsageError(f"--weights={FLAGS.weights!r}: no such file "
                         "(expected 'imagenet' or a weights file, local or "
                         "gs://).")
    name = str(FLAGS.variant)
    return Plan(
        config=config, variant_name=name,
        image_size=FLAGS.image_size or config.train_imsize,
        eval_image_size=FLAGS.eval_image_size or config.test_imsize,
        randaugment=ra,
        stochdepth_rate=(config.stochdepth_rate if FLAGS.stochdepth_rate is
                         None else FLAGS.stochdepth_rate),
        drop_rate=(config.drop_rate if FLAGS.drop_rate is None
                   else FLAGS.drop_rate),
        backend=backend)


#: Flags that change what a run trains: a resume must use the values it was
#: started with (stored in `model_dir/flags.json`).
TRAINING_FLAGS = (
    "variant", "dataset", "data_dir", "train_split", "batch_size", "epochs",
    "train_steps", "steps_per_epoch", "lr", "warmup_epochs", "weight_decay",
    "momentum", "agc_clipping", "label_smoothing", "ema_decay",
    "mixed_precision", "image_size", "randaugment", "mixup_alpha", "cutmix",
    "stochdepth_rate", "drop_rate", "crop_area_min", "weights", "seed",
    "backend", "skip_unreadable_images")
FLAGS_FILE = "flags.json"


def resolved_flags(plan):
    """The training-relevant flags with defaults resolved (JSON values)."""
    values = {name: FLAGS[name].value for name in TRAINING_FLAGS}
    values.update(
        image_size=plan.image_size, stochdepth_rate=plan.stochdepth_rate,
        drop_rate=plan.drop_rate, backend=plan.backend,
        randaugment=list(plan.randaugment) if plan.randaugment else None)
    return values


def check_resume_flags(model_dir, values):
    """Refuses to resume `model_dir` with training flags that differ from
    those it was started with (unless --allow_changed_flags); records them
    on the first start. Returns the names of the flags that changed."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from . import data  # pylint: disable=import-outside-toplevel
    path = data.join(model_dir, FLAGS_FILE)
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        stored = json.load(f)
    changed = sorted(k for k in values if k in stored and stored[k] != values[k])
    if changed and not FLAGS.allow_changed_flags:
        listed = ", ".join(f"--{k}={stored[k]!r} -> {values[k]!r}"
                           for k in changed)
        raise UsageError(
            f"{model_dir} holds a run started with other training flags "
            f"({path}): {listed}. Resuming would silently mix two "
            "configurations. Use the original values, a new --model_dir, or "
            "--allow_changed_flags to resume with the new values anyway.")
    return changed


def write_resume_flags(model_dir, values):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from . import data  # pylint: disable=import-outside-toplevel
    path = data.join(model_dir, FLAGS_FILE)
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        json.dump(values, f, indent=1, sort_keys=True)
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def check_replicas(strategy, batch_size, what="--batch_size"):
    n = strategy.num_replicas_in_sync
    if batch_size % n:
        raise UsageError(
            f"{what}={batch_size} is not divisible by the {n} replicas of "
            f"the {type(strategy).__name__}: use a multiple of {n}, e.g. "
            f"{max(n, batch_size // n * n)}.")


def build_model(plan, num_classes, seed):
    """The NFNet (logits out, any input size), with --weights loaded."""
    import keras_nfnets  # pylint: disable=import-outside-toplevel
    model = keras_nfnets.NFNet(
        plan.config, weights=None, classes=num_classes,
        input_shape=(None, None, 3), classifier_activation=None,
        drop_rate=plan.drop_rate, stochdepth_rate=plan.stochdepth_rate,
        seed=seed, name="nfnet")
    if FLAGS.weights:
        load_finetune_weights(model, FLAGS.weights, plan.variant_name,
                              num_classes)
    return model


def compile_model(model, steps_per_epoch, total_steps, jit_compile):
    """DeepMind's optimizer recipe + AGC, all from keras_nfnets (the one
    place where the optimizer is chosen)."""
    import keras  # pylint: disable=import-outside-toplevel
    from keras_nfnets import optimizers  # pylint: disable=import-outside-toplevel
    warmup = int(FLAGS.warmup_epochs * steps_per_epoch)
    warmup = min(warmup, max(total_steps - 1, 0))
    schedule = optimizers.WarmupCosineDecay(
        FLAGS.lr * FLAGS.batch_size / 256.0, warmup_steps=warmup,
        total_steps=max(total_steps, warmup + 1))
    optimizer = optimizers.NFNetSGD(
        schedule, momentum=FLAGS.momentum, nesterov=True,
        weight_decay=FLAGS.weight_decay, use_ema=FLAGS.ema_decay > 0,
        ema_momentum=FLAGS.ema_decay or 0.99)
    agc_clipping = FLAGS.agc_clipping or None
    if agc_clipping and keras.config.dtype_policy().name == "mixed_float16":
        from keras_nfnets.agc import AGC  # pylint: disable=import-outside-toplevel
        optimizer = SkipCountingLossScaleOptimizer(
            AGC(optimizer, clipping=agc_clipping))
        agc_clipping = None  # wrapped here, not again by compile
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=FLAGS.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="top1"),
                 # (k <= classes: PyTorch's topk rejects a larger k)
                 keras.metrics.TopKCategoricalAccuracy(
                     min(5, model.output_shape[-1]), name="top5")],
        agc_clipping=agc_clipping,
        steps_per_execution=FLAGS.steps_per_execution,
        jit_compile={"auto": "auto", "true": True,
                     "false": False}[FLAGS.jit_compile])


def _KeepTrainingWeights(optimizer, active=True):  # pylint: disable=invalid-name
    """A partial `fit` (the rest of an interrupted epoch) must not end by
    swapping the EMA into the model, which Keras does at the end of fit."""
    import contextlib  # pylint: disable=import-outside-toplevel
    from keras_nfnets import compat  # pylint: disable=import-outside-toplevel
    if not active:
        return contextlib.nullcontext()
    return compat.keep_training_weights(optimizer)


def fit(model, strategy, source, plan, steps_per_epoch, epochs, total_steps,
        callbacks, backup, on_restored=None):
    """Runs (or resumes) training up to `total_steps`. Returns the History
    of the last fit call."""
    from . import data  # pylint: disable=import-outside-toplevel
    from . import checkpoint  # pylint: disable=import-outside-toplevel
    try:
        step = backup.restore(model)
    except checkpoint.BackupError as e:
        raise UsageError(str(e)) from e
    if on_restored is not None:
        on_restored()
    if step:
        logging.info("Resuming from the backup at step %d.", step)
        print(f"Resuming from step {step}/{total_steps}.", flush=True)

    def dataset_from(start):
        cfg = data.TrainInput(
            global_batch_size=FLAGS.batch_size, image_size=plan.image_size,
            num_classes=source.num_classes, seed=FLAGS.seed,
            randaugment=plan.randaugment, mixup_alpha=FLAGS.mixup_alpha,
            cutmix=FLAGS.cutmix, crop_area_min=FLAGS.crop_area_min,
            start_step=start)
        return strategy.distribute_datasets_from_function(
            data.train_dataset_fn(source, cfg))

    # Keras runs whole epochs of `steps_per_epoch`; the rest of an
    # interrupted epoch and a last partial epoch are fit calls of their own.
    segments = []  # (first epoch, end epoch, steps per epoch)
    epoch, done = divmod(step, steps_per_epoch)
    if done and step < total_steps:
        segments.append((epoch, epoch + 1,
                         min(steps_per_epoch - done, total_steps - step)))
        epoch += 1
    full_epochs = total_steps // steps_per_epoch
    if full_epochs > epoch:
        segments.append((epoch, full_epochs, steps_per_epoch))
        epoch = full_epochs
    last = total_steps - max(full_epochs * steps_per_epoch, step)
    if last > 0 and epoch < epochs:
        segments.append((epoch, epoch + 1, last))
    history = None
    for i, (first, end, steps) in enumerate(segments):
        final = i == len(segments) - 1
        with _KeepTrainingWeights(model.optimizer, active=not final):
            history = model.fit(
                dataset_from(_current_step(model)), initial_epoch=first,
                epochs=end, steps_per_epoch=steps, callbacks=callbacks,
                verbose=_verbose(strategy))
    if history is None:  # the backup was taken after the last step
        model.optimizer.finalize_variable_values(model.trainable_variables)
    return history


class _naming_unreadable_images:  # pylint: disable=invalid-name
    """Turns a decoding failure of the input pipeline into a UsageError that
    names the unreadable files of `split` (folder datasets)."""

    def __init__(self, source, split):
        self.source, self.split = source, split

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        from . import data  # pylint: disable=import-outside-toplevel
        if kind is None or not issubclass(kind, tf.errors.InvalidArgumentError):
            return False
        error = data.unreadable_error(self.source, self.split)
        if error is None:
            return False
        raise UsageError(str(error)) from value


def _current_step(model):
    import keras  # pylint: disable=import-outside-toplevel
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def _writing(strategy):
    """The block in which the chief alone writes the model: on several JAX
    processes outside the global mesh (training.multihost), else as is."""
    import contextlib  # pylint: disable=import-outside-toplevel
    writing = getattr(strategy, "writing", None)
    return writing() if writing else contextlib.nullcontext()


def _verbose(strategy):
    from . import strategy as strategy_lib  # pylint: disable=import-outside-toplevel
    return 1 if strategy_lib.is_chief(strategy) else 0


def run(argv=None):
    """The program. Returns the metrics dict."""
    del argv
    if FLAGS.demo:
        apply_demo_defaults()
    plan = check_flags()  # raises UsageError before any work

    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import keras  # pylint: disable=import-outside-toplevel
    from . import data  # pylint: disable=import-outside-toplevel
    from . import evaluate  # pylint: disable=import-outside-toplevel
    from . import strategy as strategy_lib  # pylint: disable=import-outside-toplevel
    from .checkpoint import StepBackup  # pylint: disable=import-outside-toplevel
    from . import backends  # pylint: disable=import-outside-toplevel

    problem = backends.check_active(plan.backend)
    if problem:
        raise UsageError(problem)
    if FLAGS.lean_cpu_allocator:
        import keras_nfnets  # pylint: disable=import-outside-toplevel
        try:
            keras_nfnets.use_lean_cpu_allocator()
        except RuntimeError as e:
            raise UsageError(str(e)) from e
    if plan.backend == "jax" or multihost.wanted(FLAGS):
        try:  # several processes: jax.distributed before JAX starts
            multihost.setup(FLAGS, plan.backend)
        except multihost.SetupError as e:
            raise UsageError(str(e)) from e
    model_dir = FLAGS.model_dir
    if is_finished(model_dir):
        with tf.io.gfile.GFile(data.join(model_dir, "metrics.json")) as f:
            metrics = json.load(f)
        print(f"{model_dir} holds a finished run (metrics.json); not "
              "training again. Use a new --model_dir to train again.")
        _report(metrics)
        return metrics

    flag_values = resolved_flags(plan)
    changed = check_resume_flags(model_dir, flag_values)
    if changed:
        print(f"--allow_changed_flags: resuming with changed {changed}.",
              flush=True)

    try:
        source = data.get_source(FLAGS.dataset, FLAGS.data_dir,
                                 FLAGS.train_split, FLAGS.eval_split)
    except data.DatasetError as e:
        raise UsageError(str(e)) from e
    if FLAGS.skip_unreadable_images:
        try:
            skipped = data.drop_unreadable(source)
        except data.DatasetError as e:
            raise UsageError(str(e)) from e
        print(f"--skip_unreadable_images: skipped {len(skipped)} unreadable "
              f"image(s){': ' + ', '.join(skipped[:10]) if skipped else ''}"
              f"{' ...' if len(skipped) > 10 else ''}.", flush=True)

    if plan.backend == "tensorflow":
        name = strategy_lib.resolve_strategy_name(FLAGS.strategy, FLAGS.tpu)
        strategy = strategy_lib.make_strategy(name, FLAGS.tpu)
    elif plan.backend == "jax" and multihost.process_count() > 1:
        try:
            strategy = multihost.MultiProcessDistribution(FLAGS.batch_size)
        except multihost.SetupError as e:
            raise UsageError(str(e)) from e
        name = strategy.name
    else:
        try:
            strategy = strategy_lib.KerasDistribution(plan.backend)
        except ValueError as e:
            raise UsageError(str(e)) from e
        name = (f"{plan.backend} DataParallel" if strategy.distribution
                else f"{plan.backend} single-device")
    eval_batch = FLAGS.eval_batch_size or FLAGS.batch_size
    check_replicas(strategy, FLAGS.batch_size)
    check_replicas(strategy, eval_batch, "--eval_batch_size")
    chief = strategy_lib.is_chief(strategy)

    if FLAGS.deterministic_ops:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(FLAGS.seed)
    if FLAGS.mixed_precision != "none":
        keras.mixed_precision.set_global_policy(
            "mixed_" + FLAGS.mixed_precision)

    steps_per_epoch = FLAGS.steps_per_epoch or max(
        source.num_train // FLAGS.batch_size, 1)
    if FLAGS.train_steps:
        total_steps = FLAGS.train_steps
    else:
        total_steps = max(int(round(FLAGS.epochs * steps_per_epoch)), 1)
    epochs = -(-total_steps // steps_per_epoch)
    print(f"{plan.variant_name} on {source.name}: {source.num_classes} "
          f"classes, {source.num_train} training images; {name} strategy "
          f"with {strategy.num_replicas_in_sync} replica(s); batch "
          f"{FLAGS.batch_size}, {total_steps} steps ({steps_per_epoch} per "
          f"epoch), {plan.image_size}px train / {plan.eval_image_size}px "
          "eval.", flush=True)

    with strategy.scope():
        model = build_model(plan, source.num_classes, FLAGS.seed)
        compile_model(model, steps_per_epoch, total_steps, FLAGS.jit_compile)

    strategy_lib.build_without_data_probe(model, strategy, (
        np.zeros((1, plan.image_size, plan.image_size, 3), "float32"),
        np.zeros((1, source.num_classes), "float32")))
    strategy_lib.fix_multi_worker_logs(model, strategy)

    tf.io.gfile.makedirs(model_dir)
    # Recorded on the first start; with --allow_changed_flags only once the
    # backup was restored under the new values (a refused resume keeps the
    # record of what the backup was written with).
    if chief and not changed:
        write_resume_flags(model_dir, flag_values)
    # (several JAX processes: process 0 writes outside the global mesh)
    backup = getattr(strategy, "step_backup", StepBackup)(
        data.join(model_dir, "backup"), save_freq=FLAGS.checkpoint_steps,
        write=chief)
    callbacks = [backup]
    if chief:
        callbacks += [
            keras.callbacks.TensorBoard(data.join(model_dir, "logs"),
                                        update_freq=100),
            keras.callbacks.CSVLogger(data.join(model_dir, "history.csv"),
                                      append=True)]
    start = time.time()
    with _naming_unreadable_images(source, source.train_split):
        fit(model, strategy, source, plan, steps_per_epoch, epochs,
            total_steps, callbacks, backup, on_restored=(
                (lambda: write_resume_flags(model_dir, flag_values))
                if chief and changed else None))
    train_time = time.time() - start

    # The model now holds the EMA weights (Keras swaps them in after fit).
    # Saved before the evaluation, so that a failing evaluation loses no
    # training.
    if chief:
        with _writing(strategy):
            model.save(data.join(model_dir, "model.keras"))
    with _naming_unreadable_images(source, source.eval_split):
        result = evaluate.evaluate_model(
            model, strategy, source, eval_batch, plan.eval_image_size,
            FLAGS.eval_crop_padding)
    metrics = {
        "top1": result["top1"], "top5": result["top5"],
        "eval_examples": result["examples"], "split": source.eval_split,
        "eval_image_size": plan.eval_image_size,
        "eval_crop_padding": FLAGS.eval_crop_padding,
        "ema": FLAGS.ema_decay > 0, "steps": _current_step(model),
        "train_seconds": round(train_time, 1), "variant": plan.variant_name,
        "dataset": source.name, "class_names": list(source.class_names),
        "backend": plan.backend, "replicas": strategy.num_replicas_in_sync}
    if chief:
        with tf.io.gfile.GFile(data.join(model_dir, "metrics.json"),
                               "w") as f:
            json.dump(metrics, f, indent=1)
    elif getattr(strategy, "save_worker_copies", True):  # other workers:
        # their copy, to check that replicas agree (tf.distribute)
        tf.io.gfile.makedirs(data.join(model_dir, "workers"))
        model.save(data.join(model_dir, "workers", strategy_lib.task_name(
            strategy) + ".keras"))
    _report(metrics, model_dir)
    return metrics


def _report(metrics, model_dir=None):
    print(f"top-1 accuracy: {100 * metrics['top1']:.1f}%  (top-5 "
          f"{100 * metrics['top5']:.1f}%, {metrics['eval_examples']} "
          f"{metrics['split']} images, {metrics['eval_image_size']}px"
          f"{', EMA weights' if metrics.get('ema') else ''})", flush=True)
    if model_dir:
        print(f"model: {model_dir}/model.keras; metrics: "
              f"{model_dir}/metrics.json", flush=True)


def main(argv):
    try:
        run(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
