"""Strategy resolution (the TPU decision included) and multi-worker
training: two processes on 127.0.0.1 end with the weights of one."""

import json
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from training import strategy as strategy_lib
from training_helpers import (REPO, env, finish, free_ports, make_folder,
                              model_weights, start_train,
                              tiny_flags, train_cmd, write_config)

TWO_WORKERS = json.dumps({"cluster": {"worker": ["localhost:1",
                                                 "localhost:2"]},
                          "task": {"type": "worker", "index": 0}})


@pytest.mark.parametrize("flag,tpu,tf_config,gpus,want", [
    ("auto", "local", "", 0, "tpu"),
    ("auto", "grpc://10.0.0.2:8470", "", 8, "tpu"),
    ("auto", None, TWO_WORKERS, 0, "multi_worker"),
    ("auto", None, "", 4, "mirrored"),
    ("auto", None, "", 1, "one_device"),
    ("auto", None, "", 0, "default"),
    ("tpu", None, "", 0, "tpu"),
    ("mirrored", None, TWO_WORKERS, 0, "mirrored"),
    ("multi_worker", None, "", 0, "multi_worker"),
])
def test_resolve_strategy_name(flag, tpu, tf_config, gpus, want):
    assert strategy_lib.resolve_strategy_name(flag, tpu, tf_config,
                                              gpus) == want


def test_resolve_rejects_unknown_names_and_bad_tf_config():
    with pytest.raises(ValueError, match="--strategy"):
        strategy_lib.resolve_strategy_name("horovod")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        strategy_lib.resolve_strategy_name("auto", None, "{not json", 0)


def test_tpu_connects_only_for_remote_tpus():
    assert not strategy_lib.tpu_needs_connect("local")
    assert strategy_lib.tpu_needs_connect("my-tpu")
    assert strategy_lib.tpu_needs_connect("grpc://10.0.0.2:8470")


def test_default_strategy_is_chief():
    s = strategy_lib.make_strategy("default")
    assert s.num_replicas_in_sync == 1 and strategy_lib.is_chief(s)
    assert isinstance(strategy_lib.make_strategy("one_device"),
                      tf.distribute.OneDeviceStrategy)


def _final(model_dir, name="model.keras"):
    return model_weights(str(model_dir / name))


def test_two_workers_equal_one_process(tmp_path):
    """MultiWorkerMirroredStrategy, TF_CONFIG, 2 workers x 1 replica,
    global batch 8, 3 steps: both workers end with the same weights, equal
    to one process training on the same global batches."""
    root = make_folder(tmp_path / "imgs", classes=3, train=8, test=4)
    config = write_config(tmp_path / "tiny.json")
    # No random augmentation that depends on the batch split (MixUp/CutMix
    # pair examples within a replica's batch); the Inception crop and flip
    # are seeded per example and still on.
    common = dict(train_steps=3, randaugment="none", mixup_alpha=0,
                  cutmix="false", drop_rate=0, stochdepth_rate=0,
                  ema_decay=0, batch_size=8)
    # The one-process run goes side by side with the two workers.
    single = start_train(tiny_flags(config, f"folder:{root}", tmp_path / "one",
                                    strategy="default", **common),
                         tmp_path, "one")
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        tf_config = json.dumps({"cluster": cluster,
                                "task": {"type": "worker", "index": i}})
        args = tiny_flags(config, f"folder:{root}", tmp_path / "mw",
                          strategy="multi_worker", **common)
        procs.append(subprocess.Popen(
            train_cmd(args), cwd=REPO, env=env(TF_CONFIG=tf_config),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=400)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    assert "multi_worker strategy with 2 replica(s)" in outs[0]

    single = finish(single)
    assert single.returncode == 0, single.stderr[-3000:]

    w0 = _final(tmp_path / "mw")
    w1 = _final(tmp_path / "mw", "workers/worker_1.keras")
    one = _final(tmp_path / "one")
    assert w0.keys() == w1.keys() == one.keys()
    for k in w0:
        np.testing.assert_array_equal(w0[k], w1[k], err_msg=k)
        np.testing.assert_allclose(w0[k], one[k], rtol=1e-4, atol=1e-5,
                                   err_msg=k)
    # Training really moved the weights: the gains start at 1, the biases
    # and skip gains at 0 (NFNet's initialisation), and most have left.
    moved = sum(not np.array_equal(
        one[k], np.ones_like(one[k]) if k.endswith("/gain")
        else np.zeros_like(one[k])) for k in one
        if k.endswith(("/gain", "/bias", "/skip_gain")))
    assert moved > 10
    with open(tmp_path / "mw" / "metrics.json") as f:
        assert json.load(f)["steps"] == 3
