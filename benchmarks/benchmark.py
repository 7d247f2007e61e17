"""Speed and memory benchmark for keras_nfnets.

Each measurement runs in a fresh process (so peak RSS and start-up time are
its own), and configurations are interleaved over several rounds, because the
machine is shared and noisy: compare numbers only within one run.

    python benchmarks/benchmark.py                       # F0 defaults, table
    python benchmarks/benchmark.py --variant F0 --rounds 3 --out bench.json
    python benchmarks/benchmark.py --child train --variant F0 --batch 8 --size 192
    python benchmarks/benchmark.py --serving --out serving.json  # see below
    python benchmarks/benchmark.py --peers timm,timm_channels_last,timm_compile,onnxruntime \
        --compare_remat --compare_threads 0:1 --out results_peers.json
    python benchmarks/benchmark.py --contended --modes train --peers timm

Peers (`--peers`, what `make bench` runs): timm's `dm_nfnet_f0` in
PyTorch, eager, `channels_last` and under `torch.compile` (training: SGD
with Nesterov momentum and timm's `adaptive_clip_grad` at the same clip
factor, batch 8 at 192 px; inference: batch 8 at 256 px), and ONNX
Runtime on timm's ONNX export (exported once, before the rounds). Each is
its own child process of benchmarks/peers.py, which never imports
TensorFlow, interleaved with the keras_nfnets configurations in every
round. A peer that fails (`torch.compile` without a C++ compiler, say)
leaves an error row with its reason in the JSON and the tables, and the
run goes on. Where the CPU has bf16 arithmetic (`avx512_bf16` or AMX;
`--bf16 auto`, the default), each round also runs keras_nfnets' defaults
under `mixed_bfloat16` and the timm peers under
`torch.autocast("cpu", torch.bfloat16)`; those rows are compared with
each other, and the fp32 rows stay the headline (`--bf16 on` forces them,
`off` leaves them out). The run prints each
keras_nfnets configuration's ratio to the best peer (images/s), and a
roofline: the step's model FLOPs at the measured matmul rate against the
step time the 1.5x target would need. Every row records the CPU model and
its AVX2 / AVX-512 / AMX flags (/proc/cpuinfo), the load average when the
child started, and the child's own matmul rate. `--contended` keeps a
busy-loop process pinned to CPU 0 for the whole run (recorded in each
row); `--compare_threads INTRA:INTER` adds keras_nfnets configurations
with TensorFlow's thread pools set (0: TF's default).

Measured per configuration:
  * training images/s: a full `train_on_batch` step (the same compiled
    train function `fit` uses) with AGC and SGD, median over steps after
    warm-up;
  * inference images/s (`predict_on_batch`), median after warm-up;
  * peak resident memory of the process (its own VmHWM, `peers.peak_rss_gb`);
  * seconds from process start to the end of the first and second step;
  * model FLOPs per image (multiply-adds x 2, counted from the layers);
  * this machine's fp32 matmul rate (GFLOP/s, measured in the same process)
    and the model-FLOP utilisation it implies (training counts 3x the
    forward FLOPs).

`--serving` measures CPU inference instead (`make bench-serving`), at
batch 1 and 8 (`--batches`): the Keras model as built (`keras`), its
`fold_weight_standardization` copy (`keras_folded`), that copy exported
(dynamic batch) and run by `tf.saved_model.load` (`saved_model`),
onnxruntime (`onnx`) and the LiteRT interpreter (`litert`), and its int8
exports (`keras_nfnets.export_quantized`: `onnx_int8`, `litert_int8`
calibrated on `--calibration` images; `onnx_int8_dynamic`,
`litert_int8_dynamic`), and OpenVINO's IR of the folded copy (Keras's
`format="openvino"`) at fp32 (`openvino`) and, on a CPU with bf16
arithmetic, at bf16 (`openvino_bf16`, OpenVINO's own default there);
against the peers (`--serving_peers`: timm eager, timm channels_last,
ONNX Runtime on timm's export, OpenVINO on timm's model converted from
PyTorch; with bf16 arithmetic also timm eager and channels_last under
bf16 autocast and OpenVINO at bf16, the bf16 route's peers) at the same
batches and size. Each artefact is exported once, before the rounds, in a process
of its own that also compares its logits with the Keras model's; then
every runtime and every peer runs in a fresh process (an exported
artefact is loaded by its runtime alone, without Keras), interleaved over
`--rounds`. The run prints and saves each route's ratio to the best peer
at each batch and names the recommended route: of the routes that give
the model's numbers (float, logits as the Keras model's), the one whose
slowest batch is fastest against the best peer.
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

_START = time.time()

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402  (no TensorFlow / torch at import)
import summary  # noqa: E402


def matmul_gflops(n=1024, repeats=10):
    """fp32 matrix-multiply rate of this machine, through the Keras
    backend in use (keras.ops.matmul, synchronised by the numpy copy)."""
    import numpy as np
    from keras import ops
    rng = np.random.default_rng(0)
    a = ops.convert_to_tensor(rng.normal(size=(n, n)).astype("float32"))
    b = ops.convert_to_tensor(rng.normal(size=(n, n)).astype("float32"))
    ops.convert_to_numpy(ops.matmul(a, b))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        ops.convert_to_numpy(ops.matmul(a, b))
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times) / 1e9


_REMAT = {"auto": "auto", "on": True, "off": False}


def run_child(args):
    """One measurement in this process; prints a JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["KERAS_BACKEND"] = args.backend  # before keras is imported
    import numpy as np
    import keras
    import keras_nfnets
    if args.allocator == "lean":
        keras_nfnets.use_lean_cpu_allocator()  # before the first tensor
    if args.tf_threads:
        set_tf_threads(args.tf_threads)  # before the first op
    from keras_nfnets.flops import count_flops

    if args.precision != "float32":
        keras.mixed_precision.set_global_policy(args.precision)
    if args.grouped_conv:
        keras_nfnets.set_grouped_conv_mode(args.grouped_conv)
    size = args.size
    model = keras_nfnets.NFNet(args.variant, weights=None,
                               input_shape=(size, size, 3),
                               classifier_activation=None,
                               remat=_REMAT[args.remat])
    flops = count_flops(model)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch, size, size, 3)).astype("float32")
    from keras_nfnets import model as model_lib, runtime
    free, where = runtime.available_memory()
    result = dict(impl="keras_nfnets", backend=keras.backend.backend(),
                  framework=_framework(),
                  variant=args.variant, mode=args.child, batch=args.batch,
                  size=size, precision=args.precision, jit=args.jit,
                  # inference never recomputes; training as its trace decides
                  remat=args.child == "train" and model_lib.step_remats(
                      model, x),
                  grouped_conv=keras_nfnets.layers.grouped_conv_mode(),
                  remat_arg=args.remat,
                  kept_activations_gb=model_lib.kept_activation_bytes(
                      model, args.batch, size, size) / 1e9,
                  free_memory_gb=None if free is None else free / 1e9,
                  free_memory_where=where,
                  allocator=args.allocator, tf_threads=args.tf_threads,
                  cpu=peers.cpu_info(),
                  flops_per_image=flops)
    if args.child == "train":
        y = rng.integers(0, 1000, (args.batch,))
        compile_kwargs = dict(
            sgd_training(),
            # --jit is XLA on TensorFlow; JAX always compiles (XLA), and
            # "auto" is eager on PyTorch.
            jit_compile=args.jit if args.backend == "tensorflow" else "auto")
        compile_kwargs.update(_agc_kwargs(args))
        result["agc_clipping"] = compile_kwargs.get("agc_clipping", None)
        model.compile(**compile_kwargs)
        step = lambda: model.train_on_batch(x, y)  # noqa: E731
        work = 3 * flops  # forward + backward
    else:
        step = lambda: model.predict_on_batch(x)  # noqa: E731
        work = flops
    measured = peers.timed(step, args.warmup, args.steps, result,
                           start=_START)
    median = peers.record_steps(result, measured)
    result["matmul_gflops"] = matmul_gflops()
    achieved = work * args.batch / median / 1e9
    result["achieved_gflops"] = achieved
    result["mfu"] = achieved / result["matmul_gflops"]
    print("RESULT " + json.dumps(result), flush=True)


