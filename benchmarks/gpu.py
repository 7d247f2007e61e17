"""GPU benchmark: NFNet-F0 training and inference, keras_nfnets on the JAX
backend against timm on CUDA, each configuration in its own process,
interleaved over rounds (as benchmarks/benchmark.py does on CPU).

    python benchmarks/gpu.py --out benchmarks/results_gpu.json   # make bench-gpu
    python benchmarks/gpu.py --batch 128 --train_size 224 --rounds 1
    python benchmarks/gpu.py --configs keras_bf16,timm_bf16_cl_compile
    # the harness end to end on CPU, on tiny models:
    python benchmarks/gpu.py --device cpu --size 32 --batch 2 --steps 1 \\
        --warmup 0 --variant tests/fixtures/deepmind/nfnet_tiny_config.json \\
        --timm_model test_nfnet --configs keras_bf16,timm_bf16_cl

The configurations (`--configs`, `CONFIGS`): keras_nfnets on JAX under
`mixed_bfloat16` and in float32 (`remat="auto"`: off on a GPU), and timm's
model in `channels_last` under `torch.autocast("cuda", torch.bfloat16)`,
eager and under `torch.compile`, and in fp32 eager. Training is the same
step on both sides: SGD with Nesterov momentum 0.9 and AGC at 0.01
(keras_nfnets' `compile(agc_clipping=...)`, timm's `adaptive_clip_grad`),
`--batch` images at `--train_size` px; inference is `--batch` images at
`--infer_size` px. Each row records images/s (median of the steps after
warm-up; every step ends synchronised: a loss read back, or an explicit
synchronisation), the seconds from process start to the end of the first
step and the first step's own duration (JAX's and inductor's compilation
are in it), the device's peak memory (JAX's `peak_bytes_in_use`,
`torch.cuda.max_memory_allocated`), peak host RSS, the device's matmul
rate in the row's dtype and the MFU it implies, the GPU and the CPU (model
and flags).

Nothing here imports TensorFlow: the machine that runs this has JAX and
PyTorch and no TensorFlow. The keras_nfnets child sets
`KERAS_BACKEND=jax` before Keras is imported and makes TensorFlow
unimportable in its process, as it is there (Keras imports TensorFlow
opportunistically wherever it is installed, e.g. to serialize a layer's
config, and does without it where it is not); anything that needs it
fails the child, naming it, and the child checks at its end that
TensorFlow is not in its process; the timm child is
benchmarks/peers.py (`--device cuda`), which checks the same. A child that
fails or runs past `--child_timeout_s` leaves an error row, and the run
goes on. The JSON (`--out`) is rewritten after every row, so a run cut
short keeps what it measured. Keras must be installed (pip install keras,
or carry its wheels to a machine without network); keras_nfnets is
imported from this checkout.
"""

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

_START = time.time()

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import peers  # noqa: E402  (no TensorFlow / torch at import)
import summary  # noqa: E402

# name -> what the child runs. keras_*: keras_nfnets on JAX; timm_*: timm's
# model through benchmarks/peers.py.
CONFIGS = {
    "keras_bf16": dict(impl="keras_nfnets", precision="mixed_bfloat16"),
    "keras_fp32": dict(impl="keras_nfnets", precision="float32"),
    "timm_bf16_cl": dict(impl="timm", precision="bfloat16",
                         channels_last=True, compile=False),
    "timm_bf16_cl_compile": dict(impl="timm", precision="bfloat16",
                                 channels_last=True, compile=True),
    "timm_fp32": dict(impl="timm", precision="float32",
                      channels_last=False, compile=False),
}
DEFAULT_CONFIGS = "keras_bf16,keras_fp32,timm_bf16_cl,timm_bf16_cl_compile"


def jax_matmul_gflops(dtype, n=4096, repeats=10):
    """Matrix-multiply rate of JAX's first device in `dtype`, each product
    waited for (`block_until_ready`)."""
    import jax
    import jax.numpy as jnp
    key = jax.random.PRNGKey(0)
    a = jax.random.normal(key, (n, n)).astype(dtype)
    b = jax.random.normal(jax.random.fold_in(key, 1), (n, n)).astype(dtype)
    dot = jax.jit(jnp.matmul)
    dot(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        dot(a, b).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times) / 1e9


class NoTensorFlow:
    """A meta-path finder that makes TensorFlow unimportable, as it is on
    the GPU machine: Keras's optional uses of it (`tf.available`) then see
    none, as they would there, and anything that needs it fails, naming
    it, here as it would there."""

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(
                f"{name} is blocked in the keras_nfnets child of "
                f"benchmarks/gpu.py: the GPU machine has no TensorFlow, "
                f"and KERAS_BACKEND=jax must not need it",
                name=name)
        return None


