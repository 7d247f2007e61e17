"""The training program, top to bottom: flags -> checks -> this process ->
data -> strategy -> model -> resumable fit -> evaluation on the EMA
weights -> model.keras + metrics.json. Each step lives in its own module:

    flags        what the run is (a Plan), checked before any work
    run_dir      flags.json (a resume must match it), metrics.json
    data         the dataset source and the input pipeline
    strategy     tf.distribute / keras.distribution (multihost: JAX hosts)
    model_setup  the NFNet and DeepMind's optimizer recipe
    fitting      the step schedule and the resumable fit
    evaluate     top-1 / top-5 on the evaluation split

`python -m training.train` runs `main`; `run()` returns the metrics dict.
"""

import sys
import time

import keras
import numpy as np
import tensorflow as tf

from . import backends
from . import data
from . import evaluate
from . import fitting
from . import flags
from . import model_setup
from . import multihost
from . import run_dir
from . import strategy as strategy_lib
from .checkpoint import StepBackup
from .errors import UsageError
from .flags import FLAGS


def run(argv=None):
    """The program. Returns the metrics dict."""
    del argv
    if FLAGS.demo:
        flags.apply_demo_defaults()
    plan = flags.check_flags()  # raises UsageError before any work
    prepare_process(plan)
    model_dir = FLAGS.model_dir
    if run_dir.is_finished(model_dir):
        multihost.finished()  # (every process returns here)
        return run_dir.report_finished(model_dir)
    flag_values = flags.resolved_flags(plan)
    changed = run_dir.check_resume_flags(model_dir, flag_values,
                                         FLAGS.allow_changed_flags)
    if changed:
        print(f"--allow_changed_flags: resuming with changed {changed}.",
              flush=True)
    source = open_source()

    strategy, strategy_name = strategy_lib.choose(
        plan.backend, FLAGS.strategy, FLAGS.tpu, FLAGS.batch_size)
    eval_batch = FLAGS.eval_batch_size or FLAGS.batch_size
    strategy_lib.check_replicas(strategy, FLAGS.batch_size)
    strategy_lib.check_replicas(strategy, eval_batch, "--eval_batch_size")
    chief = strategy_lib.is_chief(strategy)
    seed_and_precision()
    schedule = fitting.Schedule.of(
        source.num_train, FLAGS.batch_size, FLAGS.epochs, FLAGS.train_steps,
        FLAGS.steps_per_epoch)
    print(f"{plan.variant_name} on {source.name}: {source.num_classes} "
          f"classes, {source.num_train} training images; {strategy_name} "
          f"strategy with {strategy.num_replicas_in_sync} replica(s); batch "
          f"{FLAGS.batch_size}, {schedule.total_steps} steps "
          f"({schedule.steps_per_epoch} per epoch), {plan.image_size}px "
          f"train / {plan.eval_image_size}px eval.", flush=True)

    with strategy.scope():
        model = model_setup.build_model(plan, source.num_classes, FLAGS.seed)
        model_setup.compile_model(model, schedule.steps_per_epoch,
                                  schedule.total_steps, FLAGS.jit_compile)
    strategy_lib.build_without_data_probe(model, strategy, (
        np.zeros((1, plan.image_size, plan.image_size, 3), "float32"),
        np.zeros((1, source.num_classes), "float32")))
    strategy_lib.fix_multi_worker_logs(model, strategy)

    tf.io.gfile.makedirs(model_dir)
    # Recorded on the first start; with --allow_changed_flags only once the
    # backup was restored under the new values (a refused resume keeps the
    # record of what the backup was written with).
    if chief and not changed:
        run_dir.write_resume_flags(model_dir, flag_values)
    # (several JAX processes: process 0 writes outside the global mesh)
    backup = getattr(strategy, "step_backup", StepBackup)(
        data.join(model_dir, "backup"), save_freq=FLAGS.checkpoint_steps,
        write=chief)
    callbacks = [backup] + (logs(model_dir) if chief else [])
    start = time.time()
    with fitting.naming_unreadable_images(source, source.train_split):
        fitting.fit(model, strategy, source, train_input(plan, source),
                    schedule, callbacks, backup, on_restored=(
                        (lambda: run_dir.write_resume_flags(model_dir,
                                                            flag_values))
                        if chief and changed else None), swap_ema=False)
    train_time = time.time() - start

    # The run's evaluation preprocessing travels with the model.
    model.preprocessing = eval_preprocessing(model, plan)
    # The model holds the raw (last-step) weights: kept beside model.keras
    # when there is an EMA, to be scored too (DeepMind evaluates both),
    # then the EMA goes in (as Keras does at fit's end). Saved before the
    # evaluation, so that a failing evaluation loses no training.
    if chief and fitting.uses_ema(model):
        with writing(strategy):
            model.save_weights(data.join(model_dir, evaluate.RAW_WEIGHTS))
    raw = fitting.swap_in_ema(model)
    if chief:
        with writing(strategy):
            model.save(data.join(model_dir, "model.keras"))
    with fitting.naming_unreadable_images(source, source.eval_split):
        score = evaluate.scorer(  # traced once for EMA and raw weights
            model, strategy, source, eval_batch, plan.eval_image_size,
            split=source.eval_split, preprocessing=model.preprocessing)
        result = score()
        raw_result = None
        if raw is not None:
            ema = fitting.swap_weights(model, raw)
            raw_result = score()
            fitting.swap_weights(model, ema)
    metrics = {
        "top1": result["top1"], "top5": result["top5"],
        "eval_examples": result["examples"], "split": source.eval_split,
        "eval_image_size": plan.eval_image_size,
        "eval_crop_padding": FLAGS.eval_crop_padding,
        "ema": raw is not None, "steps": fitting.current_step(model),
        "eval_preprocessing": model.preprocessing.mode,
        "train_seconds": round(train_time, 1), "variant": plan.variant_name,
        "dataset": source.name, "class_names": list(source.class_names),
        "backend": plan.backend, "replicas": strategy.num_replicas_in_sync}
    if raw_result is not None:
        metrics.update(raw_top1=raw_result["top1"],
                       raw_top5=raw_result["top5"])
    if chief:
        run_dir.write_metrics(model_dir, metrics)
    elif getattr(strategy, "save_worker_copies", True):
        save_worker_copy(model, strategy, model_dir)
    run_dir.report(metrics, model_dir)
    multihost.finished()  # several JAX processes: none is lost from here
    return metrics


