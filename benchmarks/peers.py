"""Peer implementations for benchmarks/benchmark.py: timm's `dm_nfnet_f0`
in PyTorch (eager, `channels_last`, and `torch.compile`) and ONNX Runtime
on timm's ONNX export, each measured the way benchmark.py measures
keras_nfnets (one fresh process, the same warm-up and step counts, median
step time, peak RSS, first-step time, the process's own matmul rate).

This module imports neither TensorFlow nor Keras (importing torch into a
process that already holds TensorFlow has crashed here), and nothing
heavy at import time: benchmark.py imports it for `cpu_info`. Every row
records whether TensorFlow was in the process at its end
(`tensorflow_in_process`); a row where it was is an error row.

    python benchmarks/peers.py --impl timm --mode train --batch 8 --size 192
    python benchmarks/peers.py --impl timm_channels_last --mode infer --size 256
    python benchmarks/peers.py --impl timm_compile --mode train --size 192
    python benchmarks/peers.py --impl timm --precision bfloat16 --mode train
    python benchmarks/peers.py --impl timm --device cuda --channels_last \
        --compile --precision bfloat16 --mode train --batch 64 --size 192
    python benchmarks/peers.py --export_onnx /tmp/f0.onnx --size 256
    python benchmarks/peers.py --impl onnxruntime --onnx /tmp/f0.onnx --size 256
    python benchmarks/peers.py --impl openvino --size 256 [--precision bfloat16]

`timm_compile` is timm's model under `torch.compile` (inductor, default
mode): its first step includes the compilation, recorded like every
peer's. Inductor needs a C++ compiler on CPU; where it is missing or the
compilation fails, the child prints an error row (`error`, with the
reason) instead of a measurement, and the run goes on without it.
`--precision bfloat16` runs the forward and the loss under
`torch.autocast(device, torch.bfloat16)` (the weights and the optimizer
stay fp32). `openvino` is timm's model converted by OpenVINO from
PyTorch in the measuring process (`openvino.convert_model`; OpenVINO
cannot read timm's ONNX export, whose weight standardization is a
training-mode BatchNormalization) and compiled for the CPU at fp32, or
at bf16 with `--precision bfloat16` (OpenVINO's own default on a CPU
with bf16 arithmetic). `--device cuda` (the GPU harness, benchmarks/gpu.py) moves
the model and batch to the GPU, synchronises after every step and records
the device's peak memory.

Each measurement prints one line `RESULT {json}`.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

_START = time.time()

PEERS = ("timm", "timm_channels_last", "timm_compile", "onnxruntime",
         "openvino")
# The peers that run timm's model in PyTorch (the others, ONNX Runtime and
# OpenVINO, are inference peers).
TORCH_PEERS = ("timm", "timm_channels_last", "timm_compile")
TIMM_MODEL = "dm_nfnet_f0"
# ImageNet mean / std (timm's default for dm_nfnet_f0): inputs are drawn in
# 0-255 like keras_nfnets' (which normalizes inside the model) and
# normalized here, so both models see the same images.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


# The /proc/cpuinfo flags recorded in every row: the vector and matrix
# units that fp32 / bf16 / int8 convolutions run on.
ISA_FLAGS = ("sse4_2", "avx", "f16c", "fma", "avx2", "avx512f", "avx512bw",
             "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def parse_cpuinfo(text):
    """The CPU model and the instruction-set flags that matter for fp32 /
    bf16 convolutions, from the text of /proc/cpuinfo.

    Returns a dict: `model` (the first "model name"), `logical_cpus` (the
    number of "processor" entries), `avx2`, `fma`, `avx512` (avx512f),
    `avx512_bf16`, `avx512_vnni`, `avx_vnni`, `amx` (amx_tile), `amx_bf16`,
    `flags` (those of `ISA_FLAGS` the CPU has, in that order), `bf16`
    (whether the CPU has bf16 arithmetic: `avx512_bf16` or `amx_bf16`) and
    `isa`, a short summary such as "AVX2, no AVX-512, no AMX".
    """
    model, flags, logical = None, set(), 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            logical += 1
        elif key == "model name" and model is None:
            model = value
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    info = dict(model=model or platform.processor() or "unknown",
                logical_cpus=logical or None,
                avx2="avx2" in flags, fma="fma" in flags,
                avx512="avx512f" in flags,
                avx512_bf16="avx512_bf16" in flags,
                avx512_vnni="avx512_vnni" in flags,
                avx_vnni="avx_vnni" in flags,
                amx="amx_tile" in flags, amx_bf16="amx_bf16" in flags,
                flags=[f for f in ISA_FLAGS if f in flags])
    info["bf16"] = info["avx512_bf16"] or info["amx_bf16"]
    parts = ["AVX2" if info["avx2"] else "no AVX2",
             "AVX-512" + (" (bf16)" if info["avx512_bf16"] else "")
             if info["avx512"] else "no AVX-512",
             "AMX" if info["amx"] else "no AMX"]
    info["isa"] = ", ".join(parts)
    return info


def cpu_info(path="/proc/cpuinfo"):
    """`parse_cpuinfo` of this machine, plus the CPUs this process may run
    on and the load average when it was called."""
    try:
        with open(path) as f:
            info = parse_cpuinfo(f.read())
    except OSError:
        info = parse_cpuinfo("")
    try:
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        info["usable_cpus"] = os.cpu_count()
    try:
        info["loadavg_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def _status_gb(field):
    """A memory field of /proc/self/status (`VmHWM`, `VmRSS`) in GB (the
    kernel's kB / 1e6); None where /proc is not there."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1e6
    except OSError:
        pass
    return None


def peak_rss_gb():
    """This process's own peak resident memory in GB (the kernel's kB /
    1e6): the high-water mark of its memory map (VmHWM). `ru_maxrss` would
    carry over the parent's resident memory at the fork into a child
    (Linux keeps it across exec), so a child of a parent holding
    TensorFlow would report at least the parent's memory; it is the
    fallback where /proc is not there."""
    peak = _status_gb("VmHWM")
    if peak is not None:
        return peak
    import resource  # pylint: disable=import-outside-toplevel
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def record_steps(result, measured, digits=3):
    """Records the timed steps in `result` (`step_times_s`, `images_per_s`
    at `result["batch"]`, `peak_rss_gb`); returns the median step time."""
    median = statistics.median(measured)
    result["step_times_s"] = [round(t, digits) for t in measured]
    result["images_per_s"] = result["batch"] / median
    result["peak_rss_gb"] = peak_rss_gb()
    return median


def torch_matmul_gflops(n=1024, repeats=10, device="cpu", dtype="float32"):
    """Matrix-multiply rate through torch on `device` in `dtype` (as
    benchmark.py's `matmul_gflops` is through Keras); synchronised on a
    GPU."""
    import torch
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, getattr(torch, dtype))
    b = torch.randn(n, n, generator=g).to(device, getattr(torch, dtype))

    def run():
        torch.matmul(a, b)
        if a.device.type == "cuda":
            torch.cuda.synchronize()
    run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def _numpy_matmul_seconds(n, repeats):
    """The times of `repeats` n x n fp32 products through numpy, after
    one untimed."""
    import numpy as np
    rng = np.random.default_rng(0)
    a = rng.normal(size=(n, n)).astype("float32")
    b = rng.normal(size=(n, n)).astype("float32")
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return times