def block_tensorflow():
    """Installs `NoTensorFlow` (before Keras is imported)."""
    if "tensorflow" in sys.modules:
        raise RuntimeError("TensorFlow is already imported in this process")
    sys.meta_path.insert(0, NoTensorFlow())


def run_keras_child(args):
    """One keras_nfnets measurement on JAX in this process, TensorFlow
    blocked (`block_tensorflow`); prints a `RESULT {json}` line."""
    block_tensorflow()
    os.environ["KERAS_BACKEND"] = "jax"  # before keras is imported
    sys.path.insert(0, REPO)  # keras_nfnets from this checkout
    import numpy as np
    import jax
    import keras
    import keras_nfnets
    from keras_nfnets.flops import count_flops
    from keras_nfnets.model import step_remats
    device = jax.devices()[0]
    if args.device == "cuda" and device.platform != "gpu":
        raise SystemExit(f"--device cuda: JAX's first device is "
                         f"{device.platform} ({device}); install jax with "
                         f"CUDA (jax[cuda12] / jax[cuda13])")
    if args.precision != "float32":
        keras.mixed_precision.set_global_policy(args.precision)
    size = args.size
    model = keras_nfnets.NFNet(args.variant, weights=None,
                               input_shape=(size, size, 3),
                               classifier_activation=None)
    flops = count_flops(model)
    rng = np.random.default_rng(0)
    # On the device once, as the timm child's batch is: no host-to-device
    # copy inside the timed step.
    x = jax.device_put(rng.uniform(0, 255, (args.batch, size, size, 3))
                       .astype("float32"))
    result = dict(
        impl="keras_nfnets", backend="jax",
        framework=f"jax {jax.__version__}, keras {keras.__version__}",
        variant=(os.path.basename(args.variant)
                 if os.path.isfile(args.variant) else args.variant),
        mode=args.mode, batch=args.batch, size=size,
        precision=args.precision, device=args.device,
        jax_device=getattr(device, "device_kind", str(device)),
        # inference never recomputes; training as its trace decides
        remat=args.mode == "train" and step_remats(model, x),
        cpu=peers.cpu_info(), flops_per_image=flops)
    if args.mode == "train":
        y = jax.device_put(rng.integers(0, 1000, (args.batch,)))
        model.compile(
            optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            agc_clipping=args.agc_clipping if args.agc_clipping > 0
            else None)
        step = lambda: model.train_on_batch(x, y)  # noqa: E731 (numpy out)
        work = 3 * flops
        result["agc_clipping"] = args.agc_clipping or None
    else:
        step = lambda: model.predict_on_batch(x)  # noqa: E731 (numpy out)
        work = flops
    measured = peers.timed(step, args.warmup, args.steps, result,
                           start=_START)
    median = peers.record_steps(result, measured, digits=4)
    try:
        stats = device.memory_stats() or {}
    except Exception:  # pylint: disable=broad-except  # CPU: none kept
        stats = {}
    if "peak_bytes_in_use" in stats:
        result["device_peak_gb"] = stats["peak_bytes_in_use"] / 1e9
    dtype = "bfloat16" if "bfloat16" in args.precision else "float32"
    result["matmul_dtype"] = dtype
    result["matmul_gflops"] = jax_matmul_gflops(dtype, n=args.matmul_n)
    result["achieved_gflops"] = work * args.batch / median / 1e9
    result["mfu"] = result["achieved_gflops"] / result["matmul_gflops"]
    # The machine this runs on has no TensorFlow; here it would be a
    # dependency that crept in past the block.
    result["tensorflow_blocked"] = True
    result["tensorflow_in_process"] = "tensorflow" in sys.modules
    if result["tensorflow_in_process"]:
        raise SystemExit("the keras_nfnets child imported TensorFlow "
                         "(KERAS_BACKEND=jax must not need it): "
                         + ", ".join(sorted(m for m in sys.modules
                                            if m.startswith("tensorflow"))
                                     [:5]))
    print("RESULT " + json.dumps(result), flush=True)


