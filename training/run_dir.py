"""What a run keeps in `--model_dir` besides its step backup: the training
flags it was started with (`flags.json`, which a resume must match), its
metrics (`metrics.json`, written last: a run that has it is finished) and
the report printed at the end.

    values = {"lr": 0.1, "batch_size": 4096}
    changed = run_dir.check_resume_flags("/tmp/run", values)  # [] at first
    run_dir.write_resume_flags("/tmp/run", values)
"""

import json

import tensorflow as tf

from .data import join
from .errors import UsageError

FLAGS_FILE = "flags.json"
METRICS_FILE = "metrics.json"


def is_finished(model_dir):
    """Whether `model_dir` holds a finished run (its metrics.json)."""
    return tf.io.gfile.exists(join(model_dir, METRICS_FILE))


def read_metrics(model_dir):
    with tf.io.gfile.GFile(join(model_dir, METRICS_FILE)) as f:
        return json.load(f)


def write_metrics(model_dir, metrics):
    with tf.io.gfile.GFile(join(model_dir, METRICS_FILE), "w") as f:
        json.dump(metrics, f, indent=1)


def check_resume_flags(model_dir, values, allow_changed=False):
    """Refuses to resume `model_dir` with training flags that differ from
    those it was started with (unless `allow_changed`, the flag
    --allow_changed_flags). Returns the names of the flags that changed."""
    path = join(model_dir, FLAGS_FILE)
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        stored = json.load(f)
    changed = sorted(k for k in values if k in stored and stored[k] != values[k])
    if changed and not allow_changed:
        listed = ", ".join(f"--{k}={stored[k]!r} -> {values[k]!r}"
                           for k in changed)
        raise UsageError(
            f"{model_dir} holds a run started with other training flags "
            f"({path}): {listed}. Resuming would silently mix two "
            "configurations. Use the original values, a new --model_dir, or "
            "--allow_changed_flags to resume with the new values anyway.")
    return changed


def write_resume_flags(model_dir, values):
    """Records the training flags of `model_dir`'s run (atomically)."""
    path = join(model_dir, FLAGS_FILE)
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        json.dump(values, f, indent=1, sort_keys=True)
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def report(metrics, model_dir=None):
    """Prints the final accuracy line (and where the model went)."""
    print(f"top-1 accuracy: {100 * metrics['top1']:.1f}%  (top-5 "
          f"{100 * metrics['top5']:.1f}%, {metrics['eval_examples']} "
          f"{metrics['split']} images, {metrics['eval_image_size']}px"
          f"{', EMA weights' if metrics.get('ema') else ''})", flush=True)
    if metrics.get("raw_top1") is not None:  # DeepMind scores both
        print(f"top-1 accuracy: {100 * metrics['raw_top1']:.1f}%  (top-5 "
              f"{100 * metrics['raw_top5']:.1f}%, {metrics['eval_examples']} "
              f"{metrics['split']} images, {metrics['eval_image_size']}px, "
              "raw weights)", flush=True)
    if model_dir:
        print(f"model: {model_dir}/model.keras; metrics: "
              f"{model_dir}/metrics.json", flush=True)


def report_finished(model_dir):
    """Says that `model_dir` holds a finished run, reports its metrics and
    returns them (nothing is trained again)."""
    metrics = read_metrics(model_dir)
    print(f"{model_dir} holds a finished run (metrics.json); not "
          "training again. Use a new --model_dir to train again.")
    report(metrics)
    return metrics