def numpy_matmul_gflops(n=1024, repeats=10):
    """fp32 matrix-multiply rate through numpy (the ONNX Runtime child has
    no torch): the median of `repeats` products."""
    return 2 * n ** 3 / statistics.median(
        _numpy_matmul_seconds(n, repeats)) / 1e9


def gemm_ceiling_gflops(n=2048, repeats=5):
    """This CPU's fp32 compute ceiling as this process finds it: the
    fastest of `repeats` large square matrix products through numpy (the
    work a CPU runs closest to its peak; a convolution network's
    convolutions run at most this fast). Unlike `numpy_matmul_gflops`
    (a median, at 1024), an upper bound: the serving table's ceiling."""
    return 2 * n ** 3 / min(_numpy_matmul_seconds(n, repeats)) / 1e9


def images(batch, size, seed=0):
    """A batch in NCHW float32, uniform 0-255 like benchmark.py's, then
    normalized with ImageNet's mean and std."""
    import numpy as np
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    x = (x / 255 - np.array(_MEAN, "float32")) / np.array(_STD, "float32")
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def uses_channels_last(args):
    """Whether the timm child runs in `channels_last` (the impl or the
    flag)."""
    return args.impl == "timm_channels_last" or args.channels_last


def uses_compile(args):
    """Whether the timm child runs under `torch.compile`."""
    return args.impl == "timm_compile" or args.compile