def main(argv):
    """The command line: a UsageError is one line on stderr and exit 2."""
    try:
        run(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        multihost.stopping(2)  # several JAX processes: the others hear it
        sys.exit(2)


# ------------------------------------------------------------- the steps

def prepare_process(plan):
    """This process before any device work: the backend asked for is the
    one loaded, the lean allocator if asked, and jax.distributed on several
    JAX processes (before JAX starts)."""
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
        try:
            multihost.setup(FLAGS, plan.backend)
        except multihost.SetupError as e:
            raise UsageError(str(e)) from e


def open_source():
    """The dataset of --dataset, less its unreadable images with
    --skip_unreadable_images (their count and first names printed)."""
    try:
        source = data.get_source(FLAGS.dataset, FLAGS.data_dir,
                                 FLAGS.train_split, FLAGS.eval_split)
        skipped = (data.drop_unreadable(source)
                   if FLAGS.skip_unreadable_images else None)
    except data.DatasetError as e:
        raise UsageError(str(e)) from e
    if skipped is not None:
        print(f"--skip_unreadable_images: skipped {len(skipped)} unreadable "
              f"image(s){': ' + ', '.join(skipped[:10]) if skipped else ''}"
              f"{' ...' if len(skipped) > 10 else ''}.", flush=True)
    return source


def seed_and_precision():
    """--deterministic_ops, --seed and --mixed_precision, before the model
    is built."""
    if FLAGS.deterministic_ops:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(FLAGS.seed)
    if FLAGS.mixed_precision != "none":
        keras.mixed_precision.set_global_policy(
            "mixed_" + FLAGS.mixed_precision)


def train_input(plan, source):
    """The training input pipeline's settings (from step 0)."""
    return data.TrainInput(
        global_batch_size=FLAGS.batch_size, image_size=plan.image_size,
        num_classes=source.num_classes, seed=FLAGS.seed,
        randaugment=plan.randaugment, mixup_alpha=FLAGS.mixup_alpha,
        cutmix=FLAGS.cutmix, crop_area_min=FLAGS.crop_area_min)


def logs(model_dir):
    """The chief's TensorBoard logs and history.csv."""
    return [keras.callbacks.TensorBoard(data.join(model_dir, "logs"),
                                        update_freq=100),
            keras.callbacks.CSVLogger(data.join(model_dir, "history.csv"),
                                      append=True)]


def writing(strategy):
    """The block in which the chief alone writes the model: on several JAX
    processes outside the global mesh (training.multihost), else as is."""
    import contextlib  # pylint: disable=import-outside-toplevel
    block = getattr(strategy, "writing", None)
    return block() if block else contextlib.nullcontext()


def eval_preprocessing(model, plan):
    """The model's own evaluation preprocessing (its family's, attached by
    the constructor) at the run's `--eval_image_size`, with
    `--eval_crop_padding` in DeepMind's modes."""
    # pylint: disable-next=import-outside-toplevel
    from keras_nfnets.preprocessing import (NFNetImagePreprocessing,
                                            default_preprocessing)
    layer = model.preprocessing
    if layer is None:
        layer = default_preprocessing(plan.config)
    config = layer.get_config()
    config.pop("name", None)
    config["size"] = plan.eval_image_size
    if config["mode"] != "center":
        config["crop_padding"] = FLAGS.eval_crop_padding
    return NFNetImagePreprocessing.from_config(config)


def save_worker_copy(model, strategy, model_dir):
    """A non-chief tf.distribute worker's copy of the model, to check that
    the replicas agree."""
    tf.io.gfile.makedirs(data.join(model_dir, "workers"))
    model.save(data.join(model_dir, "workers", strategy_lib.task_name(
        strategy) + ".keras"))
