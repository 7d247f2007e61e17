"""training.flags: every bad flag refused by name before any work (issue
14, items 6-9), the demo's values, and the Plan the checks return. In
process: parsing flags needs no process of its own (one subprocess run
checks the command line's exit status)."""

import pytest

from training import flags
from training import train
from training_helpers import (make_folder, run_in_process, run_train,
                              tiny_flags, write_config)


@pytest.fixture
def parsed():
    """Parses training.flags's flags in-process; restores them after."""
    def parse(*args):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["train", "--model_dir=/nonexistent/run", *args])
    yield parse
    flags.FLAGS.unparse_flags()


# ------------------------------------------------- values that make no sense

@pytest.mark.parametrize("flag", [
    "--train_steps=-5", "--train_steps=0", "--steps_per_epoch=-1",
    "--agc_clipping=-0.01", "--agc_clipping=nan", "--lr=-0.1", "--lr=0",
    "--lr=inf", "--ema_decay=1.5", "--ema_decay=1", "--eval_batch_size=-3",
    "--weight_decay=-1", "--momentum=1.2", "--label_smoothing=-0.1",
    "--mixup_alpha=-1", "--drop_rate=1", "--stochdepth_rate=-0.5",
    "--crop_area_min=0", "--checkpoint_steps=0", "--steps_per_execution=0",
    "--image_size=0", "--eval_crop_padding=-1", "--epochs=nan"])
def test_nonsense_values_are_refused_by_name(parsed, flag):
    parsed(flag)
    name = flag.split("=")[0]
    with pytest.raises(flags.UsageError, match=f"{name}=.*must be"):
        flags.check_flags()


def test_sensible_values_pass(parsed):
    parsed("--train_steps=3", "--agc_clipping=0", "--ema_decay=0",
           "--lr=0.1", "--eval_batch_size=8", "--drop_rate=0")
    flags.check_flags()


def test_old_names_still_import_from_training_train():
    assert train.check_flags is flags.check_flags
    assert train.FLAGS is flags.FLAGS
    assert train.UsageError is flags.UsageError
    for name in ("Plan", "DEMO_FLAGS", "apply_demo_defaults",
                 "TRAINING_FLAGS", "resolved_flags", "check_replicas",
                 "build_model", "compile_model", "load_finetune_weights",
                 "check_resume_flags", "write_resume_flags", "run", "main"):
        assert hasattr(train, name), name


def test_agc_refuses_nan_and_negative_clipping():
    import keras  # pylint: disable=import-outside-toplevel
    import keras_nfnets  # pylint: disable=import-outside-toplevel
    for clipping in (float("nan"), -0.01, float("inf")):
        with pytest.raises(ValueError, match="must be a finite number >= 0"):
            keras_nfnets.AGC(keras.optimizers.SGD(0.1), clipping=clipping)
    keras_nfnets.AGC(keras.optimizers.SGD(0.1), clipping=0)


# ------------------------------------------------------- the Plan

def test_plan_takes_the_variants_values_unless_given(parsed):
    parsed("--variant=F1")
    plan = flags.check_flags()
    assert (plan.variant_name, plan.image_size, plan.eval_image_size) == (
        "F1", 224, 320)
    assert plan.randaugment == (4, 10)  # F1's RA level '410'
    assert (plan.stochdepth_rate, plan.drop_rate) == (0.1, 0.3)
    assert plan.backend == "tensorflow"
    parsed("--variant=F1", "--image_size=64", "--randaugment=none",
           "--drop_rate=0", "--stochdepth_rate=0.05")
    plan = flags.check_flags()
    assert (plan.image_size, plan.randaugment) == (64, None)
    assert (plan.stochdepth_rate, plan.drop_rate) == (0.05, 0)
    values = flags.resolved_flags(plan)
    assert set(values) == set(flags.TRAINING_FLAGS)
    assert values["image_size"] == 64 and values["randaugment"] is None


def test_demo_values_fill_only_the_flags_not_given(parsed):
    parsed("--demo", "--lr=0.3")
    flags.apply_demo_defaults()
    assert flags.FLAGS.lr == 0.3  # given: kept
    assert flags.FLAGS.batch_size == flags.DEMO_FLAGS["batch_size"]
    assert flags.FLAGS.variant.endswith("nfnet_demo.json")
    plan = flags.check_flags()
    assert plan.image_size == 32


# ------------------------------------------- refused before any work

def test_negative_train_steps_writes_nothing(tmp_path, capsys):
    """--train_steps=-5 used to train 0 steps and write metrics.json, so the
    corrected rerun refused to train."""
    root = make_folder(tmp_path / "imgs", classes=2, train=2, test=1)
    out = run_in_process(tiny_flags(write_config(tmp_path / "c.json"),
                                    f"folder:{root}", tmp_path / "run",
                                    train_steps=-5), capsys)
    assert out.returncode == 2, out.stdout + out.stderr[-2000:]
    assert "--train_steps=-5: must be >= 1" in out.stderr
    assert not (tmp_path / "run").exists()


def _usage_error(tmp_path, capsys, *args):
    out = run_in_process([f"--model_dir={tmp_path}/run", *args], capsys)
    assert out.returncode == 2, out.stdout + out.stderr
    assert not (tmp_path / "run").exists(), "work started"
    return out.stderr.strip().splitlines()[-1]


def test_bad_inputs_each_have_their_own_message(tmp_path, capsys):
    messages = {
        "variant": _usage_error(tmp_path, capsys, "--variant=F9"),
        "imagenet": _usage_error(tmp_path, capsys, "--dataset=imagenet2012",
                                 f"--data_dir={tmp_path}/tfds"),
        "tpu": _usage_error(tmp_path, capsys, "--tpu=local"),
    }
    assert "Unknown NFNet variant 'F9'" in messages["variant"]
    assert "ILSVRC2012_img_train.tar" in messages["imagenet"]
    assert f"{tmp_path}/tfds/downloads/manual" in messages["imagenet"]
    assert "must be a gs:// bucket path" in messages["tpu"]
    assert len(set(messages.values())) == len(messages)


def test_command_line_exits_2_with_the_message_and_starts_no_work(tmp_path):
    """The one subprocess here: `python -m training.train`'s exit status
    and stderr for a bad flag."""
    out = run_train([f"--model_dir={tmp_path}/run", "--variant=F9"],
                    timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(
        "error: --variant='F9': Unknown NFNet variant 'F9'")
    assert not (tmp_path / "run").exists()


def test_tf_distribute_flags_rejected_on_jax(tmp_path, capsys):
    out = run_in_process([f"--model_dir={tmp_path}/run", "--backend=jax",
                          "--tpu=local"], capsys)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "jax[tpu]" in out.stderr
    out = run_in_process([f"--model_dir={tmp_path}/run", "--backend=mxnet"],
                         capsys)
    assert out.returncode == 2
    assert "--backend='mxnet': expected one of" in out.stderr
    assert not (tmp_path / "run").exists()


def test_multi_process_flags_are_checked_before_any_work(tmp_path, capsys):
    out = run_in_process([f"--model_dir={tmp_path}/run", "--backend=torch",
                          "--jax_distributed"], capsys)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "are for --backend=jax" in out.stderr
    out = run_in_process([f"--model_dir={tmp_path}/run", "--backend=jax",
                          "--coordinator_address=127.0.0.1:1",
                          "--num_processes=2", "--process_id=2"], capsys)
    assert out.returncode == 2
    assert "--process_id=2: must be in 0 .. 1." in out.stderr
    assert not (tmp_path / "run").exists()
