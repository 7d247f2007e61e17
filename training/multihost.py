"""Multi-process (multi-host) training on JAX: one process per host.

`python -m training.train --backend=jax` runs the same command on every
host (the hosts of a TPU pod slice, or the nodes of a GPU cluster):

* `setup()` calls `jax.distributed.initialize` before JAX starts: with
  `--coordinator_address`, `--num_processes` and `--process_id` when given,
  else (`--jax_distributed`) with JAX's own cluster auto-detection (Cloud
  TPU, SLURM, Open MPI). A coordinator that cannot be reached (or processes
  that do not all join) within `--distributed_timeout` seconds stop the
  process with an error that says so, instead of XLA's abort. Then every
  process compares a hash of its resolved flags with the others' and all
  stop, naming the flags that differ, if they disagree.
* `MultiProcessDistribution` is what training uses in place of a
  `tf.distribute` strategy: one `keras.distribution.DataParallel` mesh over
  the devices of *every* process (ordered by process), variables replicated
  everywhere. Process `p` reads only its own shard of the data (tfds files
  by `ReadConfig(input_context)`; a class folder by global example
  position) and produces only its local part of each global batch: rows
  `[p * B / P, (p + 1) * B / P)` of global batch `B`, the rows its devices
  hold. Keras' JAX trainer assembles the global batch from the local parts
  (`jax.make_array_from_process_local_data`); gradients, AGC and the EMA are
  computed on the global batch exactly as on one process. Process 0 is the
  chief (step backup, logs, `metrics.json`, `model.keras`); every process
  restores the backup.
* What only process 0 does must not enter a cross-process collective (the
  other processes would never join it: a hang). Creating a Keras variable
  while a multi-process distribution is set is one: Keras places it with
  `jax.device_put` on the global mesh, which checks with every process
  that the value is the same (`multihost_utils.assert_equal`, an
  all-gather). Keras' saving creates throwaway objects with variables
  (`saving_lib.get_attr_skipset` builds a dummy optimizer), so process 0
  writes the step backup and `model.keras` with no distribution set
  (`MultiProcessDistribution.writing()`): those objects are then local, and
  the model's own variables (replicated on every process) are only read.

No heavy imports at module level: `training.flags` imports this before
keras picks its backend.
"""

import contextlib
import hashlib
import os
import socket
import sys
import threading
import time

from absl import flags

# Flags that may differ between processes (who I am, how long I wait).
PER_PROCESS_FLAGS = ("process_id", "coordinator_address",
                     "distributed_timeout")


class SetupError(ValueError):
    """A multi-process set-up that cannot work, with what to do."""


def define_flags():
    """The multi-process flags of `training.train` (JAX backend)."""
    flags.DEFINE_bool(
        "jax_distributed", False, "JAX backend on several hosts: call "
        "jax.distributed.initialize() with JAX's auto-detection (Cloud TPU "
        "pod slices, SLURM, Open MPI). Implied by --coordinator_address.")
    flags.DEFINE_string(
        "coordinator_address", None, "JAX multi-process: host:port of "
        "process 0 (the coordinator), the same on every process.")
    flags.DEFINE_integer("num_processes", None, "JAX multi-process: number "
                         "of processes (one per host).")
    flags.DEFINE_integer("process_id", None, "JAX multi-process: this "
                         "process's index, 0 .. num_processes - 1.")
    flags.DEFINE_integer("distributed_timeout", 300, "JAX multi-process: "
                         "seconds to wait for the coordinator and for all "
                         "processes to join before stopping with an error.")


def wanted(values):
    """True when the flags ask for jax.distributed.initialize."""
    return bool(values.jax_distributed or values.coordinator_address
                or values.num_processes is not None
                or values.process_id is not None)


def check_flag_values(values):
    """The flag checks that need no devices. Raises SetupError."""
    n, pid = values.num_processes, values.process_id
    if n is not None and n < 1:
        raise SetupError(f"--num_processes={n}: must be >= 1.")
    if pid is not None and (pid < 0 or (n is not None and pid >= n)):
        raise SetupError(f"--process_id={pid}: must be in 0 .. "
                         f"{'num_processes - 1' if n is None else n - 1}.")
    if values.distributed_timeout < 1:
        raise SetupError(f"--distributed_timeout="
                         f"{values.distributed_timeout}: must be >= 1 s.")
    addr = values.coordinator_address
    if addr and not _split_address(addr):
        raise SetupError(f"--coordinator_address={addr!r}: expected "
                         "host:port, e.g. 10.0.0.1:1234.")
    if addr and (n is None or pid is None):
        raise SetupError("--coordinator_address needs --num_processes and "
                         "--process_id (or leave all three out on a Cloud "
                         "TPU pod / SLURM and pass --jax_distributed).")