def child_command(name, mode, args):
    """The command line of configuration `name` in `mode`."""
    config = CONFIGS[name]
    size = args.train_size if mode == "train" else args.infer_size
    common = ["--mode", mode, "--batch", str(args.batch), "--size",
              str(size), "--steps", str(args.steps), "--warmup",
              str(args.warmup), "--agc_clipping", str(args.agc_clipping),
              "--device", args.device, "--precision", config["precision"],
              "--matmul_n", str(args.matmul_n)]
    if config["impl"] == "keras_nfnets":
        return [sys.executable, os.path.abspath(__file__), "--child",
                "keras", "--variant", args.variant, *common]
    cmd = [sys.executable, os.path.join(HERE, "peers.py"), "--impl", "timm",
           "--model", args.timm_model, *common]
    if config["channels_last"]:
        cmd.append("--channels_last")
    if config["compile"]:
        cmd += ["--compile", "--compile_mode", args.compile_mode]
    return cmd


def child_env(device):
    """The children's environment: JAX on the device asked for (on CPU,
    no GPU visible to either framework)."""
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    if device == "cpu":
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    else:
        env.pop("JAX_PLATFORMS", None)
    return env


def error_row(name, mode, args, reason):
    config = CONFIGS[name]
    return dict(impl=config["impl"], config=name, mode=mode,
                batch=args.batch, size=(args.train_size if mode == "train"
                                        else args.infer_size),
                precision=config["precision"], device=args.device,
                memory_format="channels_last" if config.get("channels_last")
                else "contiguous", compile=bool(config.get("compile")),
                agc_clipping=args.agc_clipping or None,
                backend="jax" if config["impl"] == "keras_nfnets"
                else "torch", cpu=peers.cpu_info(), error=reason)


def spawn(name, mode, args):
    """One configuration in a fresh process: its row, or an error row."""
    cmd = child_command(name, mode, args)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True,
                             env=child_env(args.device),
                             timeout=args.child_timeout_s)
    except subprocess.TimeoutExpired:
        return error_row(name, mode, args, f"ran past --child_timeout_s "
                         f"{args.child_timeout_s} s")
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            row = json.loads(line[len("RESULT "):])
            row["config"] = name
            return row
    tail = " ".join(out.stderr.strip().splitlines()[-4:])
    return error_row(name, mode, args, f"exit {out.returncode}, no result: "
                     f"{tail}"[:800])


def preflight(args):
    """The packages the configurations need, and a GPU where --device
    cuda: a clear error before any child runs."""
    import importlib.util
    needs = set()
    for name in args.configs:
        needs |= ({"jax", "keras"} if CONFIGS[name]["impl"] == "keras_nfnets"
                  else {"torch", "timm"})
    missing = sorted(m for m in needs if importlib.util.find_spec(m) is None)
    if missing:
        raise SystemExit(f"the configurations {args.configs} need "
                         f"{', '.join(missing)}, not installed in "
                         f"{sys.executable}: pip install them (keras: "
                         f"keras, namex and optree; jax with CUDA), or leave "
                         f"those configurations out (--configs)")
    if args.device == "cuda":
        smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True,
                             text=True, check=False) if _which("nvidia-smi") \
            else None
        if smi is None or smi.returncode != 0 or "GPU" not in smi.stdout:
            raise SystemExit("--device cuda: no NVIDIA GPU found (nvidia-smi "
                             "-L lists none); on CPU run --device cpu")
        import re
        return "; ".join(re.sub(r"^GPU \d+: | \(UUID: [^)]*\)", "", line)
                         for line in smi.stdout.strip().splitlines())
    return "no GPU (--device cpu)"


def _which(program):
    import shutil
    return shutil.which(program)


def device_line(data):
    """The machine in words: the GPU, the frameworks, the CPU."""
    rows = data["rows"]
    gpus = sorted({r["gpu"]["name"] for r in rows if r.get("gpu")}
                  | {r["jax_device"] for r in rows if r.get("jax_device")
                     and r.get("device") == "cuda"})
    frameworks = sorted({r["framework"] for r in rows if r.get("framework")})
    line = (f"Device: {', '.join(gpus) or data.get('gpus') or 'CPU'}"
            f" ({data.get('device', 'cuda')}); "
            f"{'; '.join(frameworks) or 'frameworks not recorded'}. ")
    return line + summary.cpu_line(rows)