def set_tf_threads(spec):
    """TensorFlow's intra-/inter-op pool sizes from "INTRA:INTER" (0: TF's
    default); call before TensorFlow runs its first op."""
    intra, inter = parse_threads(spec)
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)


def parse_threads(spec):
    """"INTRA:INTER" -> (intra, inter), each an int >= 0."""
    try:
        intra, inter = (int(v) for v in spec.split(":"))
    except ValueError:
        raise ValueError(f"thread setting must be INTRA:INTER (two "
                         f"integers, 0 = TensorFlow's default), got "
                         f"{spec!r}") from None
    if intra < 0 or inter < 0:
        raise ValueError(f"thread counts must be >= 0, got {spec!r}")
    return intra, inter


def _framework():
    import keras
    text = f"keras {keras.__version__}"
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        text = f"tensorflow {tf.__version__}, " + text
    return text


# The serving runtimes: name -> (label, precision, artefact file name; None:
# the Keras model itself, built in the measuring process).
SERVING = {
    "keras": ("Keras, as built", "fp32", None),
    "keras_folded": ("Keras, folded", "fp32", None),
    "saved_model": ("SavedModel (folded)", "fp32", "saved_model"),
    "onnx": ("ONNX Runtime (folded export)", "fp32", "folded.onnx"),
    "litert": ("LiteRT (folded export)", "fp32", "folded.tflite"),
    "onnx_int8": ("ONNX Runtime int8, calibrated", "int8 full-integer",
                  "int8.onnx"),
    "onnx_int8_dynamic": ("ONNX Runtime int8, dynamic-range",
                          "int8 dynamic-range", "int8_dynamic.onnx"),
    "litert_int8": ("LiteRT int8, calibrated", "int8 full-integer",
                    "int8.tflite"),
    "litert_int8_dynamic": ("LiteRT int8, dynamic-range",
                            "int8 dynamic-range", "int8_dynamic.tflite"),
    "openvino": ("OpenVINO (folded export)", "fp32", "folded.xml"),
    # OpenVINO's default on a CPU with bf16 arithmetic; run only there.
    "openvino_bf16": ("OpenVINO bf16 (folded export)", "bf16",
                      "folded_bf16.xml"),
}
SERVING_RUNTIMES = tuple(SERVING)
SERVING_PEERS = "timm,timm_channels_last,onnxruntime,openvino"
# The target for the recommended serving route.
SERVING_TARGET = summary.TARGET_RATIOS["infer"]
# An export "gives the model's numbers" when its logits are within this of
# the Keras model's (relative to their largest magnitude), as the export
# tests require of the float artefacts.
SERVING_EXACT = 1e-3


def _usable_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def _serving_runner(runtime, path, variant, size, result):
    """`make(x) -> step` for one runtime; records its framework in
    `result`. Exported artefacts are loaded by their runtime alone (no
    Keras, no TensorFlow for ONNX and LiteRT), as a server would."""
    if runtime in ("keras", "keras_folded"):
        import keras_nfnets
        model = keras_nfnets.NFNet(variant, weights=None,
                                   input_shape=(size, size, 3))
        if runtime == "keras_folded":
            t = time.perf_counter()
            model = keras_nfnets.fold_weight_standardization(model)
            result["fold_s"] = time.perf_counter() - t
        result["framework"] = _framework()
        result["grouped_conv"] = keras_nfnets.layers.grouped_conv_mode()
        return lambda x: (lambda: model.predict_on_batch(x))
    if runtime == "saved_model":
        import tensorflow as tf
        served = tf.saved_model.load(path)
        result["framework"] = f"tensorflow {tf.__version__}"

        def make(x):
            x = tf.constant(x)
            return lambda: served.serve(x).numpy()
        return make
    if runtime.startswith("onnx"):
        import onnxruntime as ort
        options = ort.SessionOptions()  # as the ONNX Runtime peer's
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        session = ort.InferenceSession(path, options,
                                       providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        result["framework"] = f"onnxruntime {ort.__version__}"
        return lambda x: (lambda: session.run(None, {name: x}))
    if runtime.startswith("openvino"):
        import openvino as ov
        compiled = ov.Core().compile_model(path, "CPU", {
            "INFERENCE_PRECISION_HINT": peers.OPENVINO_HINTS[
                SERVING[runtime][1]]})
        request = compiled.create_infer_request()
        result["framework"] = f"openvino {ov.__version__}"
        return lambda x: (lambda: request.infer({0: x})[0])
    from importlib.metadata import version
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=path, num_threads=_usable_cpus())
    result["framework"] = f"ai-edge-litert {version('ai-edge-litert')}"
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]

    def make(x):
        interpreter.resize_tensor_input(inp["index"], x.shape)
        interpreter.allocate_tensors()

        def step():
            interpreter.set_tensor(inp["index"], x)
            interpreter.invoke()
            return interpreter.get_tensor(out["index"])
        return step
    return make