def _split_address(addr):
    host, sep, port = str(addr).rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _wait_for_port(addr, timeout):
    """True once a TCP connection to `addr` succeeds within `timeout` s."""
    host, port = _split_address(addr)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)


def _initialize(values):
    """jax.distributed.initialize, bounded by --distributed_timeout.

    XLA aborts the process (no Python exception) when the coordinator does
    not answer, so a process other than 0 first checks that the coordinator
    accepts connections, and a watchdog turns a stalled join into a clear
    error and exit code 2."""
    import jax  # pylint: disable=import-outside-toplevel
    timeout = values.distributed_timeout
    addr, n, pid = (values.coordinator_address, values.num_processes,
                    values.process_id)
    where = (f"process {pid} of {n}, coordinator {addr}" if addr
             else "auto-detected cluster")
    if addr and pid:
        if not _wait_for_port(addr, timeout):
            raise SetupError(
                f"--coordinator_address={addr}: the JAX coordinator (process "
                f"0) cannot be reached within --distributed_timeout={timeout}"
                f" s ({where}). Start process 0 with the same command and "
                "--process_id=0 on that host, and check the address and "
                "that the port is open.")
    done = threading.Event()

    def watchdog():
        if not done.wait(timeout):
            print(f"error: jax.distributed.initialize did not complete within"
                  f" --distributed_timeout={timeout} s ({where}): not all "
                  f"{n or ''} processes joined. Start the same command on "
                  "every host (each with its own --process_id), or raise "
                  "--distributed_timeout.", file=sys.stderr, flush=True)
            os._exit(2)  # pylint: disable=protected-access

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        jax.distributed.initialize(
            coordinator_address=addr, num_processes=n, process_id=pid,
            initialization_timeout=timeout + 30)  # the watchdog goes first
    except (ValueError, RuntimeError) as e:  # e.g. nothing auto-detected
        raise SetupError(f"jax.distributed.initialize ({where}): {e}") from e
    finally:
        done.set()


def _flag_hashes(values, names):
    """A 31-bit hash of `--name=value` for each name (resolved values)."""
    out = []
    for name in names:
        text = f"{name}={values[name].value!r}".encode()
        out.append(int.from_bytes(hashlib.sha256(text).digest()[:4], "big")
                   & 0x7FFFFFFF)
    return out


def check_same_flags(values, names=None):
    """Every process must run with the same resolved flags (and seeds).

    Gathers a hash of each flag from every process and raises SetupError on
    all processes, naming the flags that differ. `names`: the flags to
    compare (default: all but absl's own and PER_PROCESS_FLAGS)."""
    import jax  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    if jax.process_count() == 1:
        return
    if names is None:
        names = sorted(
            name for module, fl in values.flags_by_module_dict().items()
            if not module.startswith("absl.") for f in fl
            for name in [f.name] if name not in PER_PROCESS_FLAGS)
        names = sorted(set(names))
    hashes = _flag_hashes(values, names)
    digest = int.from_bytes(hashlib.sha256(
        repr(hashes).encode()).digest()[:4], "big") & 0x7FFFFFFF
    head = np.asarray(multihost_utils.process_allgather(
        np.array([len(names), digest], np.int32)))
    if len(set(head[:, 0].tolist())) > 1:
        raise SetupError(
            "the processes define different flags "
            f"({', '.join(map(str, head[:, 0].tolist()))} per process): run "
            "the same version of keras_nfnets on every host.")
    if len(set(head[:, 1].tolist())) == 1:
        return
    table = np.asarray(multihost_utils.process_allgather(
        np.array(hashes, np.int32)))
    differ = [name for k, name in enumerate(names)
              if len(set(table[:, k].tolist())) > 1]
    pid = jax.process_index()
    mine = ", ".join(f"--{name}={values[name].value}" for name in differ)
    groups = {}
    for p in range(table.shape[0]):
        groups.setdefault(tuple(table[p].tolist()), []).append(p)
    raise SetupError(
        f"the {table.shape[0]} processes disagree on "
        f"{', '.join('--' + d for d in differ)} (process groups with equal "
        f"flags: {sorted(groups.values())}; here, process {pid}: {mine}). "
        "Run the same command, with the same flags and --seed, on every "
        "host (only --process_id may differ).")


def process_count():
    import jax  # pylint: disable=import-outside-toplevel
    return jax.process_count()


def check_flags(values, backend="jax"):
    """The multi-process flags against the backend, with no devices
    (training.flags calls this with the other flag checks). Raises
    SetupError."""
    if backend != "jax":
        raise SetupError(
            f"--jax_distributed/--coordinator_address/--num_processes/"
            f"--process_id are for --backend=jax (here --backend={backend}"
            "; TensorFlow multi-worker training reads TF_CONFIG).")
    check_flag_values(values)


