"""`--strategy` / `--tpu` to a `tf.distribute` strategy, and the strategy
of each backend.

`resolve_strategy_name` is the pure decision (tested everywhere);
`make_strategy` builds the strategy (TPU initialisation only happens there);
`choose` is the training program's pick for any backend:

    strategy, name = choose("tensorflow", strategy="auto", tpu=None,
                            batch_size=4096)
    check_replicas(strategy, 4096)   # a UsageError unless it divides
"""

import contextlib
import json
import os

import tensorflow as tf

from . import multihost
from .errors import UsageError

STRATEGIES = ("auto", "tpu", "mirrored", "multi_worker", "one_device",
              "default")


def tf_config_workers(tf_config=None):
    """Number of worker/chief tasks in TF_CONFIG (0 when unset)."""
    raw = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except (ValueError, AttributeError) as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from e
    return sum(len(cluster.get(k, [])) for k in ("chief", "worker"))


def resolve_strategy_name(strategy="auto", tpu=None, tf_config=None,
                          num_gpus=None):
    """The strategy `--strategy=auto` means here:

    `--tpu` given -> 'tpu'; TF_CONFIG with more than one worker ->
    'multi_worker'; several GPUs -> 'mirrored'; one GPU -> 'one_device';
    otherwise 'default'. An explicit name is returned as is (validated).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy={strategy!r}: expected one of "
                         f"{', '.join(STRATEGIES)}.")
    if strategy != "auto":
        if strategy == "tpu" and not tpu:
            tpu = "local"
        return strategy
    if tpu:
        return "tpu"
    if tf_config_workers(tf_config) > 1:
        return "multi_worker"
    if num_gpus is None:
        num_gpus = len(tf.config.list_physical_devices("GPU"))
    if num_gpus > 1:
        return "mirrored"
    if num_gpus == 1:
        return "one_device"
    return "default"


def tpu_needs_connect(tpu):
    """Remote TPUs (a name or grpc:// address) need
    `experimental_connect_to_cluster`; `local` (a TPU VM) does not."""
    return bool(tpu) and tpu not in ("local",)


def make_strategy(name, tpu=None):
    """Builds the strategy for a resolved name (see resolve_strategy_name)."""
    if name == "tpu":
        tpu = tpu or "local"
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        if tpu_needs_connect(tpu):
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(
            gpus[0].name if gpus else "/cpu:0")
    return tf.distribute.get_strategy()


def is_chief(strategy):
    """True on the task that writes logs, checkpoints and the model."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or isinstance(
            strategy, tf.distribute.TPUStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def task_name(strategy):
    """'worker_1', 'chief_0', ... ('chief_0' without a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return "chief_0"
    return f"{resolver.task_type}_{resolver.task_id}"


def build_without_data_probe(model, strategy, batch):
    """Builds the model's compiled state from `batch` (arrays with the
    shapes and dtypes of one batch) and stops Keras' fit/evaluate from
    probing the input instead: Keras 3 pulls the first batch and
    `strategy.reduce`s it, which MultiWorkerMirroredStrategy cannot do for
    a nested per-replica batch (it fails with "Attempt to convert a value
    (PerReplica...) to a Tensor")."""
    from keras_nfnets import compat  # pylint: disable=import-outside-toplevel
    compat.build_compiled_state(model, strategy, batch)


def fix_multi_worker_logs(model, strategy):
    """Keras 3 reduces each step's logs across MultiWorkerMirroredStrategy
    workers with `strategy.reduce("MEAN", v, axis=0)`, which fails on the
    scalar loss and metrics ("Invalid reduction dimension 0 for input with
    0 dimensions"). Give it 1-element vectors: the mean over axis 0 is then
    the scalar it expects."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return

    def vectorise(step):
        def wrapped(data):
            logs = step(data)
            return {k: tf.reshape(v, [1]) if v.shape.rank == 0 else v
                    for k, v in logs.items()}
        return wrapped

    model.train_step = vectorise(model.train_step)
    model.test_step = vectorise(model.test_step)


class KerasDistribution:
    """What training uses in place of a `tf.distribute` strategy on JAX and
    PyTorch (the same few members: `num_replicas_in_sync`, `scope()`,
    `distribute_datasets_from_function`, `cluster_resolver`).

    JAX: every device JAX sees (GPUs, the chips of a TPU VM with
    `jax[tpu]`, or `--xla_force_host_platform_device_count` CPU devices)
    under `keras.distribution.DataParallel`, set globally before the model
    is built: variables are replicated, each global batch is split across
    the devices by Keras, and gradients are the global-batch mean (AGC
    clips that reduced gradient). The input is the global batch from the
    same dataset function the TF path uses, called once with one pipeline.
    One process: several JAX processes (TPU pod slices, GPU nodes) train
    with `training.multihost.MultiProcessDistribution` instead (the same
    members, one mesh over the devices of every process, each process
    feeding its part of the global batch), which `training.train` picks
    when `jax.process_count() > 1`.

    PyTorch: one device.
    """

    cluster_resolver = None

    def __init__(self, backend):
        import keras  # pylint: disable=import-outside-toplevel
        self.backend = backend
        self.distribution = None
        self.num_replicas_in_sync = 1
        if backend == "jax":
            import jax  # pylint: disable=import-outside-toplevel
            if jax.process_count() > 1:
                raise ValueError(
                    f"--backend=jax: {jax.process_count()} JAX processes; "
                    "KerasDistribution is for one process (training.train "
                    "trains on several with training.multihost."
                    "MultiProcessDistribution; evaluate on one host).")
            devices = keras.distribution.list_devices()
            self.num_replicas_in_sync = len(devices)
            if len(devices) > 1:
                self.distribution = keras.distribution.DataParallel(
                    devices=devices)
            keras.distribution.set_distribution(self.distribution)

    def scope(self):
        return contextlib.nullcontext()

    def distribute_datasets_from_function(self, dataset_fn):
        """The global-batch dataset (Keras shards each batch on JAX)."""
        return dataset_fn(tf.distribute.InputContext())

    def __repr__(self):
        return (f"KerasDistribution({self.backend}, "
                f"{self.num_replicas_in_sync} device(s))")


def choose(backend, strategy="auto", tpu=None, batch_size=None):
    """The strategy a run trains under, and its name for the log: a
    `tf.distribute` strategy on TensorFlow (`--strategy`, `--tpu`), one
    mesh over every process's devices on several JAX processes
    (training.multihost), else `KerasDistribution` (JAX's local devices,
    or PyTorch's one device)."""
    if backend == "tensorflow":
        name = resolve_strategy_name(strategy, tpu)
        return make_strategy(name, tpu), name
    if backend == "jax" and multihost.process_count() > 1:
        try:
            chosen = multihost.MultiProcessDistribution(batch_size)
        except multihost.SetupError as e:
            raise UsageError(str(e)) from e
        return chosen, chosen.name
    try:
        chosen = KerasDistribution(backend)
    except ValueError as e:
        raise UsageError(str(e)) from e
    return chosen, (f"{backend} DataParallel" if chosen.distribution
                    else f"{backend} single-device")


def check_replicas(strategy, batch_size, what="--batch_size"):
    """A UsageError unless `batch_size` divides into the replicas."""
    n = strategy.num_replicas_in_sync
    if batch_size % n:
        raise UsageError(
            f"{what}={batch_size} is not divisible by the {n} replicas of "
            f"the {type(strategy).__name__}: use a multiple of {n}, e.g. "
            f"{max(n, batch_size // n * n)}.")