def cxx_compiler():
    """The C++ compiler inductor calls on CPU (`$CXX`, else g++), as a
    path, or None where there is none."""
    import shutil
    return shutil.which(os.environ.get("CXX") or "g++")


def _timm_model(args):
    import timm
    import torch
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False,
                              num_classes=1000)
    if uses_channels_last(args):
        model = model.to(memory_format=torch.channels_last)
    return model


def _timm_flops_per_image(model, size, device="cpu"):
    """Forward FLOPs (multiply-adds x 2) of one image, by PyTorch's
    FlopCounterMode (convolutions and matmuls, as keras_nfnets' count)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, 3, size, size, device=device))
    model.train(was_training)
    return counter.get_total_flops()


def gpu_info():
    """The CUDA device torch runs on: name, compute capability, memory,
    CUDA and cuDNN versions."""
    import torch
    props = torch.cuda.get_device_properties(0)
    return dict(name=props.name, capability=f"{props.major}.{props.minor}",
                memory_gb=props.total_memory / 1e9, cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version())


def current_rss_gb():
    """The process's resident memory now (VmRSS), in the units of
    `peak_rss_gb` (the kernel's kB / 1e6); None where /proc is not
    there."""
    return _status_gb("VmRSS")


def timed(step, warmup, steps, result, start=_START):
    """Runs `step` warmup + steps times; the measured times after warm-up.
    Records in `result` the seconds from `start` (the process start) to the
    end of the first and second step, the first step's own duration
    (`first_step_s`: with `torch.compile` or a traced step, the compilation
    is in it), and the resident memory just before the first step (the
    runtime, the model and its input: what the peak holds before any
    step's own memory)."""
    times = []
    for i in range(warmup + steps):
        if i == 0:
            result["rss_before_first_step_gb"] = current_rss_gb()
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        if i == 0:
            result["first_step_s"] = times[0]
            result["first_step_s_since_start"] = time.time() - start
        if i == 1:
            result["second_step_s_since_start"] = time.time() - start
    return times[warmup:]


def failed(result, phase, reason):
    """`result` made an error row: no measurement, the phase that failed
    and why (first lines of the exception), the peak memory so far."""
    text = " ".join(str(reason).strip().split())
    result.update(error=f"{phase}: {text[:600]}", error_phase=phase,
                  peak_rss_gb=peak_rss_gb())
    return result


def timm_sgd(params):
    """The optimizer of timm's side of every comparison: Nesterov SGD
    (0.1, momentum 0.9), as `benchmark.sgd_training` on the Keras side."""
    import torch
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True)


def timm_train_step(model, run, x, y, clip, autocast=None):
    """One training step of `model` (called through `run`, e.g. its
    `torch.compile` wrapper): Nesterov SGD (0.1, momentum 0.9) on the
    cross-entropy, with timm's `adaptive_clip_grad(clip_factor=clip)`
    before the update when `clip > 0`; returns `step()`."""
    import contextlib
    import torch
    opt = timm_sgd(model.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()
    autocast = autocast or contextlib.nullcontext
    if clip > 0:
        from timm.utils import adaptive_clip_grad

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn(run(x), y)
        loss.backward()
        if clip > 0:
            adaptive_clip_grad(model.parameters(), clip_factor=clip)
        opt.step()
        return loss.item()  # synchronises
    return step


def run_timm(args):
    if uses_compile(args) and args.device == "cpu" and not cxx_compiler():
        # Known before torch is imported: no measurement is possible.
        return failed(_row(args, cxx=None), "torch.compile", (
            "inductor needs a C++ compiler on CPU ($CXX or g++); none was "
            "found"))
    import contextlib
    import numpy as np
    import torch
    import timm
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device "
                         "(torch.cuda.is_available() is False)")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as timm's train.py
    model = _timm_model(args).to(device)
    x = torch.from_numpy(images(args.batch, args.size)).to(device)
    if uses_channels_last(args):
        x = x.contiguous(memory_format=torch.channels_last)
    result = _row(args, framework=f"torch {torch.__version__}, "
                  f"timm {timm.__version__}",
                  threads=torch.get_num_threads(),
                  flops_per_image=_timm_flops_per_image(model, args.size,
                                                        device))
    if device.type == "cuda":
        result["gpu"] = gpu_info()
    run = model
    if uses_compile(args):
        result["compile_mode"] = args.compile_mode
        if device.type == "cpu":
            result["cxx"] = cxx_compiler()
        # Lazy: inductor compiles at the first call, inside the first step.
        run = torch.compile(model, mode=args.compile_mode)

    def autocast():
        if args.precision == "bfloat16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    if args.mode == "train":
        model.train()
        y = torch.from_numpy(np.random.default_rng(0).integers(
            0, 1000, (args.batch,))).to(device)
        step = timm_train_step(model, run, x, y, args.agc_clipping, autocast)
        work = 3 * result["flops_per_image"]
    else:
        model.eval()

        def step():
            with torch.inference_mode(), autocast():
                out = run(x)
            sync()
            return out
        work = result["flops_per_image"]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        measured = timed(step, args.warmup, args.steps, result)
    except Exception as e:  # pylint: disable=broad-except
        if not uses_compile(args):
            raise
        # Inductor's failures (no compiler, a compiler error, a backend
        # that cannot lower an op) end this peer, recorded, not the run.
        return failed(result, "torch.compile", f"{type(e).__name__}: {e}")
    if device.type == "cuda":
        result["device_peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    matmul_dtype = ("bfloat16" if args.precision == "bfloat16"
                    else "float32")
    result["matmul_dtype"] = matmul_dtype
    return _finish(result, measured, work,
                   torch_matmul_gflops(n=args.matmul_n, device=device,
                                       dtype=matmul_dtype), "torch")


def run_onnxruntime(args):
    import onnxruntime as ort
    if not args.onnx or not os.path.exists(args.onnx):
        raise SystemExit(f"--impl onnxruntime needs --onnx PATH of timm's "
                         f"export (benchmarks/peers.py --export_onnx PATH); "
                         f"got {args.onnx!r}")
    if args.mode != "infer":
        raise SystemExit("onnxruntime is an inference peer: --mode infer")
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    session = ort.InferenceSession(args.onnx, options,
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = images(args.batch, args.size)
    result = _row(args, framework=f"onnxruntime {ort.__version__}",
                  threads=options.intra_op_num_threads or os.cpu_count(),
                  flops_per_image=args.flops_per_image)
    measured = timed(lambda: session.run(None, {name: x}), args.warmup,
                      args.steps, result)
    return _finish(result, measured, args.flops_per_image,
                   numpy_matmul_gflops(), "numpy")


#: OpenVINO's INFERENCE_PRECISION_HINT for a serving precision (the
#: precision column of benchmark.SERVING; the peer's `--precision`).
OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16"}


def run_openvino(args):
    """timm's model converted by OpenVINO from PyTorch and run by its CPU
    plugin at `--precision` (`INFERENCE_PRECISION_HINT` f32 or bf16)."""
    import openvino as ov
    import timm
    import torch
    model = _timm_model(args).eval()
    x = images(args.batch, args.size)
    t = time.perf_counter()
    with torch.no_grad():
        converted = ov.convert_model(model, example_input=torch.from_numpy(x))
    hint = OPENVINO_HINTS["bf16" if args.precision == "bfloat16" else "fp32"]
    compiled = ov.Core().compile_model(
        converted, "CPU", {"INFERENCE_PRECISION_HINT": hint})
    request = compiled.create_infer_request()
    result = _row(args, framework=f"openvino {ov.__version__} (timm "
                  f"{timm.__version__}, torch {torch.__version__})",
                  threads=os.cpu_count(), inference_precision=hint,
                  convert_s=time.perf_counter() - t,
                  flops_per_image=_timm_flops_per_image(model, args.size))
    measured = timed(lambda: request.infer({0: x}), args.warmup, args.steps,
                     result)
    return _finish(result, measured, result["flops_per_image"],
                   numpy_matmul_gflops(), "numpy")


def export_onnx(args):
    """timm's model exported to ONNX (the TorchScript exporter, opset 17,
    dynamic batch), for the onnxruntime peer."""
    import warnings
    import torch
    model = _timm_model(args).eval()
    x = torch.from_numpy(images(1, args.size))
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), args.export_onnx, dynamo=False,
                          opset_version=17, input_names=["images"],
                          output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"},
                                        "logits": {0: "batch"}})
    return dict(impl="onnx_export", path=args.export_onnx, size=args.size,
                export_s=time.perf_counter() - t,
                flops_per_image=_timm_flops_per_image(model, args.size),
                peak_rss_gb=peak_rss_gb())