def table(rows):
    """Markdown: each configuration per mode, its ratio to the best timm
    configuration of the same precision, the device's peak memory, the
    first step (its own duration, and from process start)."""
    s = summary.summarize(rows)
    peaks, own = {}, {}
    for r in rows:
        if "images_per_s" in r:
            key = (r["mode"], summary.label(r))
            if r.get("device_peak_gb") is not None:
                peaks.setdefault(key, []).append(r["device_peak_gb"])
            if r.get("first_step_s") is not None:
                own.setdefault(key, []).append(r["first_step_s"])
    lines = ["| mode | configuration | batch x px | img/s, median (per round) "
             "| ratio to best timm (same precision) | device peak GB "
             "| first step s (its own; from process start) | MFU |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for x in sorted(s, key=lambda x: (x["mode"] != "train",
                                      x["precision"] != "bf16", x["peer"])):
        key = (x["mode"], x["label"])
        rounds = ", ".join(f"{v:.1f}" for v in x["rounds"])
        if x["peer"]:
            ratio = "best peer" if x["label"] == x["best_peer"] else "peer"
        else:
            ratio = "-" if x["ratio"] is None else f"{x['ratio']:.2f}×"
        peak = f"{max(peaks[key]):.2f}" if key in peaks else "-"
        first = (f"{statistics.median(own[key]):.1f}" if key in own
                 else "-") + f"; {x['first_step_s']:.1f}"
        mfu = "-" if x["mfu"] is None else f"{100 * x['mfu']:.0f} %"
        lines.append(f"| {x['mode']} | {x['label']} | {x['batch']} x "
                     f"{x['size']} | {x['images_per_s']:.1f} ({rounds}) | "
                     f"{ratio} | {peak} | {first} | {mfu} |")
    return "\n".join(lines + [""] * bool(summary.failed_lines(rows))
                     + summary.failed_lines(rows))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cpu: the harness end to end without a GPU")
    p.add_argument("--variant", default="F0",
                   help="keras_nfnets' variant name or config JSON")
    p.add_argument("--timm_model", default=peers.TIMM_MODEL)
    p.add_argument("--configs", default=DEFAULT_CONFIGS,
                   help="comma-separated: " + ", ".join(CONFIGS))
    p.add_argument("--modes", default="train,infer")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--train_size", type=int, default=192)
    p.add_argument("--infer_size", type=int, default=256)
    p.add_argument("--size", type=int, default=None,
                   help="both sizes (the child's size)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--agc_clipping", type=float, default=0.01)
    p.add_argument("--compile_mode", default="default")
    p.add_argument("--child_timeout_s", type=float, default=1200)
    p.add_argument("--matmul_n", type=int, default=None,
                   help="the matmul that measures each device's rate "
                        "(default 4096 on cuda, 1024 on cpu)")
    p.add_argument("--out", default=None,
                   help="the JSON (rewritten after every row)")
    # child only
    p.add_argument("--child", choices=["keras"], default=None)
    p.add_argument("--mode", choices=["train", "infer"], default="train")
    p.add_argument("--precision", default="float32",
                   choices=["float32", "mixed_bfloat16"])
    args = p.parse_args(argv)
    if args.batch < 1 or (args.size is not None and args.size < 32):
        p.error(f"--batch must be >= 1 and --size >= 32, got {args.batch} "
                f"and {args.size}")
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        p.error("--steps and --rounds must be >= 1, --warmup >= 0")
    if args.matmul_n is None:
        args.matmul_n = 4096 if args.device == "cuda" else 1024
    if args.child:
        if args.size is None:
            p.error("--child needs --size")
        run_keras_child(args)
        return
    if args.size is not None:
        args.train_size = args.infer_size = args.size
    args.configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown or not args.configs:
        p.error(f"unknown configuration(s) {unknown}; known: "
                f"{', '.join(CONFIGS)}")
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - {"train", "infer"}:
        p.error(f"--modes must list train and/or infer, got {args.modes!r}")
    gpus = preflight(args)
    data = dict(
        date=datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d"),
        device=args.device, gpus=gpus, configs=args.configs,
        batch=args.batch, train_size=args.train_size,
        infer_size=args.infer_size, steps=args.steps, warmup=args.warmup,
        rounds=args.rounds,
        command="python benchmarks/gpu.py " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None
                                     else sys.argv[1:])),
        rows=[])
    print(f"{gpus}; {peers.cpu_info()['model']}", flush=True)
    for r in range(args.rounds):
        for mode in modes:
            for name in args.configs:
                row = spawn(name, mode, args)
                row["round"] = r
                data["rows"].append(row)
                if row.get("error"):
                    print(f"round {r} {mode:5s} {name:22s} FAILED: "
                          f"{row['error']}", flush=True)
                else:
                    print(f"round {r} {mode:5s} {name:22s} "
                          f"{row['images_per_s']:.2f} img/s  first step "
                          f"{row['first_step_s']:.1f} s  device peak "
                          f"{row.get('device_peak_gb') or 0:.2f} GB",
                          flush=True)
                if args.out:
                    with open(args.out, "w") as f:
                        json.dump(data, f, indent=1)
    print()
    print(device_line(data))
    print()
    print(table(data["rows"]))


if __name__ == "__main__":
    main()