def run_serving_child(args):
    """CPU inference of one runtime at each batch size (an artefact made
    before the rounds by `run_serving_export`); a JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    runtime, size = args.runtime, args.size
    label, precision, _ = SERVING[runtime]
    result = dict(impl="keras_nfnets", variant=args.variant, mode="serve",
                  runtime=runtime, label=label, precision=precision,
                  size=size, threads=_usable_cpus(), cpu=peers.cpu_info())
    make = _serving_runner(runtime, args.artefact, args.variant, size,
                           result)
    result["rss_before_first_step_gb"] = peers.current_rss_gb()
    rng = np.random.default_rng(0)
    result["batches"] = {}
    for batch in [int(b) for b in args.batches.split(",")]:
        x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
        step = make(x)
        times = []
        for _ in range(args.warmup + args.steps):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        if "first_step_s_since_start" not in result:
            result["first_step_s_since_start"] = (
                time.time() - _START - sum(times[1:]))
        measured = times[args.warmup:]
        result["batches"][str(batch)] = dict(
            step_times_s=[round(v, 4) for v in measured],
            images_per_s=batch / statistics.median(measured),
            ms_per_batch=1000 * statistics.median(measured))
    result["peak_rss_gb"] = peers.peak_rss_gb()
    result["ceiling_gflops"] = peers.gemm_ceiling_gflops()
    print("RESULT " + json.dumps(result), flush=True)


def artefact_mb(path):
    """An artefact's size: a folder's files, or a file with its weights
    (OpenVINO's `.xml` and `.bin`)."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f))
                   for d, _, files in os.walk(path) for f in files) / 1e6
    weights = os.path.splitext(path)[0] + ".bin"
    extra = os.path.getsize(weights) if path.endswith(".xml") else 0
    return (os.path.getsize(path) + extra) / 1e6


