"""`python -m training.train --backend=jax` on two processes on 127.0.0.1
(JAX's CPU backend, gloo collectives, one CPU device per process), against
one process with two devices on the same global batches; a kill of both
processes and a restart from the step backup; and the set-ups that must
stop at once with a clear error.

Every process runs under a subprocess timeout and is SIGKILLed on expiry
(JAX's distributed runtime takes SIGTERM as a preemption notice)."""

import importlib.util
import json
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from training_helpers import (FAST_XLA, REPO, env, free_ports, make_folder,
                              model_weights, tiny_flags, train_cmd,
                              write_config)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                                reason="jax is not installed")

TIMEOUT = 1500  # per run: generous for 2 busy shared cores


@pytest.fixture(scope="module")
def _xla_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("xla")


@pytest.fixture(autouse=True)
def _compilation_cache(_xla_cache, monkeypatch):
    # Every run of this file compiles the same few programs (the same
    # flags and config): the later runs reuse them (JAX's persistent cache).
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(_xla_cache))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def _env(devices):
    return env(JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
               XLA_FLAGS=FAST_XLA + " --xla_force_host_platform_device_count="
               f"{devices}")


def _flags(tmp_path, root, name, **overrides):
    # MixUp/CutMix pair the examples of each process's part of the batch
    # (as DeepMind's per-device mixing): off, so that one process and two
    # see the same global batches. Dropout and stochastic depth (0.1, the
    # tiny config) stay on: each process feeds the rows its device holds,
    # so every example meets the same random masks on 1 and 2 processes.
    values = dict(backend="jax", train_steps=4, checkpoint_steps=2,
                  jit_compile="auto", mixup_alpha=0.0, cutmix=False)
    values.update(overrides)
    config = write_config(tmp_path / "c.json")
    return tiny_flags(config, f"folder:{root}", tmp_path / name, **values)


def _start(args, devices=1):
    return subprocess.Popen(train_cmd(args), cwd=REPO, env=_env(devices),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _two_processes(args, **extra):
    """Starts process 0 and 1 of a 2-process run on a fresh loopback port."""
    port = free_ports(1)[0]
    more = [f"--{k}={v}" for k, v in extra.items()]
    return [_start(args + [f"--coordinator_address=127.0.0.1:{port}",
                           "--num_processes=2", f"--process_id={p}",
                           "--distributed_timeout=120"] + more)
            for p in (0, 1)]


def _finish(procs, timeout=TIMEOUT):
    """(returncode, stdout, stderr) of each process; all are killed if one
    outlives `timeout`."""
    deadline = time.monotonic() + timeout
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(
                timeout=max(deadline - time.monotonic(), 1))
            outs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return outs


def _ok(outs):
    for rc, out, err in outs:
        assert rc == 0, (out[-2000:], err[-4000:])


def _files(run_dir, pattern):
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob(pattern))


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def _backup_step(run_dir):
    try:
        with open(run_dir / "backup" / "latest.json") as f:
            return json.load(f)["step"]
    except (OSError, ValueError):
        return None


def test_two_processes_train_as_one_process(tmp_path):
    root = make_folder(tmp_path / "imgs", classes=3, train=8, test=4)
    one = _start(_flags(tmp_path, root, "one"), devices=2)
    two = _two_processes(_flags(tmp_path, root, "two"))
    outs = _finish(two + [one])
    _ok(outs)
    (_, out0, _), (_, out1, _), (_, out_one, _) = outs
    for out in (out0, out1):
        assert ("jax DataParallel (2 processes, 2 devices) strategy with 2 "
                "replica(s); batch 8, 4 steps") in out, out
    assert "jax DataParallel strategy with 2 replica(s)" in out_one

    # One model, one backup, one set of logs and metrics: process 0's.
    run = tmp_path / "two"
    assert _files(run, "*.keras") == ["model.keras"]
    assert _files(run, "*.h5") == ["backup/latest.weights.h5",
                                   "model_raw.weights.h5"]  # EMA on
    assert _backup_step(run) == 4
    assert _files(run, "*.csv") == ["history.csv"]
    assert _files(run, "metrics.json") == ["metrics.json"]
    assert len(_files(run, "events.out.tfevents.*")) == len(
        _files(tmp_path / "one", "events.out.tfevents.*"))
    assert not (run / "workers").exists()
    with open(run / "metrics.json") as f:
        metrics = json.load(f)
    assert (metrics["backend"], metrics["replicas"], metrics["steps"]) == (
        "jax", 2, 4)
    assert metrics["eval_examples"] == 12  # every test image once
    with open(tmp_path / "one" / "metrics.json") as f:
        assert json.load(f)["top1"] == metrics["top1"]

    # The same global batches give the same final (EMA) weights. Both runs
    # use a 2-device mesh, so the programs are the same; 1e-5 leaves room
    # for the gloo all-reduce summing in another order than XLA's.
    diff = _max_diff(model_weights(str(run / "model.keras")),
                     model_weights(str(tmp_path / "one" / "model.keras")))
    print(f"max |two processes - one process| = {diff:.3g}")
    assert diff < 1e-5, diff
    # (A model trained under JAX loading under TensorFlow: test_train_jax.)