def _row(args, **fields):
    torch_peer = args.impl in TORCH_PEERS
    row = dict(impl=args.impl,
               backend="torch" if torch_peer else args.impl,
               variant="F0" if args.model == TIMM_MODEL else args.model,
               model=args.model, mode=args.mode, batch=args.batch,
               size=args.size, precision=args.precision,
               memory_format=("channels_last" if uses_channels_last(args)
                              else "contiguous"),
               compile=torch_peer and uses_compile(args),
               device=args.device, warmup=args.warmup, steps=args.steps,
               cpu=cpu_info(), **fields)
    if args.mode == "train":  # AGC's clip factor; None: no AGC
        row["agc_clipping"] = args.agc_clipping if args.agc_clipping > 0 \
            else None
    return row


def _finish(result, measured, work, matmul, via):
    median = record_steps(result, measured)
    result["matmul_gflops"] = matmul
    result["matmul_via"] = via
    if result["mode"] == "infer" and result["device"] == "cpu":
        # The serving table's ceiling (benchmark.serving_ceiling).
        result["ceiling_gflops"] = gemm_ceiling_gflops()
    if work:
        achieved = work * result["batch"] / median / 1e9
        result["achieved_gflops"] = achieved
        result["mfu"] = achieved / matmul
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impl", choices=PEERS, default="timm")
    p.add_argument("--mode", choices=["train", "infer"], default="infer")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--model", default=TIMM_MODEL,
                   help="timm's model name (tests: test_nfnet)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--precision", choices=["float32", "bfloat16"],
                   default="float32",
                   help="bfloat16: forward and loss under torch.autocast")
    p.add_argument("--channels_last", action="store_true",
                   help="model and input in channels_last (any timm impl)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (any timm impl)")
    p.add_argument("--compile_mode", default="default",
                   choices=["default", "reduce-overhead", "max-autotune",
                            "max-autotune-no-cudagraphs"])
    p.add_argument("--agc_clipping", type=float, default=0.01,
                   help="training: timm's adaptive_clip_grad with this "
                        "clip factor (0: no clipping)")
    p.add_argument("--matmul_n", type=int, default=1024,
                   help="the size of the matmul that measures the device's "
                        "rate (the MFU's denominator)")
    p.add_argument("--onnx", default=None,
                   help="onnxruntime: the exported model")
    p.add_argument("--flops_per_image", type=float, default=None,
                   help="onnxruntime: forward FLOPs per image (from the "
                        "export), for the MFU")
    p.add_argument("--export_onnx", default=None, metavar="PATH",
                   help="export timm's model to PATH and exit")
    args = p.parse_args(argv)
    if args.batch < 1 or args.size < 32:
        p.error(f"--batch must be >= 1 and --size >= 32, got "
                f"{args.batch} and {args.size}")
    if args.steps < 1 or args.warmup < 0:
        p.error(f"--steps must be >= 1 and --warmup >= 0, got "
                f"{args.steps} and {args.warmup}")
    if args.impl == "onnxruntime" and not args.export_onnx:
        if args.mode != "infer":
            p.error("onnxruntime is an inference peer: use --mode infer")
        if not args.onnx:
            p.error("--impl onnxruntime needs --onnx PATH (made by "
                    "--export_onnx PATH)")
        changed = _torch_only_flags(args, precision=True)
        if changed:
            p.error(f"{', '.join(changed)}: only for the timm peers, not "
                    f"onnxruntime (ONNX Runtime runs the export on CPU in "
                    f"fp32)")
    if args.impl == "openvino" and not args.export_onnx:
        changed = (["--mode train"] if args.mode != "infer" else []) + \
            _torch_only_flags(args, precision=False)
        if changed:
            p.error(f"{', '.join(changed)}: openvino is a CPU inference "
                    f"peer (--mode infer, --precision float32 or "
                    f"bfloat16)")
    return args