def run_serving_export(args):
    """Makes one runtime's artefact from a freshly built model (folded;
    int8 through `keras_nfnets.export_quantized`, or, with
    `--source_onnx`, the float ONNX export quantized by the same function
    that uses, without a second ONNX conversion), and checks its logits
    against the Keras model's on two images; a JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tempfile
    import numpy as np
    import keras_nfnets
    from keras_nfnets import export as nf_export
    runtime, size, path = args.runtime, args.size, args.artefact
    label, precision, _ = SERVING[runtime]
    model = keras_nfnets.NFNet(args.variant, weights=None,
                               input_shape=(size, size, 3))
    result = dict(impl="keras_nfnets", variant=args.variant,
                  mode="serve_export", runtime=runtime, label=label,
                  precision=precision, size=size, framework=_framework(),
                  cpu=peers.cpu_info())
    t = time.perf_counter()
    folded = keras_nfnets.fold_weight_standardization(model)
    result["fold_s"] = time.perf_counter() - t
    rng = np.random.default_rng(1)
    calibration = None
    if precision == "int8 full-integer":
        # Random 0-255 images: the speed depends on the graph, not on the
        # calibrated ranges (accuracy: benchmarks/int8_accuracy.py).
        calibration = rng.uniform(0, 255, (args.calibration, size, size, 3)
                                  ).astype("float32")
        result["calibration_inputs"] = args.calibration
    t = time.perf_counter()
    if not precision.startswith("int8"):  # the float artefacts
        folded.export(path, format={
            "saved_model": "tf_saved_model", "openvino_bf16": "openvino",
        }.get(runtime, runtime), verbose=False)
    elif runtime.startswith("onnx") and args.source_onnx:
        with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as tmp:
            nf_export.quantize_onnx_file(
                args.source_onnx, path,
                None if calibration is None else [calibration], tmp)
        result["quantized_from"] = args.source_onnx
    else:
        keras_nfnets.export_quantized(
            folded, path, format=runtime.split("_")[0],
            calibration_data=calibration, verbose=False)
    result["export_s"] = time.perf_counter() - t
    result["file_mb"] = artefact_mb(path)
    x = rng.uniform(0, 255, (2, size, size, 3)).astype("float32")
    expected = np.asarray(model(x, training=False))
    got = np.asarray(_serving_runner(runtime, path, args.variant, size,
                                     {})(x)())
    diff = np.abs(got.reshape(expected.shape) - expected)
    result["max_abs_diff_vs_keras"] = float(diff.max())
    result["rel_diff_vs_keras"] = float(
        diff.max() / max(np.abs(expected).max(), 1e-12))
    result["peak_rss_gb"] = peers.peak_rss_gb()
    print("RESULT " + json.dumps(result), flush=True)


def _median_rounds(values):
    return statistics.median(values) if values else None


def serving_rows(data):
    """One dict per (configuration, batch) of a serving run, medians over
    rounds: keras_nfnets' runtimes (`exact`: a float route whose export
    gave the Keras model's logits) and the peers, each keras_nfnets row's
    `ratio` to the best peer at its batch. Pure Python (render_docs uses
    it); runs recorded before the peers were added read as keras_nfnets
    rows without a ratio."""
    exports = {e["runtime"]: e for e in data.get("exports", [])}
    groups = {}
    for run in data["runs"]:
        if summary.is_peer(run):
            items = [(run["batch"], run["images_per_s"])]
            name, runtime, precision = (summary.label(run), run["impl"],
                                        summary.precision_class(run))
        else:
            runtime = run["runtime"]
            name, precision, _ = SERVING.get(runtime, (runtime, "fp32",
                                                       None))
            items = [(int(b), v["images_per_s"])
                     for b, v in run["batches"].items()]
        for batch, ips in items:
            row = groups.setdefault((name, batch), dict(
                label=name, runtime=runtime, peer=summary.is_peer(run),
                precision=precision, batch=batch, rounds=[], rss=[]))
            if "export_s" in run:  # runs recorded before `exports`
                exports.setdefault(runtime, dict(export_s=run["export_s"]))
            row["rounds"].append(ips)
            row["rss"].append(run["peak_rss_gb"])
    rows = []
    for row in groups.values():
        export = exports.get(row["runtime"], {}) if not row["peer"] else {}
        rel = export.get("rel_diff_vs_keras")
        rss = row.pop("rss")
        rows.append(dict(
            row, images_per_s=_median_rounds(row["rounds"]),
            peak_rss_gb=max(rss), export_s=export.get("export_s"),
            file_mb=export.get("file_mb"), rel_diff_vs_keras=rel,
            exact=(not row["peer"] and row["precision"] == "fp32"
                   and (rel is None or rel <= SERVING_EXACT))))
    for batch in {r["batch"] for r in rows}:
        for kind in ("fp32", "bf16"):
            peers_at = [r for r in rows if r["peer"] and r["batch"] == batch
                        and _compared_with(r) == kind]
            best = max(peers_at, key=lambda r: r["images_per_s"],
                       default=None)
            for r in rows:
                if r["batch"] == batch and _compared_with(r) == kind:
                    r["best_peer"] = best and best["label"]
                    r["ratio"] = (r["images_per_s"] / best["images_per_s"]
                                  if best else None)
    return rows


def _compared_with(row):
    """The peers a serving row is compared with: bf16 rows with the bf16
    peers; fp32 and int8 rows with the fp32 peers (the model's own
    precision)."""
    return "bf16" if row["precision"] == "bf16" else "fp32"


def serving_recommendation(rows, target=SERVING_TARGET):
    """The recommended route: of keras_nfnets' routes that give the
    model's numbers (`exact`) and ran at every batch, the one whose worst
    ratio to the best peer over the batches is highest (without peers: to
    the fastest exact route); with the fastest exact and int8 route at
    each batch."""
    batches = sorted({r["batch"] for r in rows})
    ours = [r for r in rows if not r["peer"]]

    def score(r):
        if r["ratio"] is not None:
            return r["ratio"]
        top = max(o["images_per_s"] for o in ours
                  if o["exact"] and o["batch"] == r["batch"])
        return r["images_per_s"] / top

    def fastest(kind):
        out = {}
        for b in batches:
            at = [r for r in ours if r["batch"] == b and kind(r)]
            if at:
                best = max(at, key=lambda r: r["images_per_s"])
                out[b] = dict(label=best["label"], ratio=best["ratio"],
                              images_per_s=best["images_per_s"])
        return out
    by_runtime = {}
    for r in ours:
        if r["exact"]:
            by_runtime.setdefault(r["runtime"], {})[r["batch"]] = r
    full = {k: v for k, v in by_runtime.items() if len(v) == len(batches)}
    if not full:
        return None
    pick = max(full, key=lambda k: min(score(r) for r in full[k].values()))
    chosen = full[pick]
    ratios = {b: chosen[b]["ratio"] for b in batches}
    return dict(
        runtime=pick, label=chosen[batches[0]]["label"], ratios=ratios,
        best_peers={b: chosen[b]["best_peer"] for b in batches},
        target=target,
        holds=(all(v is not None and v >= target for v in ratios.values())
               if all(v is not None for v in ratios.values()) else None),
        fastest_exact=fastest(lambda r: r["exact"]),
        fastest_int8=fastest(lambda r: r["precision"].startswith("int8")),
        fastest_bf16=fastest(lambda r: r["precision"] == "bf16"))


def _ratio_cell(row):
    if row["peer"]:
        return "best peer" if row["label"] == row["best_peer"] else "peer"
    return "-" if row["ratio"] is None else f"{row['ratio']:.2f}×"


def serving_table(rows):
    """Markdown: one line per configuration, images/s and the ratio to the
    best peer at each batch."""
    batches = sorted({r["batch"] for r in rows})
    head = ("| route | precision | "
            + " | ".join(f"batch {b} img/s (per round) | ratio"
                         for b in batches)
            + " | export s | file MB | peak RSS GB |")
    lines = [head, "| --- " * (2 * len(batches) + 5) + "|"]
    names = []
    for r in rows:
        if (r["peer"], r["label"]) not in names:
            names.append((r["peer"], r["label"]))
    names.sort(key=lambda k: k[0])  # keras_nfnets first, in run order
    for peer, name in names:
        at = {r["batch"]: r for r in rows if r["label"] == name}
        first = next(iter(at.values()))
        cells = []
        for b in batches:
            r = at.get(b)
            cells += (["-", "-"] if r is None else [
                f"{r['images_per_s']:.2f} ("
                + ", ".join(f"{v:.2f}" for v in r["rounds"]) + ")",
                _ratio_cell(r)])
        export = ("-" if first["export_s"] is None
                  else f"{first['export_s']:.0f}")
        size = ("-" if first["file_mb"] is None
                else f"{first['file_mb']:.0f}")
        lines.append(f"| {name} | {first['precision']} | "
                     + " | ".join(cells) + f" | {export} | {size} | "
                     f"{max(r['peak_rss_gb'] for r in at.values()):.2f} |")
    return "\n".join(lines)


def serving_lines(recommended):
    """The recommended route and the fastest routes, in words."""
    if not recommended:
        return []

    def at(entry, b):
        ratio = entry["ratio"]
        return (f"{entry['label']} at batch {b}"
                + ("" if ratio is None else f" ({ratio:.2f}×)"))
    ratios = recommended["ratios"]
    if all(v is not None for v in ratios.values()):
        said = ", ".join(f"{v:.2f}× the best peer at batch {b} "
                         f"({recommended['best_peers'][b]})"
                         for b, v in ratios.items())
        verdict = (f"; target ≥ {recommended['target']}× at every batch: "
                   f"{'met' if recommended['holds'] else 'not met'}")
    else:
        said, verdict = "no peers in this run", ""
    lines = [f"Recommended serving route (the fastest at its slowest batch "
             f"of the routes that give the model's numbers): "
             f"{recommended['label']}: {said}{verdict}."]
    for key, what in (("fastest_exact", "Fastest route with the model's "
                       "numbers"), ("fastest_int8", "Fastest int8 route"),
                      ("fastest_bf16", "Fastest bf16 route (against the "
                       "bf16 peers)")):
        if recommended.get(key):
            lines.append(f"{what}: " + "; ".join(
                at(e, b) for b, e in recommended[key].items()) + ".")
    return lines


def serving_ceiling(data, rows, target=SERVING_TARGET):
    """Per batch, the model's compute rate (its FLOPs per image x
    images/s, in GFLOP/s) of the best fp32 peer and of the fastest route
    with the model's numbers, against this CPU's fp32 ceiling (the median
    over the run's processes of `peers.gemm_ceiling_gflops`), and the rate
    that `target` x the best peer needs: over the ceiling, no fp32 route
    with the model's FLOPs reaches the target on this CPU. [] for a run
    without peers or recorded before the ceiling."""
    ceilings = [r["ceiling_gflops"] for r in data["runs"]
                if r.get("ceiling_gflops")]
    flops = next((r["flops_per_image"] for r in data["runs"]
                  if summary.is_peer(r) and r.get("flops_per_image")), None)
    if not ceilings or not flops:
        return []
    ceiling = statistics.median(ceilings)
    out = []
    for batch in sorted({r["batch"] for r in rows}):
        at = [r for r in rows if r["batch"] == batch
              and r["precision"] == "fp32"]
        peer = next((r for r in at if r["peer"]
                     and r["label"] == r.get("best_peer")), None)
        exact = [r for r in at if r["exact"]]
        if peer is None or not exact:
            continue
        ours = max(exact, key=lambda r: r["images_per_s"])
        rate = lambda r: r["images_per_s"] * flops / 1e9  # noqa: E731
        out.append(dict(
            batch=batch, ceiling_gflops=ceiling,
            ceiling_range=(min(ceilings), max(ceilings)),
            processes=len(ceilings), peer=peer["label"],
            peer_images_per_s=peer["images_per_s"],
            peer_gflops=rate(peer), ours=ours["label"],
            ours_images_per_s=ours["images_per_s"], ours_gflops=rate(ours),
            target=target, need_gflops=target * rate(peer)))
    return out


def serving_ceiling_table(lines):
    """Markdown for `serving_ceiling`: rates as GFLOP/s (% of the
    ceiling)."""
    if not lines:
        return ""

    def share(gflops, line):
        return f"{gflops:.0f} ({100 * gflops / line['ceiling_gflops']:.0f} %)"
    first = lines[0]
    low, high = first["ceiling_range"]
    out = [f"fp32 ceiling: {first['ceiling_gflops']:.0f} GFLOP/s (median "
           f"of the fastest 2048 x 2048 matrix product in each of the run's "
           f"{first['processes']} processes; range {low:.0f}-{high:.0f}). "
           "Shares are of the median; the last column also of the fastest "
           "process's.",
           "",
           "| batch | best fp32 peer: img/s, GFLOP/s (% of ceiling) | "
           "fastest route with the model's numbers: img/s, GFLOP/s "
           "(% of ceiling) | "
           f"{first['target']}× the best peer needs: img/s, GFLOP/s "
           "(% of ceiling; of the fastest process's) |",
           "| --- | --- | --- | --- |"]
    for line in lines:
        need = line["need_gflops"]
        out.append(
            f"| {line['batch']} | {line['peer']}: "
            f"{line['peer_images_per_s']:.2f}, "
            f"{share(line['peer_gflops'], line)} | {line['ours']}: "
            f"{line['ours_images_per_s']:.2f}, "
            f"{share(line['ours_gflops'], line)} | "
            f"{line['target'] * line['peer_images_per_s']:.2f}, "
            f"{need:.0f} ({100 * need / line['ceiling_gflops']:.0f} %; "
            f"{100 * need / high:.0f} %) |")
    return "\n".join(out)


def _serving_json(results, path):
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=1)


def serving_main(args):
    """Exports each artefact once, then measures every runtime and every
    peer at each batch, one fresh process each, interleaved over
    `--rounds`; prints and saves the ratios to the best peer."""
    import tempfile
    import keras_nfnets.variants as variants
    size = args.infer_size or variants.get_config(args.variant).test_imsize
    runtimes = [r for r in args.runtimes.split(",") if r]
    unknown = [r for r in runtimes if r not in SERVING]
    if unknown or not runtimes:
        raise SystemExit(f"--runtimes: unknown {unknown or 'none given'}; "
                         f"known: {', '.join(SERVING)}")
    batches = [int(b) for b in args.batches.split(",")]
    if min(batches) < 1:
        raise SystemExit(f"--batches must be >= 1, got {args.batches!r}")
    peer_names = check_peers(args.serving_peers)
    if peer_names and args.variant != "F0":
        raise SystemExit(f"the peers are timm's dm_nfnet_f0: --variant F0 "
                         f"(got {args.variant!r}) or --serving_peers none")
    cpu = peers.cpu_info()
    print(f"{cpu['model']}: {cpu['usable_cpus']} usable CPUs, {cpu['isa']}",
          flush=True)
    bf16 = wants_bf16(args.bf16, cpu)
    if not bf16:
        runtimes = [r for r in runtimes if SERVING[r][1] != "bf16"]
    results = dict(
        note=args.note, variant=args.variant, size=size,
        batches=args.batches, steps=args.steps, warmup=args.warmup,
        rounds=args.rounds, calibration=args.calibration, cpu=cpu,
        command="python benchmarks/benchmark.py " + " ".join(
            shlex.quote(a) for a in sys.argv[1:]),
        exports=[], runs=[])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    with tempfile.TemporaryDirectory() as tmp:
        args.onnx_export = None
        if "onnxruntime" in peer_names:
            args.onnx_export = export_peer_onnx(size, tmp)
            results["exports"].append(dict(args.onnx_export,
                                           runtime="timm_onnx"))
            print(f"timm -> ONNX export "
                  f"{args.onnx_export['export_s']:.0f} s", flush=True)
        artefacts = {}
        # The float ONNX export first: the int8 ONNX runtimes quantize it.
        for runtime in sorted(runtimes, key=lambda r: r != "onnx"):
            if SERVING[runtime][2] is None:
                continue
            path = os.path.join(tmp, SERVING[runtime][2])
            cmd = [sys.executable, os.path.abspath(__file__), "--child",
                   "serve_export", "--runtime", runtime, "--artefact", path,
                   "--variant", args.variant, "--size", str(size),
                   "--calibration", str(args.calibration)]
            if runtime.startswith("onnx_int8") and "onnx" in artefacts:
                cmd += ["--source_onnx", artefacts["onnx"]]
            res = _child_result(subprocess.run(
                cmd, capture_output=True, text=True, env=env),
                f"{runtime} export")
            artefacts[runtime] = path
            results["exports"].append(res)
            _serving_json(results, args.out)
            print(f"export {runtime:20s} {res['export_s']:.0f} s, "
                  f"{res['file_mb']:.0f} MB, logits vs Keras: "
                  f"{res['rel_diff_vs_keras']:.1e} (relative)", flush=True)
        configs = [("ours", r, None, None) for r in runtimes] + [
            ("peer", name, b, None) for name in peer_names for b in batches]
        if bf16:  # the bf16 routes against the peers' bf16 runs
            configs += [("peer", name, b, "bfloat16") for name in peer_names
                        if name in SERVING_BF16_PEERS for b in batches]
        for r in range(args.rounds):
            for kind, name, batch, precision in configs:
                if kind == "ours":
                    cmd = [sys.executable, os.path.abspath(__file__),
                           "--child", "serve", "--runtime", name,
                           "--artefact", artefacts.get(name, ""),
                           "--variant", args.variant, "--size", str(size),
                           "--batches", args.batches,
                           "--steps", str(args.steps),
                           "--warmup", str(args.warmup)]
                    res = _child_result(subprocess.run(
                        cmd, capture_output=True, text=True, env=env), name)
                    speeds = "  ".join(
                        f"batch {b}: {v['images_per_s']:.2f} img/s"
                        for b, v in res["batches"].items())
                else:
                    res = spawn_peer(dict(impl=name, mode="infer",
                                          batch=batch, size=size,
                                          precision=precision or "float32"),
                                     args)
                    speeds = (f"batch {batch}: {res['images_per_s']:.2f} "
                              f"img/s")
                res["round"] = r
                results["runs"].append(res)
                _serving_json(results, args.out)  # a failure loses nothing
                print(f"round {r} {res.get('label') or summary.label(res):42s}"
                      f" {speeds}  rss {res['peak_rss_gb']:.2f} GB",
                      flush=True)
    rows = serving_rows(results)
    results["summary"] = rows
    results["recommended"] = serving_recommendation(rows)
    results["ceiling"] = serving_ceiling(results, rows)
    _serving_json(results, args.out)
    print()
    print(summary.cpu_line(results["runs"]))
    print()
    print(serving_table(rows))
    print()
    for line in serving_lines(results["recommended"]):
        print(line)
    if results["ceiling"]:
        print()
        print(serving_ceiling_table(results["ceiling"]))


def sgd_training():
    """The training setup both sides of every comparison use: Nesterov
    SGD (0.1, momentum 0.9) on the cross-entropy of logits, as
    `model.compile` arguments (timm's: `peers.timm_train_step`)."""
    import keras
    return dict(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def _agc_kwargs(args):
    """AGC arguments for `NFNetModel.compile`, when the package has AGC."""
    import inspect
    import keras_nfnets
    params = inspect.signature(keras_nfnets.NFNetModel.compile).parameters
    if "agc_clipping" not in params:
        return {}
    # NFNetModel.compile clips by default; --agc_clipping 0 turns it off.
    return {"agc_clipping": args.agc_clipping if args.agc_clipping > 0
            else None}


def _child_result(out, what):
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"benchmark child {what} failed (exit "
                       f"{out.returncode}):\n{out.stderr[-3000:]}")


def spawn(config, common):
    """One keras_nfnets measurement (`config`) in a fresh process."""
    if config.get("impl", "keras_nfnets") != "keras_nfnets":
        return spawn_peer(config, common)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", config["mode"],
           "--variant", common.variant, "--batch", str(config["batch"]),
           "--size", str(config["size"]), "--precision", common.precision,
           "--steps", str(common.steps), "--warmup", str(common.warmup),
           "--agc_clipping", str(config.get("agc_clipping",
                                            common.agc_clipping)),
           "--backend", config.get("backend", "tensorflow")]
    if common.jit:
        cmd.append("--jit")
    cmd += ["--remat", config.get("remat", common.remat)]
    cmd += ["--allocator", config.get("allocator", common.allocator)]
    if config.get("grouped_conv"):
        cmd += ["--grouped_conv", config["grouped_conv"]]
    threads = config.get("tf_threads", common.tf_threads)
    if threads:
        cmd += ["--tf_threads", threads]
    if config.get("precision"):  # a bf16 row (bf16_configs): the last wins
        cmd += ["--precision", config["precision"]]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return _child_result(out, config)


def peer_command(config, common, onnx=None):
    """The command line of one peer measurement (benchmarks/peers.py).
    The torch.compile peer warms up for at least two steps: its first step
    compiles, and a second compilation at the second call (a guard that
    fails once) is not a steady-state step."""
    warmup = common.warmup
    if config["impl"] == "timm_compile":
        warmup = max(warmup, 2)
    cmd = [sys.executable, os.path.join(os.path.dirname(
               os.path.abspath(__file__)), "peers.py"),
           "--impl", config["impl"], "--mode", config["mode"],
           "--batch", str(config["batch"]), "--size", str(config["size"]),
           "--steps", str(common.steps), "--warmup", str(warmup),
           "--agc_clipping", str(config.get("agc_clipping",
                                            common.agc_clipping))]
    if config.get("precision", "float32") != "float32":
        cmd += ["--precision", config["precision"]]
    if getattr(common, "timm_model", None):
        cmd += ["--model", common.timm_model]
    if config["impl"] == "onnxruntime":
        cmd += ["--onnx", onnx["path"],
                "--flops_per_image", str(onnx["flops_per_image"])]
    return cmd


def peer_error_row(config, reason, common=None):
    """The row of a peer whose child died without a result: the
    configuration, this machine's CPU and why, so that the run goes on
    and the tables name it."""
    row = dict(impl=config["impl"], mode=config["mode"],
               batch=config["batch"], size=config["size"],
               precision=config.get("precision", "float32"),
               cpu=peers.cpu_info(), error=reason, error_phase="process")
    if config["mode"] == "train":
        clip = config.get("agc_clipping", getattr(common, "agc_clipping", 0))
        row["agc_clipping"] = clip if clip and clip > 0 else None
    return row


def spawn_peer(config, common):
    """One peer measurement in a fresh process without TensorFlow; a
    peer that fails gives an error row (`error`), never an exception."""
    env = dict(os.environ)
    if config["impl"] == "onnxruntime" and common.onnx_export.get("error"):
        return peer_error_row(config, "timm's ONNX export failed: "
                              + common.onnx_export["error"], common)
    out = subprocess.run(peer_command(config, common, common.onnx_export),
                         capture_output=True, text=True, env=env)
    try:
        result = _child_result(out, config)
    except RuntimeError:
        tail = " ".join(out.stderr.strip().splitlines()[-3:])
        return peer_error_row(config, f"the child exited with "
                              f"{out.returncode} and no result: {tail}"[:800],
                              common)
    if config["impl"] == "onnxruntime":
        result["onnx_export_s"] = common.onnx_export["export_s"]
    return result


def export_peer_onnx(size, folder, model=None):
    """timm's model exported once, before the rounds, for onnxruntime;
    `{"error": ...}` where the export failed (the ONNX Runtime rows then
    say so)."""
    path = os.path.join(folder, "dm_nfnet_f0.onnx")
    cmd = [sys.executable, os.path.join(os.path.dirname(
        os.path.abspath(__file__)), "peers.py"), "--export_onnx", path,
        "--size", str(size)] + (["--model", model] if model else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    try:
        return _child_result(out, "onnx export")
    except RuntimeError:
        tail = " ".join(out.stderr.strip().splitlines()[-3:])
        return dict(error=f"exit {out.returncode}: {tail}"[:800])


def check_peers(names):
    """The peers asked for, validated, with their packages present."""
    import importlib.util
    names = [n for n in names.split(",") if n and n != "none"]
    for n in names:
        if n not in peers.PEERS:
            raise SystemExit(f"unknown peer {n!r}; known: "
                             f"{', '.join(peers.PEERS)} (or none)")
    needed = {"timm": ["torch", "timm"],
              "timm_channels_last": ["torch", "timm"],
              "timm_compile": ["torch", "timm"],
              "onnxruntime": ["torch", "timm", "onnx", "onnxruntime"],
              "openvino": ["torch", "timm", "openvino"]}
    missing = sorted({m for n in names for m in needed[n]
                      if importlib.util.find_spec(m) is None})
    if missing:
        raise SystemExit(f"the peers {names} need {', '.join(missing)}: "
                         f"pip install -e '.[bench]' (make bench builds "
                         f".venv-bench with it), or --peers none")
    return names


# The timm peers that get a bf16 row (torch.compile's would add its
# compilation again for little: the eager bf16 rows show bf16's effect).
BF16_PEERS = ("timm", "timm_channels_last")
# The serving peers that get a bf16 run where the CPU has bf16 arithmetic
# (against the OpenVINO bf16 route).
SERVING_BF16_PEERS = BF16_PEERS + ("openvino",)
# keras_nfnets' bf16 policy (fp32 variables, bf16 compute).
KERAS_BF16 = "mixed_bfloat16"


def wants_bf16(setting, cpu):
    """Whether a run adds the bf16 rows: `setting` is "on", "off" or
    "auto" (when `cpu`, a `peers.cpu_info()` record, has bf16 arithmetic:
    `avx512_bf16` or AMX's `amx_bf16`)."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"--bf16 must be auto, on or off, got {setting!r}")
    if setting == "auto":
        return bool(cpu.get("avx512_bf16") or cpu.get("amx_bf16"))
    return setting == "on"


def bf16_configs(configs, precision="float32"):
    """bf16 copies of one round's configurations, per mode: keras_nfnets'
    defaults (the first keras_nfnets configuration of the mode, under
    `mixed_bfloat16`) and the timm peers of `BF16_PEERS` that the round
    has, with AGC (under `torch.autocast(..., torch.bfloat16)`). Nothing
    when the run's own precision is not fp32."""
    if precision != "float32":
        return []
    out = []
    for mode in dict.fromkeys(c["mode"] for c in configs):
        of_mode = [c for c in configs if c["mode"] == mode]
        ours = next((c for c in of_mode
                     if c.get("impl", "keras_nfnets") == "keras_nfnets"),
                    None)
        if ours is not None:
            out.append(dict(ours, precision=KERAS_BF16))
        out += [dict(c, precision="bfloat16") for c in of_mode
                if c.get("impl") in BF16_PEERS and "agc_clipping" not in c]
    return out


def progress_line(r, res):
    """One row of a run, as it comes in."""
    head = f"round {r} {res['mode']:5s} {summary.label(res):50s} "
    if res.get("error"):
        return head + f"FAILED: {res['error']}"
    return (head + f"{res['images_per_s']:.2f} img/s  "
            f"rss {res['peak_rss_gb']:.2f} GB  "
            f"first step {res['first_step_s_since_start']:.1f} s")


BUSY_LOOP = ("import os, sys\n"
             "os.sched_setaffinity(0, {int(sys.argv[1])})\n"
             "while True:\n    pass\n")


def start_contention(cpu=0):
    """A busy-loop process pinned to `cpu`: a fixed background load on one
    core for the whole run. Returns (process, record for the JSON)."""
    proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(cpu)])
    return proc, dict(kind="busy loop (python while True)", cpu=cpu,
                      pid=proc.pid)