@pytest.mark.slow  # the training above, killed and restarted: 2 more runs
def test_two_processes_resume_after_a_kill(tmp_path):
    root = make_folder(tmp_path / "imgs", classes=3, train=8, test=4)
    # The uninterrupted reference (one process, two devices: the same
    # weights as two processes, test above), next to the killed run.
    one = _start(_flags(tmp_path, root, "one"), devices=2)
    # Kill both processes once the step-2 backup is written, restart both.
    killed = _two_processes(_flags(tmp_path, root, "resumed"))
    deadline = time.monotonic() + TIMEOUT
    try:
        while (_backup_step(tmp_path / "resumed") is None
               and time.monotonic() < deadline
               and all(p.poll() is None for p in killed)):
            time.sleep(0.05)
    finally:
        for p in killed:
            p.send_signal(signal.SIGKILL)
        for p in killed:
            p.communicate()
    step = _backup_step(tmp_path / "resumed")
    # backups: step 2 (--checkpoint_steps), step 3 (end of the 3-step epoch)
    assert step in (2, 3), step
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    outs = _finish(_two_processes(_flags(tmp_path, root, "resumed")) + [one])
    _ok(outs)
    for _, out, _ in outs[:2]:
        assert f"Resuming from step {step}/4." in out, out
    assert _files(tmp_path / "resumed", "*.keras") == ["model.keras"]
    assert _files(tmp_path / "resumed", "*.h5") == [
        "backup/latest.weights.h5", "model_raw.weights.h5"]  # EMA on
    diff = _max_diff(
        model_weights(str(tmp_path / "resumed" / "model.keras")),
        model_weights(str(tmp_path / "one" / "model.keras")))
    print(f"max |killed, resumed two processes - one process| = {diff:.3g}")
    assert diff < 1e-5, diff


def _errors(outs):
    return [(rc, err) for rc, _, err in outs]


def test_bad_setups_stop_at_once_with_a_clear_error(tmp_path):
    """Four bad set-ups, started side by side (each on its own port)."""
    root = make_folder(tmp_path / "imgs", classes=3, train=8, test=4)
    nobody_port, alone_port = free_ports(2)
    start = time.monotonic()
    # A coordinator nobody runs: process 1 gives up after the timeout.
    nobody = _start(_flags(tmp_path, root, "nobody") + [
        f"--coordinator_address=127.0.0.1:{nobody_port}", "--num_processes=2",
        "--process_id=1", "--distributed_timeout=3"])
    # Process 0 alone: the others never join.
    alone = _start(_flags(tmp_path, root, "alone") + [
        f"--coordinator_address=127.0.0.1:{alone_port}", "--num_processes=2",
        "--process_id=0", "--distributed_timeout=3"])
    # Processes that disagree on the seed: both stop, naming the flag.
    seeds = _two_seeds(_flags(tmp_path, root, "seeds"))
    # A global batch the 2 devices cannot split.
    odd = _two_processes(_flags(tmp_path, root, "odd", batch_size=3))
    outs = _finish([nobody, alone, *seeds, *odd])

    rc, out, err = outs[0]
    assert rc == 2, (out, err[-3000:])
    assert ("the JAX coordinator (process 0) cannot be reached within "
            "--distributed_timeout=3 s") in err
    rc, out, err = outs[1]
    assert rc == 2, (out, err[-3000:])
    assert "did not complete within --distributed_timeout=3 s" in err
    assert "not all 2 processes joined" in err
    assert time.monotonic() - start < 300

    for rc, err in _errors(outs[2:4]):
        assert rc == 2, err[-3000:]
        assert "the 2 processes disagree on --seed" in err, err[-3000:]
        assert "only --process_id may differ" in err
    for rc, err in _errors(outs[4:]):
        assert rc == 2, err[-3000:]
        assert ("--batch_size=3 is not divisible by the 2 devices of the 2 "
                "processes (1 each): use a multiple of 2") in err, err[-3000:]
    for name in ("nobody", "alone", "seeds", "odd"):
        assert not (tmp_path / name).exists()


def _two_seeds(args):
    port = free_ports(1)[0]
    base = [a for a in args if not a.startswith("--seed=")]
    return [_start(base + [f"--seed={p + 1}",
                           f"--coordinator_address=127.0.0.1:{port}",
                           "--num_processes=2", f"--process_id={p}",
                           "--distributed_timeout=120"]) for p in (0, 1)]