def setup(values, backend="jax"):
    """Initialises jax.distributed when asked to, and checks that all
    processes agree on the flags. Returns the number of processes. Call
    before anything else uses JAX."""
    check_flags(values, backend)
    if wanted(values):
        _initialize(values)
    import jax  # pylint: disable=import-outside-toplevel
    if jax.process_count() > 1:
        check_same_flags(values)
    return jax.process_count()


def process_input_context(num_processes, process_index, block):
    """A `tf.distribute.InputContext` for process `p` of `P`: one input
    pipeline per process, whose batch is the process's part of the global
    batch. `contiguous_block` (examples per process per step) makes the
    folder reader take the rows this process's devices hold (training.data)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    class ProcessInputContext(tf.distribute.InputContext):
        contiguous_block = block

    return ProcessInputContext(
        num_input_pipelines=num_processes, input_pipeline_id=process_index,
        num_replicas_in_sync=num_processes)


class MultiProcessDistribution:
    """JAX on several processes: `keras.distribution.DataParallel` over the
    devices of every process, each process feeding its part of each global
    batch. The members `training.train` and `training.evaluate` use:
    `num_replicas_in_sync` (global devices), `scope()`,
    `distribute_datasets_from_function`, `cluster_resolver` (process p is
    `worker` p; worker 0 is the chief).

    Args:
        global_batch_size: the training batch (`--batch_size`), to check it
            divides over the devices and to cut the training stream into
            per-process parts.
    """

    save_worker_copies = False  # one program: no per-worker model copies

    def __init__(self, global_batch_size):
        import jax  # pylint: disable=import-outside-toplevel
        import keras  # pylint: disable=import-outside-toplevel
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        self.backend = "jax"
        self.num_processes = jax.process_count()
        self.process_index = jax.process_index()
        devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
        per_process = [sum(d.process_index == p for d in devices)
                       for p in range(self.num_processes)]
        if len(set(per_process)) > 1:
            raise SetupError(
                f"the processes have different numbers of devices "
                f"({per_process}): use the same hardware (and "
                "XLA_FLAGS/CUDA_VISIBLE_DEVICES) on every host.")
        self.num_replicas_in_sync = len(devices)
        if global_batch_size % len(devices):
            n = len(devices)
            raise SetupError(
                f"--batch_size={global_batch_size} is not divisible by the {n}"
                f" devices of the {self.num_processes} processes "
                f"({per_process[0]} each): use a multiple of {n}, e.g. "
                f"{max(n, global_batch_size // n * n)}.")
        self.global_batch_size = global_batch_size
        self.distribution = keras.distribution.DataParallel(
            devices=[f"{d.platform}:{d.id}" for d in devices],
            auto_shard_dataset=False)  # each process reads its own shard
        keras.distribution.set_distribution(self.distribution)
        self.cluster_resolver = (
            tf.distribute.cluster_resolver.SimpleClusterResolver(
                tf.train.ClusterSpec({"worker": [
                    f"process-{p}:0" for p in range(self.num_processes)]}),
                task_type="worker", task_id=self.process_index))
        self.name = (f"jax DataParallel ({self.num_processes} processes, "
                     f"{len(devices)} devices)")

    def scope(self):
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def writing(self):
        """What process 0 alone writes (backup, `model.keras`) runs in this
        block: no distribution is set in it, so the objects Keras' saving
        creates are local to this process instead of a collective the
        other processes never enter (see the module docstring)."""
        import keras  # pylint: disable=import-outside-toplevel
        current = keras.distribution.distribution()
        keras.distribution.set_distribution(None)
        try:
            yield
        finally:
            keras.distribution.set_distribution(current)

    def step_backup(self, backup_dir, save_freq, write):
        """`training.checkpoint.StepBackup` whose writes (process 0) run in
        `writing()`; restoring (every process) is unchanged."""
        from .checkpoint import StepBackup  # pylint: disable=import-outside-toplevel
        distribution = self

        class ChiefWritesStepBackup(StepBackup):
            def save(self):
                if not self.write:
                    return
                with distribution.writing():
                    super().save()

        return ChiefWritesStepBackup(backup_dir, save_freq=save_freq,
                                     write=write)

    def input_context(self):
        return process_input_context(
            self.num_processes, self.process_index,
            self.global_batch_size // self.num_processes)

    def distribute_datasets_from_function(self, dataset_fn):
        """This process's dataset: batches of its local part (Keras'
        trainer assembles the global batch from every process's part)."""
        return dataset_fn(self.input_context())

    def __repr__(self):
        return (f"MultiProcessDistribution(process {self.process_index} of "
                f"{self.num_processes}, {self.num_replicas_in_sync} devices)")