def build_configs(args, train_size, infer_size, peer_names):
    """The configurations of one round, keras_nfnets' and the peers',
    grouped by mode so that each peer runs next to its keras_nfnets
    counterpart."""
    configs = []
    gcs = [args.grouped_conv]
    if args.compare_grouped_conv:
        gcs = ["split", "native"]
    for mode in args.modes.split(","):
        size = train_size if mode == "train" else infer_size
        for gc in gcs:
            for backend in args.backend.split(","):
                configs.append(dict(mode=mode, batch=args.batch, size=size,
                                    grouped_conv=gc, backend=backend))
                base = configs[-1]
                if mode == "train" and args.compare_remat:
                    # "auto" decides by memory (the row records what);
                    # "on" is what "auto" did on every CPU before issue 30.
                    base["remat"] = "auto"
                    configs.append(dict(base, remat="on"))
                if mode == "train" and args.compare_allocator:
                    base["allocator"] = "default"
                    configs.append(dict(base, allocator="lean"))
                if (mode == "train" and getattr(args, "compare_agc", False)
                        and args.agc_clipping > 0):
                    # AGC off: the same step without the clip and the
                    # non-finite skip, for AGC's per-step share.
                    configs.append(dict(base, agc_clipping=0))
                if backend == "tensorflow" and mode in args.compare_threads_modes:
                    for spec in args.compare_threads:
                        configs.append(dict(base, tf_threads=spec))
        for name in peer_names:
            if name not in peers.TORCH_PEERS and mode != "infer":
                continue  # ONNX Runtime and OpenVINO: inference peers
            configs.append(dict(impl=name, mode=mode, batch=args.batch,
                                size=size))
            if (name == "timm" and mode == "train"
                    and getattr(args, "compare_peer_agc", False)):
                configs.append(dict(configs[-1], agc_clipping=0))
    return configs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="F0")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--train_size", type=int, default=None,
                   help="training resolution (default: the variant's)")
    p.add_argument("--infer_size", type=int, default=None,
                   help="inference resolution (default: the variant's test)")
    p.add_argument("--precision", default="float32",
                   choices=["float32", "mixed_bfloat16", "mixed_float16"])
    p.add_argument("--jit", action="store_true", help="XLA (jit_compile)")
    p.add_argument("--agc_clipping", type=float, default=0.01,
                   help="AGC clip factor for keras_nfnets and timm's "
                        "adaptive_clip_grad (0: none)")
    p.add_argument("--grouped_conv", default=None,
                   choices=[None, "split", "native"])
    p.add_argument("--compare_grouped_conv", action="store_true",
                   help="also run the native grouped convolution")
    p.add_argument("--remat", default="auto", choices=sorted(_REMAT),
                   help="recompute each block's activations in backward "
                        "(auto: the model's default, decided by memory)")
    p.add_argument("--compare_remat", action="store_true",
                   help="run training both with remat auto and on")
    p.add_argument("--allocator", default="default",
                   choices=["default", "lean"],
                   help="lean: keras_nfnets.use_lean_cpu_allocator() (less "
                        "memory, slower on CPU)")
    p.add_argument("--compare_allocator", action="store_true",
                   help="run training with both allocators")
    p.add_argument("--tf_threads", default=None, metavar="INTRA:INTER",
                   help="TensorFlow's intra-/inter-op thread pools for "
                        "every keras_nfnets child (0: TF's default)")
    p.add_argument("--compare_threads", default="", metavar="I:J,...",
                   help="also run keras_nfnets with each of these "
                        "INTRA:INTER thread settings")
    p.add_argument("--compare_threads_modes", default="train",
                   help="the modes --compare_threads applies to")
    p.add_argument("--peers", default="none",
                   help="peer configurations, comma-separated: "
                        + ", ".join(peers.PEERS) + " (or none); make bench "
                        "runs all three")
    p.add_argument("--compare_peer_agc", action="store_true",
                   help="also train timm eager without AGC (timm's "
                        "default training has none)")
    p.add_argument("--compare_agc", action="store_true",
                   help="also train keras_nfnets without AGC "
                        "(agc_clipping=None: no clip, no non-finite skip), "
                        "for AGC's per-step share beside timm's "
                        "(--compare_peer_agc)")
    p.add_argument("--timm_model", default=None,
                   help="the peers' timm model (default dm_nfnet_f0, against "
                        "--variant F0; the tests: test_nfnet against a tiny "
                        "config)")
    p.add_argument("--bf16", default="auto", choices=["auto", "on", "off"],
                   help="bf16 rows (keras_nfnets mixed_bfloat16, timm "
                        "under torch.autocast bf16) next to the fp32 "
                        "ones: auto adds them where the CPU has "
                        "avx512_bf16 or AMX")
    p.add_argument("--contended", action="store_true",
                   help="a busy-loop process pinned to one CPU for the "
                        "whole run (recorded in each row)")
    p.add_argument("--modes", default="train,infer")
    p.add_argument("--backend", default="tensorflow",
                   help="Keras backend(s), comma-separated, interleaved: "
                        "tensorflow, jax, torch (each child sets "
                        "KERAS_BACKEND before importing keras)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=None, help="write all results as JSON")
    p.add_argument("--serving", action="store_true",
                   help="CPU inference: Keras, folded, SavedModel, ONNX, "
                        "LiteRT, their int8 exports, against the peers "
                        "(see the module docstring)")
    p.add_argument("--runtimes", default=",".join(SERVING_RUNTIMES),
                   help="--serving: keras_nfnets' runtimes, of "
                        + ", ".join(SERVING_RUNTIMES))
    p.add_argument("--serving_peers", default=SERVING_PEERS,
                   help="--serving: the peers at each batch, of "
                        + ", ".join(peers.PEERS) + " (or none)")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--calibration", type=int, default=8,
                   help="--serving: calibration images of the calibrated "
                        "int8 exports")
    p.add_argument("--note", default="",
                   help="--serving: a note stored in the JSON")
    # child-only
    p.add_argument("--child", choices=["train", "infer", "serve",
                                       "serve_export"], default=None)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--runtime", choices=SERVING_RUNTIMES, default=None)
    p.add_argument("--artefact", default=None)
    p.add_argument("--source_onnx", default=None)
    args = p.parse_args(argv)
    if args.tf_threads:
        parse_threads(args.tf_threads)
    args.compare_threads = [s for s in args.compare_threads.split(",") if s]
    for spec in args.compare_threads:
        parse_threads(spec)
    args.compare_threads_modes = args.compare_threads_modes.split(",")

    if args.child == "serve":
        run_serving_child(args)
        return
    if args.child == "serve_export":
        run_serving_export(args)
        return
    if args.child:
        run_child(args)
        return
    if args.serving:
        serving_main(args)
        return

    peer_names = check_peers(args.peers)
    import keras_nfnets.variants as variants
    cfg = variants.get_config(args.variant)
    train_size = args.train_size or cfg.train_imsize
    infer_size = args.infer_size or cfg.test_imsize
    if peer_names and args.variant != "F0" and not args.timm_model:
        raise SystemExit(f"the peers are timm's dm_nfnet_f0: --variant F0 "
                         f"(got {args.variant!r}), --peers none, or name "
                         f"their model with --timm_model")
    configs = build_configs(args, train_size, infer_size, peer_names)
    cpu = peers.cpu_info()
    print(f"{cpu['model']}: {cpu['usable_cpus']} usable CPUs, {cpu['isa']}",
          flush=True)
    if wants_bf16(args.bf16, cpu):
        added = bf16_configs(configs, args.precision)
        configs += added
        print(f"bf16 rows: {len(added)} configurations ({args.bf16}; "
              f"CPU bf16: {cpu['bf16']})", flush=True)
    contention = None
    results = []
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if args.contended:
                contention, record = start_contention()
                print(f"contended: {record['kind']} on CPU {record['cpu']}",
                      flush=True)
            args.onnx_export = None
            if "onnxruntime" in peer_names and any(
                    c["mode"] == "infer" for c in configs):
                args.onnx_export = export_peer_onnx(infer_size, tmp,
                                                    args.timm_model)
                print("timm -> ONNX export " + (
                    f"failed: {args.onnx_export['error']}"
                    if "error" in args.onnx_export else
                    f"{args.onnx_export['export_s']:.0f} s"), flush=True)
            for r in range(args.rounds):
                for config in configs:
                    res = spawn(config, args)
                    res["round"] = r
                    if contention:
                        res["contended"] = record
                    results.append(res)
                    print(progress_line(r, res), flush=True)
        finally:
            if contention:
                contention.kill()
                contention.wait()
    if args.out:  # first: a table that fails to print loses nothing
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    print_table([r for r in results if not summary.is_peer(r)
                 and r.get("precision", "float32") == args.precision])
    if peer_names:
        print_peer_table(results)