def _no_signal(outs):
    for rc, out, err in outs:
        assert rc is not None and rc >= 0, (rc, out[-1000:], err[-3000:])


def test_faulty_setups_stop_with_the_cause_named(tmp_path):
    """Issue 32, item 4: a coordinator port already in use (XLA crashed
    with SIGSEGV), two processes given --process_id=0 (one died with
    SIGABRT, or both waited without saying why) and processes with
    different device counts (a raw reshape ValueError): each stops before
    any work with exit code 2 and an error naming the cause."""
    root = make_folder(tmp_path / "imgs", classes=3, train=8, test=4)
    busy, dup = free_ports(2)
    start = time.monotonic()
    with socket.socket() as listener:  # another program holds the port
        listener.bind(("127.0.0.1", busy))
        listener.listen()
        taken = _start(_flags(tmp_path, root, "taken") + [
            f"--coordinator_address=127.0.0.1:{busy}", "--num_processes=2",
            "--process_id=0", "--distributed_timeout=3"])
        # (the first waits for the others long enough for the second,
        # started with it on busy cores, to find its claim on the port)
        twice = [_start(_flags(tmp_path, root, "twice") + [
            f"--coordinator_address=127.0.0.1:{dup}", "--num_processes=2",
            "--process_id=0", "--distributed_timeout=15"]) for _ in (0, 1)]
        port = free_ports(1)[0]
        devices = [_start(_flags(tmp_path, root, "devices") + [
            f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
            f"--process_id={p}", "--distributed_timeout=60"], devices=2 - p)
            for p in (0, 1)]
        outs = _finish([taken, *twice, *devices], timeout=300)
    print(f"the faulty set-ups took {time.monotonic() - start:.1f} s")
    _no_signal(outs)
    assert [rc for rc, _, _ in outs] == [2] * 5, _errors(outs)

    err = outs[0][2]
    assert (f"--coordinator_address=127.0.0.1:{busy}: port {busy} is "
            "already in use on this host") in err, err[-3000:]
    # The second process 0 is refused by name; the first gives up waiting.
    errs = sorted((err for _, _, err in outs[1:3]),
                  key=lambda e: "already runs a JAX coordinator" in e)
    assert f"already runs a JAX coordinator on port {dup}" in errs[1], errs
    assert "Two processes were given --process_id=0" in errs[1]
    assert "not all 2 processes joined" in errs[0], errs[0][-3000:]
    assert "every id in 0 .. --num_processes - 1 exactly once" in errs[0]
    for _, _, err in outs[3:]:
        assert ("the processes have different numbers of devices (process "
                "0: 2, process 1: 1)") in err, err[-3000:]
        assert "cannot reshape" not in err
    for name in ("taken", "twice", "devices"):
        assert not (tmp_path / name).exists()


# CI time: process 1 lost (the coordinator's PeerWatch) runs in `make
# test`; process 0 lost (XLA's abort on process 1 waits for PeerWatch) is
# the same training, killed the other way: `slow` (`make test-all`).
@pytest.mark.parametrize("victim", [
    1, pytest.param(0, marks=pytest.mark.slow)])
def test_a_lost_process_stops_the_other_naming_it(tmp_path, victim):
    """Issue 32, item 4: one process killed mid-training made the other die
    with `Fatal Python error: Aborted` (at once, or after 82 s). The
    survivor now exits with code 3 within --distributed_heartbeat_timeout
    (process 1 lost: the coordinator's PeerWatch) or at once (process 0,
    the coordinator, lost: XLA's abort waits for PeerWatch), naming the
    lost process and the intact backup, which a restart resumes from."""
    root = make_folder(tmp_path / "imgs", classes=3, train=8, test=4)
    run = tmp_path / "run"
    procs = _two_processes(_flags(tmp_path, root, "run"),
                           distributed_heartbeat_timeout=4)
    deadline = time.monotonic() + TIMEOUT
    while (_backup_step(run) is None and time.monotonic() < deadline
           and all(p.poll() is None for p in procs)):
        time.sleep(0.05)
    procs[victim].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    survivor = 1 - victim
    (rc, out, err), = _finish([procs[survivor]], timeout=120)
    took = time.monotonic() - killed
    procs[victim].communicate()
    print(f"process {survivor} stopped {took:.1f} s after the kill")
    assert rc == 3, (rc, out[-1000:], err[-3000:])
    step = _backup_step(run)
    assert step in (2, 3), step
    assert (f"error: process {victim}{' (the coordinator)' if victim == 0 else ''}"
            f" of 2 stopped or became unreachable") in err, err[-3000:]
    assert (f"the last backup, step {step} in {run / 'backup'}, is intact"
            ) in err, err[-3000:]
    assert "Fatal Python error" not in err
    assert took < 60, took
    assert not (run / "metrics.json").exists()
