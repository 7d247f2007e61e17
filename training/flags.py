"""The training program's flags: their definitions, the demo's values, and
the checks that turn them into a `Plan` before any work starts.

    from training import flags
    flags.FLAGS(["train", "--model_dir=/tmp/run", "--variant=F0"])
    plan = flags.check_flags()      # a UsageError names every bad flag
    plan.image_size                 # 192: the variant's training size

Defaults are DeepMind's ImageNet recipe; `--demo` swaps in `DEMO_FLAGS`
for every flag not given. Importing this module defines the flags (once per
process) and imports neither TensorFlow nor Keras.
"""

import dataclasses
import math
import os

from absl import flags

from . import multihost
from .errors import UsageError
from .finetune import weights_exist

FLAGS = flags.FLAGS
_HERE = os.path.dirname(os.path.abspath(__file__))
DEMO_DATA = os.path.join(_HERE, "demo_data")

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
flags.DEFINE_integer("eval_crop_padding", 32, "Padding of the model's "
                     "evaluation crop in DeepMind's modes (NFNets' "
                     "resize_crop: squash to size + padding, centre-crop "
                     "size); see docs/evaluation.md.")
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
flags.DEFINE_enum("remat", "auto", ["auto", "true", "false"], "Recompute each block in the backward pass (less memory, slower step); auto: on when the step's kept activations would not fit, or come close to, the free memory (keras_nfnets.runtime).")
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
    if backend == "jax" or multihost.wanted(FLAGS):
        try:
            multihost.check_flags(FLAGS, backend)
        except multihost.SetupError as e:
            raise UsageError(str(e)) from e
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
    if FLAGS.weights not in (None, "imagenet") and not weights_exist(
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


def resolved_flags(plan):
    """The training-relevant flags with defaults resolved (JSON values):
    what `model_dir/flags.json` records and a resume must match."""
    values = {name: FLAGS[name].value for name in TRAINING_FLAGS}
    values.update(
        image_size=plan.image_size, stochdepth_rate=plan.stochdepth_rate,
        drop_rate=plan.drop_rate, backend=plan.backend,
        randaugment=list(plan.randaugment) if plan.randaugment else None)
    return values