def _torch_only_flags(args, precision):
    """The flags given that only the PyTorch peers take (`precision`: the
    bf16 one among them)."""
    return [flag for flag, on in (
        ("--device cuda", args.device != "cpu"),
        ("--precision bfloat16", precision and args.precision != "float32"),
        ("--channels_last", args.channels_last),
        ("--compile", args.compile)) if on]


def cold_compile_cache():
    """A fresh, empty directory for inductor's and Triton's caches (unless
    the caller set TORCHINDUCTOR_CACHE_DIR): each process compiles from
    nothing, as a first run does, instead of reusing the compilation of
    an earlier round. Set before torch is imported. Returns the directory
    made, or None."""
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return None
    import tempfile
    folder = tempfile.mkdtemp(prefix="peers_inductor_")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(folder, "triton"))
    return folder


def main(argv=None):
    args = parse_args(argv)
    if "tensorflow" in sys.modules:  # pragma: no cover - a guard
        raise RuntimeError("peers.py must run in a process without "
                           "TensorFlow (torch after TF has crashed here)")
    cache = None
    if uses_compile(args) and not args.export_onnx:
        cache = cold_compile_cache()
    try:
        if args.export_onnx:
            result = export_onnx(args)
        elif args.impl == "onnxruntime":
            result = run_onnxruntime(args)
        elif args.impl == "openvino":
            result = run_openvino(args)
        else:
            result = run_timm(args)
    finally:
        if cache:
            import shutil
            shutil.rmtree(cache, ignore_errors=True)
    if cache:
        result["compile_cache"] = "cold (a fresh directory per process)"
    # The peers' processes stay free of TensorFlow, checked at the end
    # (timm, torch.compile's inductor and onnx import what they import).
    result["tensorflow_in_process"] = "tensorflow" in sys.modules
    if result["tensorflow_in_process"] and "error" not in result:
        failed(result, "isolation", "TensorFlow was imported into the peer's "
               "process; its measurement is not kept")
        for key in ("images_per_s", "step_times_s"):
            result.pop(key, None)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
