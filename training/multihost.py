"""Multi-process (multi-host) training on JAX: one process per host.

`python -m training.train --backend=jax` runs the same command on every
host (the hosts of a TPU pod slice, or the nodes of a GPU cluster):

* `setup()` calls `jax.distributed.initialize` before JAX starts: with
  `--coordinator_address`, `--num_processes` and `--process_id` when given,
  else (`--jax_distributed`) with JAX's own cluster auto-detection (Cloud
  TPU, SLURM, Open MPI). A coordinator that cannot be reached (or processes
  that do not all join) within `--distributed_timeout` seconds stop the
  process with an error that says so, instead of XLA's abort. Process 0
  first checks that the coordinator's port is free on its host (XLA
  crashes with SIGSEGV when it is not) and holds a lock file named by the
  port, so that a second `--process_id=0` on the same host is refused by
  name. Then every process compares the device counts of all processes
  (known to each from the distributed runtime: no collective) and a hash
  of its resolved flags with the others', and all stop, naming the flags
  or counts that differ, if they disagree.
* A process that dies or hangs mid-run (killed, out of memory, a lost
  host) is noticed by `PeerWatch` (a counter each process bumps every
  second in the coordinator's key-value store): within
  `--distributed_heartbeat_timeout` seconds (at once for a process that
  exits on an error) every other process exits with code 3 and an error
  naming the lost process and the step of the last backup (intact: written
  atomically by process 0), instead of XLA's `Fatal Python error:
  Aborted` (XLA's own heartbeat is set to notice later). Restart every
  process with the same command to resume from it.
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
                     "distributed_timeout", "distributed_heartbeat_timeout")

#: Exit code of a process that stops because another process was lost.
LOST_PROCESS_EXIT_CODE = 3


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
    flags.DEFINE_integer(
        "distributed_heartbeat_timeout", 30, "JAX multi-process: seconds "
        "without a heartbeat after which a process counts as lost; the "
        "others then stop with an error naming it (exit code 3) and the "
        "run resumes from its last backup when started again.")


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
    if values.distributed_heartbeat_timeout < 2:
        raise SetupError(f"--distributed_heartbeat_timeout="
                         f"{values.distributed_heartbeat_timeout}: must be "
                         ">= 2 s.")
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


# Held for the life of process 0: the lock file of its coordinator port.
_PORT_LOCK = []


def _lock_path(port):
    import tempfile  # pylint: disable=import-outside-toplevel
    return os.path.join(tempfile.gettempdir(),
                        f"keras_nfnets-jax-coordinator-{port}.lock")


def _claim_coordinator_port(addr):
    """Process 0, before XLA starts the coordinator on `addr`'s port: the
    port must be free on this host (XLA crashes with SIGSEGV when it cannot
    listen) and not claimed by another process 0 here (a second
    `--process_id=0` would start a second coordinator on the same port:
    XLA listens with SO_REUSEPORT, so nothing else would notice). The
    claim is a lock file held until this process ends."""
    import fcntl  # pylint: disable=import-outside-toplevel
    _, port = _split_address(addr)
    path = _lock_path(port)
    handle = open(path, "a+")  # pylint: disable=consider-using-with
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        other = handle.read().strip() or "?"
        handle.close()
        raise SetupError(
            f"--process_id=0: another process on this host (pid {other}) "
            f"already runs a JAX coordinator on port {port} (lock {path}). "
            "Two processes were given --process_id=0, or another run uses "
            f"--coordinator_address port {port}: give each process its own "
            "--process_id in 0 .. --num_processes - 1, or pick another "
            "port.") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    _PORT_LOCK.append(handle)
    problem = _port_in_use(port)
    if problem:
        raise SetupError(
            f"--coordinator_address={addr}: port {port} is already in use on"
            f" this host ({problem}), so process 0 cannot run the JAX "
            "coordinator there. Stop what listens on it or pick a free port "
            "(the same --coordinator_address on every process).")


def _port_in_use(port):
    """Why `port` cannot be listened on, as XLA's coordinator listens (all
    addresses, SO_REUSEADDR), or None when it can."""
    import errno  # pylint: disable=import-outside-toplevel
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 on this host
            continue
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            try:
                sock.bind((host, port))
                sock.listen(1)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    return f"another program listens on it: {e.strerror}"
                if family == socket.AF_INET6:
                    continue  # e.g. IPv6 disabled: try IPv4
                return f"{e.strerror}"
            return None
    return None


def _backup_note(values):
    """What a restart resumes from: the last backup of --model_dir."""
    model_dir = getattr(values, "model_dir", None)
    if not model_dir:
        return "no --model_dir backup"
    backup_dir = os.path.join(str(model_dir), "backup")
    if "://" not in backup_dir and not os.path.exists(
            os.path.join(backup_dir, "latest.weights.h5")):
        step = None  # (no need to load TensorFlow to know)
    else:
        step = _backup_step(backup_dir)
    if step is None:
        return (f"no backup was written yet in {backup_dir}: a restart starts"
                " from step 0")
    if isinstance(step, Exception):
        return (f"the backup in {backup_dir} could not be read ({step}); a "
                "restart starts from it if it is readable, else from step 0")
    return (f"the last backup, step {step} in {backup_dir}, is intact "
            "(written atomically by process 0): start the same command on "
            f"every process again to resume from step {step}")


def _backup_step(backup_dir):
    """The step of the backup in `backup_dir`, None, or the exception."""
    try:
        from .checkpoint import StepBackup  # pylint: disable=import-outside-toplevel
        return StepBackup(backup_dir).saved_step()
    except Exception as e:  # pylint: disable=broad-except
        return e


def lost_process_message(lost, why, values, me, num_processes):
    """The error a process prints when processes `lost` stopped."""
    who = ", ".join(f"process {p}" + (" (the coordinator)" if p == 0 else "")
                    for p in lost)
    return (f"error: {who} of {num_processes} stopped or became unreachable "
            f"({why}; --distributed_heartbeat_timeout="
            f"{values.distributed_heartbeat_timeout}; here process {me}),"
            f" so this process stops too: {_backup_note(values)}.")


def _client():
    """jax's distributed runtime client (its key-value store): jax keeps it
    in the private `jax._src.distributed.global_state.client`, checked here
    with the installed jax version in the error."""
    import jax  # pylint: disable=import-outside-toplevel
    from jax._src import distributed as jax_distributed  # pylint: disable=import-outside-toplevel
    client = getattr(getattr(jax_distributed, "global_state", None),
                     "client", None)
    if client is None or not all(
            hasattr(client, m) for m in ("key_value_set",
                                          "key_value_try_get")):
        raise SetupError(
            f"jax {jax.__version__}: jax._src.distributed.global_state."
            "client (key_value_set, key_value_try_get) is not there, which "
            "the training program uses to notice a lost process (known to "
            "work: jax 0.10). Use that jax version, or report the installed"
            " one.")
    return client


_ALIVE = "keras_nfnets/alive/{}"
_WATCH = []  # this process's PeerWatch
_EXITING = []  # [exit code] once this process stops on its own error


class PeerWatch(threading.Thread):
    """Every process counts up its own key in the coordinator's key-value
    store each second and watches the others' keys: a process whose count
    stands still for `timeout` s (killed, hung, a lost host), or a
    coordinator that no longer answers for that long, stops this process
    with exit code 3 and an error naming it and the last backup. XLA's own
    heartbeat (which aborts the interpreter) is set to notice later. A
    process that ends its run sets its key to "done" (`finished()`); one
    that exits on an error, to "exiting"."""

    def __init__(self, client, me, num_processes, timeout, values):
        super().__init__(daemon=True, name="keras_nfnets-peer-watch")
        self.client, self.me, self.n = client, me, num_processes
        self.timeout, self.values = timeout, values
        self.interval = min(0.5, timeout / 4)
        self.stopped = threading.Event()
        self.count = 0

    def beat(self, value=None):
        self.count += 1
        self.client.key_value_set(_ALIVE.format(self.me),
                                  value or str(self.count),
                                  allow_overwrite=True)

    def run(self):
        # The key-value calls block while the coordinator is gone (gRPC
        # retries): they run in a thread of their own, and this one judges
        # by the time of the last answer.
        self.answered = time.monotonic()
        self.seen = {}
        self.problem = "no answer"
        threading.Thread(target=self._poll, daemon=True,
                         name="keras_nfnets-peer-poll").start()
        peers = [p for p in range(self.n) if p != self.me]
        last = {p: (None, time.monotonic()) for p in peers}
        while not self.stopped.wait(0.25):
            now = time.monotonic()
            # XLA aborts at once when the coordinator goes away; that abort
            # waits ABORT_GRACE s (`_delay_aborts`) for this.
            if now - self.answered >= min(2.0, self.timeout):
                self.stop_process([0], "the coordinator (process 0) does not"
                                  f" answer: {self.problem}")
            for p, value in dict(self.seen).items():
                if value != last[p][0]:
                    last[p] = (value, now)
            # A process that exits on an error counts once it has been
            # exiting for a moment: the same error on this process (flags
            # every process refuses) brings this one to its exit first.
            # (A process that stops on its own error keeps its exit code.)
            exiting = [p for p, (v, t) in last.items()
                       if v == "exiting" and now - t >= 1.5
                       and not _EXITING]
            lost = sorted(set(exiting) | {
                p for p, (v, t) in last.items()
                if v != "done" and now - t > self.timeout})
            if lost and not self.stopped.is_set():
                self.stop_process(lost, (
                    f"process(es) {exiting} exited with an error (see their "
                    "output)" if exiting else
                    f"no sign of life for {self.timeout} seconds"))

    def _poll(self):
        peers = [p for p in range(self.n) if p != self.me]
        while not self.stopped.wait(self.interval):
            try:
                self.beat()
                self.seen = {
                    p: self.client.key_value_try_get(_ALIVE.format(p))
                    for p in peers}
                self.answered = time.monotonic()
            except Exception as e:  # pylint: disable=broad-except
                self.problem = " ".join(str(e).split())[:300]

    def stop_process(self, lost, why):
        if _EXITING:  # this process stops on its own error: its exit code
            os._exit(_EXITING[0])  # pylint: disable=protected-access
        print(lost_process_message(lost, why, self.values, self.me, self.n),
              file=sys.stderr, flush=True)
        os._exit(LOST_PROCESS_EXIT_CODE)  # pylint: disable=protected-access


#: Seconds an abort of the interpreter waits (see `_delay_aborts`): the
#: signal number of SIGABRT, handed to sleep() as its argument.
ABORT_GRACE = 6


def _delay_aborts():
    """XLA aborts the interpreter (LOG(FATAL)) the moment its connection to
    the coordinator breaks: before `PeerWatch` can say which process was
    lost and where the backup is. SIGABRT's handler becomes libc's
    `sleep` (async-signal-safe; it is called with the signal number, so the
    aborting thread sleeps ABORT_GRACE s, then the abort goes on as
    before): PeerWatch ends the process with its error in that time, and
    an abort with every process alive still ends the process, late by
    ABORT_GRACE s. Linux/glibc only; elsewhere nothing changes."""
    import ctypes  # pylint: disable=import-outside-toplevel
    import signal  # pylint: disable=import-outside-toplevel
    if not sys.platform.startswith("linux") or signal.SIGABRT != ABORT_GRACE:
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.signal.restype = ctypes.c_void_p
        libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
        sleep = ctypes.cast(libc.sleep, ctypes.c_void_p).value
        return libc.signal(signal.SIGABRT, sleep) != ctypes.c_void_p(-1).value
    except (OSError, AttributeError):
        return False


def _start_watch(values):
    import atexit  # pylint: disable=import-outside-toplevel
    import jax  # pylint: disable=import-outside-toplevel
    watch = PeerWatch(_client(), jax.process_index(), jax.process_count(),
                      values.distributed_heartbeat_timeout, values)
    watch.beat()  # every key exists before the first check (flags check)
    _WATCH.append(watch)
    _delay_aborts()
    atexit.register(_exiting)  # runs before jax's shutdown (registered
    watch.start()              # earlier): the others stop at once


def _exiting():
    """At interpreter exit without `finished()`: the others stop now
    (naming this process) instead of after the timeout. (A coordinator
    that is gone would block the call: it gets 1 s.)"""
    def tell(watch):
        try:
            watch.beat("exiting")
        except Exception:  # pylint: disable=broad-except
            pass
    for watch in _WATCH:
        if not watch.stopped.is_set():
            teller = threading.Thread(target=tell, args=(watch,), daemon=True)
            teller.start()
            teller.join(1.0)


def stopping(code):
    """This process stops on an error of its own (`training.train`'s
    UsageError, exit code `code`): the others hear of it (they stop,
    naming this process, unless they stop on the same error), and this
    process keeps `code` whatever it hears from them."""
    if _WATCH and not _EXITING:
        _EXITING.append(code)
        _exiting()


def finished():
    """The run ended on this process: the others no longer watch it, and
    it no longer watches them (they end too, and process 0's coordinator
    goes away)."""
    for watch in _WATCH:
        watch.stopped.set()
        try:
            watch.beat("done")
        except Exception:  # pylint: disable=broad-except
            pass


def _initialize(values):
    """jax.distributed.initialize, bounded by --distributed_timeout.

    XLA aborts the process (no Python exception) when the coordinator does
    not answer, so a process other than 0 first checks that the coordinator
    accepts connections, process 0 that its port is free, and a watchdog
    turns a stalled join into a clear error and exit code 2. A process lost
    later (no heartbeat within --distributed_heartbeat_timeout) makes the
    others exit with code 3 and an error naming it."""
    import jax  # pylint: disable=import-outside-toplevel
    timeout = values.distributed_timeout
    addr, n, pid = (values.coordinator_address, values.num_processes,
                    values.process_id)
    where = (f"process {pid} of {n}, coordinator {addr}" if addr
             else "auto-detected cluster")
    if addr and pid == 0:
        _claim_coordinator_port(addr)
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
                  "every host, each with its own --process_id (every id in "
                  "0 .. --num_processes - 1 exactly once), or raise "
                  "--distributed_timeout.", file=sys.stderr, flush=True)
            os._exit(2)  # pylint: disable=protected-access

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        jax.distributed.initialize(
            coordinator_address=addr, num_processes=n, process_id=pid,
            initialization_timeout=timeout + 30,  # the watchdog first
            # XLA aborts when it notices a lost process: PeerWatch first.
            heartbeat_timeout_seconds=(
                2 * values.distributed_heartbeat_timeout + 30))
    except (ValueError, RuntimeError) as e:  # e.g. nothing auto-detected
        raise SetupError(f"jax.distributed.initialize ({where}): {e}") from e
    finally:
        done.set()


def check_device_counts():
    """Every process must have as many devices as the others: the mesh
    (and `process_allgather`) puts the same number on each process. The
    counts come from the distributed runtime's device list (no collective:
    a collective over unequal processes fails). Raises SetupError on every
    process."""
    import jax  # pylint: disable=import-outside-toplevel
    per_process = [0] * jax.process_count()
    for d in jax.devices():
        per_process[d.process_index] += 1
    if len(set(per_process)) > 1:
        raise SetupError(
            f"the processes have different numbers of devices "
            f"({', '.join(f'process {p}: {c}' for p, c in enumerate(per_process))}"
            "): use the same hardware (and XLA_FLAGS/CUDA_VISIBLE_DEVICES) "
            "on every host.")
    return per_process


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
        check_device_counts()  # before any collective
        _start_watch(values)
        try:
            check_same_flags(values)
        except SetupError:
            finished()  # every process stops with this error, none is lost
            raise
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
        per_process = check_device_counts()
        self.num_replicas_in_sync = len(devices)
        if global_batch_size % len(devices):
            n = len(devices)
            finished()  # every process stops with this error, none is lost
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