def print_peer_table(results):
    """The interleaved table with the peers, each keras_nfnets
    configuration's ratio to the best peer, the CPU, and the roofline."""
    s = summary.summarize(results)
    print()
    print(summary.cpu_line(results))
    print()
    print(summary.ratio_table(s))
    for line in summary.failed_lines(results):
        print(line)
    print()
    for line in summary.ratio_lines(s):
        print(line)
    lines = summary.roofline(s, results)
    if lines:
        print()
        print(summary.roofline_table(lines))


def print_table(results):
    if not results:
        return
    def key(r):
        return (r.get("backend", "tensorflow"), r["mode"], r["grouped_conv"],
                r["size"], r["remat"], r.get("allocator", "default"),
                r.get("tf_threads") or "default",
                "off" if r["mode"] == "train" and "agc_clipping" in r
                and r["agc_clipping"] is None else "-" if r["mode"] != "train"
                else "on")
    keys = sorted({key(r) for r in results})
    print()
    print("| backend | mode | grouped conv | remat | allocator | threads | "
          "AGC | batch x px | "
          "img/s (median of rounds) | "
          "img/s per round | peak RSS GB | first step s | GFLOP/img | "
          "matmul GFLOP/s | MFU |")
    print("| --- " * 15 + "|")
    for k in keys:
        backend, mode, gc, size, remat, allocator, threads, agc = k
        rs = [r for r in results if key(r) == k]
        ips = [r["images_per_s"] for r in rs]
        print(f"| {backend} | {mode} | {gc} | {'on' if remat else 'off'} | "
              f"{allocator} | {threads} | {agc} | "
              f"{rs[0]['batch']} x {size} | "
              f"{statistics.median(ips):.2f} | "
              f"{', '.join(f'{v:.2f}' for v in ips)} | "
              f"{max(r['peak_rss_gb'] for r in rs):.2f} | "
              f"{statistics.median(r['first_step_s_since_start'] for r in rs):.1f} | "
              f"{rs[0]['flops_per_image'] / 1e9:.2f} | "
              f"{statistics.median(r['matmul_gflops'] for r in rs):.0f} | "
              f"{statistics.median(r['mfu'] for r in rs):.1%} |")


if __name__ == "__main__":
    main()
