"""The int8 and bf16 routes' accuracy change, on a model this repository
trains.

`keras_nfnets.export_quantized` writes int8 LiteRT / ONNX artefacts whose
numbers are not the model's, and OpenVINO computes an fp32 IR in bf16 by
default on a CPU with bf16 arithmetic. This measures by how much, on the offline
demo model (`python -m training.train --demo`: a small NFNet trained on
the bundled CIFAR-10 JPEGs) and its 1,000 held-out images, preprocessed as
the training program evaluates them (`training.evaluate`): top-1 against
the labels, agreement of each prediction with the float Keras model's,
and the mean and largest change of the logits, for the float Keras model,
its float exports (which must give its numbers) and each int8 export
(dynamic-range, and full-integer calibrated on training images, never on
the held-out ones), and its OpenVINO IR run at fp32 and, where the CPU
has bf16 arithmetic, at bf16.

    python benchmarks/int8_accuracy.py --out benchmarks/results_int8.json
    python benchmarks/int8_accuracy.py --model_dir /tmp/demo --formats litert

The demo is trained first when `--model_dir` holds no finished run
(`model.keras` and `metrics.json`); the training command, its time and
the run's own top-1 (`metrics.json`) are recorded beside the results.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark  # noqa: E402  (artefact_mb; no TensorFlow at import)
import peers  # noqa: E402  (cpu_info; no TensorFlow or torch at import)

FORMATS = ("litert", "onnx", "openvino")
# The precisions measured per format: (precision, calibrated?).
PRECISIONS = {
    "litert": ("fp32", "int8 dynamic-range", "int8 full-integer"),
    "onnx": ("fp32", "int8 dynamic-range", "int8 full-integer"),
    "openvino": ("fp32", "bf16"),
}
SUFFIX = {"litert": ".tflite", "onnx": ".onnx", "openvino": ".xml"}


def train_demo(model_dir):
    """Runs the offline demo into `model_dir`; returns its record."""
    cmd = [sys.executable, "-m", "training.train", "--demo",
           f"--model_dir={model_dir}"]
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    if out.returncode:
        raise SystemExit(f"the demo training failed (exit {out.returncode})"
                         f":\n{out.stderr[-3000:]}")
    return dict(command="python -m training.train --demo "
                        f"--model_dir={model_dir}",
                wall_s=time.perf_counter() - t)


def load_images(paths, preprocess):
    import numpy as np
    import tensorflow as tf
    return np.stack([preprocess(tf.io.read_file(p)).numpy() for p in paths])


def run_litert(path, x, batch=100):
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=path)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    outs = []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        interpreter.resize_tensor_input(inp["index"], chunk.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], chunk)
        interpreter.invoke()
        outs.append(interpreter.get_tensor(out["index"]).copy())
    return np.concatenate(outs)


def run_onnx(path, x, batch=100):
    import numpy as np
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch]})[0]
                           for i in range(0, len(x), batch)])


def run_openvino(path, x, batch=100, precision="fp32"):
    import numpy as np
    import openvino as ov
    compiled = ov.Core().compile_model(path, "CPU", {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"})
    return np.concatenate([compiled(x[i:i + batch])[0]
                           for i in range(0, len(x), batch)])


def compare(logits, reference, labels):
    """Top-1, agreement with the reference's predictions, and the change
    of the logits."""
    import numpy as np
    diff = np.abs(logits - reference)
    return dict(
        top1=float(np.mean(logits.argmax(-1) == labels)),
        agreement=float(np.mean(logits.argmax(-1) == reference.argmax(-1))),
        mean_abs_logit_diff=float(diff.mean()),
        max_abs_logit_diff=float(diff.max()),
        mean_abs_logit=float(np.abs(reference).mean()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_dir", default=os.path.join(
        tempfile.gettempdir(), "keras_nfnets_demo_int8"),
        help="a finished demo run (model.keras, metrics.json); trained "
             "there first when it has none")
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--calibration", type=int, default=256,
                   help="training images that calibrate the full-integer "
                        "exports")
    p.add_argument("--note", default="")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    formats = [f for f in args.formats.split(",") if f]
    if not formats or any(f not in FORMATS for f in formats):
        p.error(f"--formats must be among {FORMATS}, got {args.formats!r}")
    if args.calibration < 1:
        p.error(f"--calibration must be >= 1, got {args.calibration}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    model_path = os.path.join(args.model_dir, "model.keras")
    metrics_path = os.path.join(args.model_dir, "metrics.json")
    trained = None
    if not (os.path.exists(model_path) and os.path.exists(metrics_path)):
        print(f"training the demo into {args.model_dir} ...", flush=True)
        trained = train_demo(args.model_dir)
        print(f"trained in {trained['wall_s']:.0f} s", flush=True)
    import numpy as np
    import keras
    import keras_nfnets
    from training import data, evaluate
    from training.flags import DEMO_DATA
    with open(metrics_path) as f:
        metrics = json.load(f)
    model = keras.saving.load_model(model_path, compile=False)
    source = data.folder_source(DEMO_DATA)
    preprocess = evaluate.tf_preprocess(
        evaluate.eval_preprocessing(model, model_path))
    held_out = source.files[source.eval_split]
    train = source.files[source.train_split]
    pick = np.random.default_rng(0).permutation(len(train))[
        :args.calibration]
    x = load_images([path for path, _ in held_out], preprocess)
    labels = np.array([label for _, label in held_out])
    calibration = load_images([train[i][0] for i in pick], preprocess)
    print(f"{len(x)} held-out images {x.shape[1:]}, {len(calibration)} "
          f"calibration images from the training split", flush=True)

    reference = np.asarray(model.predict(x, batch_size=100, verbose=0))
    rows = [dict(route="keras", format="keras", precision="fp32",
                 **compare(reference, reference, labels))]
    cpu = peers.cpu_info()
    folded = keras_nfnets.fold_weight_standardization(model)
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in formats:
            for precision in PRECISIONS[fmt]:
                if precision == "bf16" and not cpu.get("bf16"):
                    print(f"{fmt} bf16: skipped (this CPU has no bf16 "
                          f"arithmetic)", flush=True)
                    continue
                data_ = calibration if precision.endswith(
                    "full-integer") else None
                path = os.path.join(tmp, precision.split()[-1] + SUFFIX[fmt])
                t = time.perf_counter()
                if precision.startswith("int8"):
                    keras_nfnets.export_quantized(
                        model, path, format=fmt, calibration_data=data_,
                        verbose=False)
                else:
                    folded.export(path, format=fmt, verbose=False)
                export_s = time.perf_counter() - t
                if fmt == "openvino":
                    logits = run_openvino(path, x, precision=precision)
                else:
                    logits = {"litert": run_litert, "onnx": run_onnx}[fmt](
                        path, x)
                row = dict(route=f"{fmt} {precision}", format=fmt,
                           precision=precision, export_s=export_s,
                           file_mb=benchmark.artefact_mb(path),
                           calibration_images=(None if data_ is None
                                               else len(data_)),
                           **compare(logits.reshape(reference.shape),
                                     reference, labels))
                rows.append(row)
                print(f"{row['route']:28s} top-1 {100 * row['top1']:.1f} % "
                      f"agreement {100 * row['agreement']:.1f} % "
                      f"mean |logit diff| {row['mean_abs_logit_diff']:.4f} "
                      f"max {row['max_abs_logit_diff']:.3f} "
                      f"{row['file_mb']:.2f} MB", flush=True)
    result = dict(
        note=args.note, model="the offline demo NFNet "
        "(training/demo_data/nfnet_demo.json)",
        model_dir=args.model_dir, demo_training=trained,
        demo_metrics=dict(top1=metrics.get("top1"),
                          raw_top1=metrics.get("raw_top1")),
        held_out_images=len(x), image_size=int(x.shape[1]),
        calibration_images=len(calibration),
        calibration_from="training split, a fixed random sample (seed 0)",
        cpu=cpu, framework=_versions(),
        command="python benchmarks/int8_accuracy.py " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None
                                     else sys.argv[1:])),
        rows=rows)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print(f"the demo run's own held-out top-1 (metrics.json, EMA weights): "
          f"{100 * metrics['top1']:.1f} %; float Keras here: "
          f"{100 * rows[0]['top1']:.1f} %")


def _versions():
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in ("tensorflow", "keras", "onnxruntime", "ai-edge-litert",
                 "openvino"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


if __name__ == "__main__":
    main()
