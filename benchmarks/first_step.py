"""Where NFNet-F0's first training step spends its time, from process start.

Issue 16's target is a first step <= 30 s from process start (F0, batch 8
at 192 px, fp32, SGD with Nesterov momentum and AGC, TensorFlow backend,
the package's defaults). Each configuration runs in a fresh process, as
benchmarks/benchmark.py measures `first_step_s_since_start`, and the child
records when each phase ends, in seconds since the process started
(/proc/self/stat, so the interpreter's own start-up is counted):

  * `import tensorflow`, `import keras`, `import keras_nfnets` done;
  * the model built (`keras_nfnets.NFNet(variant, weights=None)`, as
    benchmark.py builds it), compiled (SGD + Nesterov, AGC 0.01), and the
    train function made (`Model.make_train_function`, which builds the
    optimizer's variables);
  * tracing of the train step by `tf.function`: `train_step` entered, the
    loss computed (the forward traced), the optimizer's `apply_gradients`
    entered (autodiff traced, remat's recomputed forward and the custom
    gradients included) and left (momentum update and AGC traced), and
    `train_step` left. The model's `train_step`, `compute_loss` and the
    optimizer's `apply_gradients` are wrapped on the instance to take the
    times; the wrappers run only while `tf.function` traces;
  * grappler's start and end, and the time of each of its passes, from
    TensorFlow's own log (`TF_CPP_VMODULE=meta_optimizer=1`, timestamped
    lines on the child's stderr);
  * the end of the first `train_on_batch` step; then two more steps, the
    steady-state step time, so that a setting that shortens the first step
    but slows every later one shows.

Configurations (`--configs`, each a fresh process): `defaults`; `remat_off`
(`remat=False`); `grappler_off`
(`tf.config.optimizer.set_experimental_options({"disable_meta_optimizer":
True})`); `no_<option>` for each of grappler's switchable passes
(`no_remapping`, `no_constant_folding`, ...); `onednn_off`
(`TF_ENABLE_ONEDNN_OPTS=0`); `agc_off` (`agc_clipping=None`, a diagnostic:
AGC's share of tracing the update); `agc_skip_only` (AGC's non-finite-step
skip without its clip, `AGC(SGD, clipping=None)`: which part of that share
is the skip); and `top_passes`, which stands for `no_<pass>`
of the `--top_passes` passes that took the longest in the `defaults` run
before it. Public TensorFlow / Keras switches only; no package default is
changed.

    python benchmarks/first_step.py                    # the recorded run
    python benchmarks/first_step.py --configs defaults,remat_off
    python benchmarks/first_step.py --variant tiny.json --size 40 --out x.json

`--out` writes every row (the phases, grappler's passes, the step times, the
CPU model, flags and load average at the child's start) as JSON, from which
render_docs.py renders docs/performance.md's table.
"""

import argparse
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import time

_START = time.time()

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark  # noqa: E402  (no TensorFlow at import)
import peers  # noqa: E402
import summary  # noqa: E402

# `tf.config.optimizer.set_experimental_options` switch of each grappler
# pass, by the name TensorFlow's meta-optimizer logs it under. The others
# it logs (common_subgraph_elimination, memory_optimizer, tfg_optimizer)
# have no switch of their own there; only `disable_meta_optimizer` stops
# them.
GRAPPLER_SWITCHES = {
    "constant_folding": "constant_folding",
    "arithmetic_optimizer": "arithmetic_optimization",
    "dependency_optimizer": "dependency_optimization",
    "layout": "layout_optimizer",
    "remapper": "remapping",
    "loop_optimizer": "loop_optimization",
    "shape_optimizer": "shape_optimization",
    "function_optimizer": "function_optimization",
    "implementation_selector": "implementation_selector",
    "debug_stripper": "debug_stripper",
    "pin_to_host_optimizer": "pin_to_host_optimization",
    "scoped_allocator_optimizer": "scoped_allocator_optimization",
    "model_pruner": "disable_model_pruning",
}


def pass_config_name(option):
    """`no_remapping`, ..., `no_model_pruning` (disable_model_pruning)."""
    return "no_" + option.removeprefix("disable_")


def _pass_config(option):
    # disable_model_pruning is a bool that turns the pass off when True;
    # the others are toggles.
    value = option == "disable_model_pruning"
    return dict(grappler={option: value},
                description=f"grappler pass off: {option}={value}")


CONFIGS = {
    "defaults": dict(description="the package's defaults"),
    "remat_off": dict(remat="off", description="remat=False"),
    "grappler_off": dict(grappler={"disable_meta_optimizer": True},
                         description="grappler off "
                                     "(disable_meta_optimizer=True)"),
    # A diagnostic, not a setting to train with: what AGC's share of the
    # optimizer's trace is.
    "agc_off": dict(agc_clipping=0, description="AGC off (agc_clipping=None;"
                                                " a diagnostic)"),
    # The non-finite skip alone (AGC(SGD, clipping=None)): what of AGC's
    # share is the skip rather than the clip. Also a diagnostic.
    "agc_skip_only": dict(agc_clipping=0, skip_only=True,
                          description="AGC's non-finite skip without the "
                                      "clip (AGC(SGD, clipping=None); a "
                                      "diagnostic)"),
    "onednn_off": dict(env={"TF_ENABLE_ONEDNN_OPTS": "0"},
                       description="TF_ENABLE_ONEDNN_OPTS=0 (Eigen kernels)"),
    **{pass_config_name(option): _pass_config(option)
       for option in GRAPPLER_SWITCHES.values()},
}
# The phases, in order: the name of the timestamp that ends each, and what
# it is called in the table.
PHASES = (("import_tf_s", "import tensorflow"),
          ("import_keras_s", "import keras"),
          ("import_keras_nfnets_s", "import keras_nfnets"),
          ("built_s", "model built"),
          ("compiled_s", "compiled"),
          ("train_function_s", "make_train_function (optimizer built)"),
          ("trace_start_s", "train_on_batch called, to train_step entered"),
          ("trace_forward_s", "trace: forward and loss"),
          ("trace_gradient_s", "trace: autodiff (remat, custom gradients)"),
          ("trace_update_s", "trace: optimizer update and AGC"),
          ("trace_done_s", "trace: metrics, train_step left"),
          ("instantiate_s", "function graph handed to TF's runtime"),
          ("grappler_start_s", "placement and pre-grappler passes"),
          ("grappler_end_s", "grappler"),
          ("graph_optimized_s", "post-grappler passes, partitioning "
                                "(oneDNN layout rewrite)"),
          ("instantiated_s", "executor and kernels created"),
          ("first_step_s_since_start", "first execution"))
# TensorFlow's own log of the train function's way to its first run
# (process_function_library_runtime=1): the phase each line ends.
RUNTIME_EVENTS = (("instantiate_s", "Instantiating MultiDevice function"),
                  ("graph_optimized_s", "Finished graph optimizations for "
                                        "MultiDevice function"),
                  ("instantiated_s", "Instantiated MultiDevice function"))
VMODULE = "meta_optimizer=1,process_function_library_runtime=1"
# The name Keras' TensorFlow trainer gives the train step's tf.function.
TRAIN_FUNCTION = "one_step_on_data"


def process_start_time():
    """The wall-clock time this process started (the kernel's record, so
    the interpreter's start-up counts), or the script's start if /proc is
    not there."""
    try:
        with open("/proc/self/stat") as f:
            # Field 22, after the command name in parentheses.
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        now = time.time()
        return now - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return _START


# A TensorFlow log line: `I1202 06:22:25.896977  21665 file.cc:973] text`;
# before absl's log is initialised the date is 0000 and the time is
# 00:00:<seconds since the epoch>.
LOG_LINE = re.compile(r"^[IWEF](?P<md>\d{4}) (?P<h>\d\d):(?P<m>\d\d):"
                      r"(?P<s>\d+(?:\.\d+)?)\s+\d+ (?P<src>[\w.]+):\d+\] "
                      r"(?P<text>.*)$")
PASS_LINE = re.compile(r"^(?P<name>[^:{]+)(?:\{.*\})?: Graph size after: "
                       r"(?P<nodes>\d+) nodes \((?P<dnodes>-?\d+)\), "
                       r"(?P<edges>\d+) edges \((?P<dedges>-?\d+)\), "
                       r"time = (?P<ms>[\d.]+)ms\.")


def log_time(match, year=None):
    """The wall-clock time of a LOG_LINE match."""
    if match["md"] == "0000":
        return float(match["s"])
    import calendar
    year = year or time.gmtime().tm_year
    seconds = float(match["s"])
    whole = calendar.timegm((year, int(match["md"][:2]), int(match["md"][2:]),
                             int(match["h"]), int(match["m"]), int(seconds),
                             0, 0, 0))
    return whole + seconds % 1


def parse_grappler_log(text, year=None):
    """Grappler's work from TensorFlow's log (`TF_CPP_VMODULE=
    meta_optimizer=1`): the wall time of its first and last line, each item
    (function) it optimized with its own first and last line and
    milliseconds, the graph size of the first item before its first pass,
    and the milliseconds of each pass summed over items and iterations.
    `year`: of the dated lines (default: this year's; the log has none)."""
    start = end = None
    items, passes, first_nodes = [], {}, None
    for line in text.splitlines():
        match = LOG_LINE.match(line)
        if not match or not match["src"].startswith("meta_optimizer"):
            continue
        t = log_time(match, year)
        start = t if start is None else start
        end = t
        body = match["text"]
        if body.startswith("Starting optimization for grappler item: "):
            items.append(dict(name=body.split(": ", 1)[1], start=t, end=t,
                              ms=0.0))
            continue
        if items:
            items[-1]["end"] = t
        p = PASS_LINE.match(body)
        if p:
            name = p["name"].strip()
            passes[name] = passes.get(name, 0.0) + float(p["ms"])
            if items:
                items[-1]["ms"] = round(items[-1]["ms"] + float(p["ms"]), 1)
            if first_nodes is None:
                first_nodes = int(p["nodes"]) - int(p["dnodes"])
    return dict(start=start, end=end, items=items, nodes_before=first_nodes,
                pass_ms={k: round(v, 1) for k, v in sorted(
                    passes.items(), key=lambda kv: -kv[1])})


def parse_runtime_log(text, function=TRAIN_FUNCTION, year=None):
    """The wall time of each RUNTIME_EVENTS line of the first function
    whose name contains `function` (its first occurrence)."""
    out = {}
    for line in text.splitlines():
        match = LOG_LINE.match(line)
        if (not match or "process_function_library_runtime" not in
                match["src"] or function not in match["text"]):
            continue
        for key, start in RUNTIME_EVENTS:
            if match["text"].startswith(start) and key not in out:
                out[key] = log_time(match, year)
    return out


def top_switchable_passes(row, n):
    """The `no_<option>` configurations of the `n` switchable grappler
    passes that took the longest in `row`."""
    names = [name for name in row["grappler"]["pass_ms"]
             if name in GRAPPLER_SWITCHES][:n]
    return [pass_config_name(GRAPPLER_SWITCHES[name]) for name in names]


def _stamp(times, key, start):
    times[key] = round(time.time() - start, 3)


def _wrap(owner, name, before=None, after=None, times=None, start=None):
    """Replaces the bound method `name` of `owner` (on the instance) with
    one that records the time before and after it runs."""
    method = getattr(owner, name)

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        if before:
            _stamp(times, before, start)
        out = method(*args, **kwargs)
        if after:
            _stamp(times, after, start)
        return out
    setattr(owner, name, wrapper)


def run_child(args):
    """One configuration in this process; prints `RESULT {json}`."""
    start = process_start_time()
    config = CONFIGS[args.child]
    times = {"script_start_s": round(_START - start, 3)}
    cpu = peers.cpu_info()
    import tensorflow as tf
    _stamp(times, "import_tf_s", start)
    if config.get("grappler"):
        tf.config.optimizer.set_experimental_options(config["grappler"])
    import keras
    _stamp(times, "import_keras_s", start)
    import numpy as np
    import keras_nfnets
    _stamp(times, "import_keras_nfnets_s", start)

    remat = config.get("remat", "auto")
    size = args.size
    model = keras_nfnets.NFNet(args.variant, weights=None,
                               input_shape=(size, size, 3),
                               classifier_activation=None,
                               remat=benchmark._REMAT[remat])
    _stamp(times, "built_s", start)
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)
    if config.get("skip_only"):
        optimizer = keras_nfnets.AGC(optimizer, clipping=None)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **benchmark._agc_kwargs(argparse.Namespace(
            agc_clipping=config.get("agc_clipping", args.agc_clipping))))
    _stamp(times, "compiled_s", start)
    stamp = dict(times=times, start=start)
    _wrap(model, "train_step", "trace_start_s", "trace_done_s", **stamp)
    _wrap(model, "compute_loss", None, "trace_forward_s", **stamp)
    _wrap(model.optimizer, "apply_gradients", "trace_gradient_s",
          "trace_update_s", **stamp)
    model.make_train_function()
    _stamp(times, "train_function_s", start)

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch, size, size, 3)).astype("float32")
    y = rng.integers(0, 1000, (args.batch,))
    row = dict(config=args.child, description=config["description"],
               variant=args.variant, batch=args.batch, size=size,
               remat_arg=remat, grappler_options=config.get("grappler", {}),
               env=config.get("env", {}),
               agc_clipping=config.get("agc_clipping", args.agc_clipping),
               framework=benchmark._framework(), cpu=cpu)
    steady = peers.timed(lambda: model.train_on_batch(x, y), 1, args.steps,
                         row, start=start)
    row["phases_s"] = times
    row["steady_step_s"] = [round(t, 3) for t in steady]
    row["steady_step_median_s"] = round(statistics.median(steady), 3)
    row["peak_rss_gb"] = round(peers.peak_rss_gb(), 3)
    row["process_start"] = start
    print("RESULT " + json.dumps(row), flush=True)


def spawn(name, args):
    """One configuration in a fresh process: its row, with grappler's
    log folded into the phases."""
    config = CONFIGS[name]
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name,
           "--variant", args.variant, "--batch", str(args.batch),
           "--size", str(args.size), "--steps", str(args.steps),
           "--agc_clipping", str(args.agc_clipping)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE=VMODULE,
               **config.get("env", {}))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env,
                         timeout=args.child_timeout_s)
    row = benchmark._child_result(out, name)
    grappler = parse_grappler_log(out.stderr)
    events = parse_runtime_log(out.stderr)
    main = next((i for i in grappler["items"] if TRAIN_FUNCTION in
                 i["name"]), grappler["items"][0] if grappler["items"]
                else None)
    if main is not None:
        events.update(grappler_start_s=main["start"],
                      grappler_end_s=main["end"])
    phases = row["phases_s"]
    phases.update({k: round(t - row["process_start"], 3)
                   for k, t in events.items()})
    phases["first_step_s_since_start"] = round(
        row["first_step_s_since_start"], 3)
    grappler["total_ms"] = round(sum(grappler["pass_ms"].values()), 1)
    for item in grappler["items"]:
        for key in ("start", "end"):
            item[key + "_s"] = round(item.pop(key) - row["process_start"], 3)
    del grappler["start"], grappler["end"]
    row["grappler"] = grappler
    row["durations_s"] = durations(phases)
    return row


def durations(phases):
    """Each phase's own seconds (PHASES order), from the timestamps that
    end them; a phase whose timestamp is missing (no grappler log with
    grappler off) is left out and its time goes to the next one."""
    out, last = {}, 0.0
    for key, _ in PHASES:
        if key in phases:
            out[key] = round(phases[key] - last, 3)
            last = phases[key]
    return out


def plan(names, top_passes):
    """The configurations to run, in order, with `top_passes` kept as a
    placeholder until the `defaults` row is in."""
    names = [n for n in names.split(",") if n]
    for n in names:
        if n not in CONFIGS and n != "top_passes":
            raise SystemExit(f"unknown configuration {n!r}; known: "
                             + ", ".join([*CONFIGS, "top_passes"]))
    if "top_passes" in names and "defaults" not in names[
            :names.index("top_passes")]:
        raise SystemExit("top_passes needs the defaults run before it "
                         "(its grappler log picks the passes)")
    if top_passes < 0:
        raise SystemExit(f"--top_passes must be >= 0, got {top_passes}")
    return names


def table(rows):
    """Markdown: each configuration's phases, first step and steady step."""
    head = ["configuration", "imports s", "build + compile s", "trace s",
            "grappler s", "other graph set-up s", "first execution s",
            "first step s (from process start)", "steady step s",
            "peak RSS GB"]
    keys = [k for k, _ in PHASES]
    groups = dict(imports=keys[:3], build=keys[3:6], trace=keys[6:11],
                  setup=keys[11:-1])
    lines = ["| " + " | ".join(head) + " |", "| --- " * len(head) + "|"]
    for r in rows:
        d = r["durations_s"]

        def total(group):
            return sum(d.get(k, 0.0) for k in groups[group])
        grappler = d.get("grappler_end_s")
        setup = total("setup") - (grappler or 0.0)
        lines.append(
            f"| {r['config']} | {total('imports'):.1f} | "
            f"{total('build'):.1f} | {total('trace'):.1f} | "
            f"{'-' if grappler is None else f'{grappler:.1f}'} | "
            f"{setup:.1f} | {d['first_step_s_since_start']:.1f} | "
            f"{r['first_step_s_since_start']:.1f} | "
            f"{r['steady_step_median_s']:.2f} | {r['peak_rss_gb']:.2f} |")
    return "\n".join(lines)


def phase_table(row):
    """Markdown: one row's phases, each with its own seconds."""
    names = dict(PHASES)
    lines = ["| phase | s | ends at s |", "| --- | --- | --- |"]
    for key, sec in row["durations_s"].items():
        lines.append(f"| {names[key]} | {sec:.1f} | "
                     f"{row['phases_s'][key]:.1f} |")
    return "\n".join(lines)


def pass_table(row, top=8):
    """Markdown: grappler's passes in one row, longest first."""
    total = row["grappler"]["total_ms"]
    lines = ["| grappler pass | s | share | switch |", "| --- | --- | --- | --- |"]
    for name, ms in list(row["grappler"]["pass_ms"].items())[:top]:
        switch = GRAPPLER_SWITCHES.get(name)
        lines.append(f"| {name} | {ms / 1000:.1f} | "
                     f"{100 * ms / total:.0f} % | "
                     f"{f'`{switch}`' if switch else 'none'} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="F0",
                   help="variant name or config JSON (benchmark.py's)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=None,
                   help="training resolution (default: the variant's)")
    p.add_argument("--steps", type=int, default=2,
                   help="steps after the first (the steady-state time)")
    p.add_argument("--agc_clipping", type=float, default=0.01)
    p.add_argument("--configs", default="defaults,remat_off,grappler_off,"
                   "top_passes,agc_off,agc_skip_only,onednn_off",
                   help="comma-separated: " + ", ".join(
                       ["defaults", "remat_off", "grappler_off", "agc_off",
                        "agc_skip_only", "onednn_off",
                        "no_<grappler option>", "top_passes"]))
    p.add_argument("--top_passes", type=int, default=2,
                   help="top_passes: how many of the longest grappler "
                        "passes to turn off, one per process")
    p.add_argument("--budget_s", type=float, default=None,
                   help="start no configuration after this many seconds "
                        "if the longest one so far would not fit")
    p.add_argument("--child_timeout_s", type=float, default=600,
                   help="a configuration's process is stopped after this")
    p.add_argument("--out", default=None)
    p.add_argument("--child", default=None, choices=sorted(CONFIGS))
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    if args.child:  # the parent passes --size: no import before the clock
        run_child(args)
        return
    if args.size is None:
        import keras_nfnets.variants as variants
        args.size = variants.get_config(args.variant).train_imsize
    names = plan(args.configs, args.top_passes)
    cpu = peers.cpu_info()
    print(f"{cpu['model']}: {cpu['usable_cpus']} usable CPUs, {cpu['isa']}",
          flush=True)
    rows, queue, longest = [], list(names), 0.0
    while queue:
        name = queue.pop(0)
        if name == "top_passes":
            defaults = next(r for r in rows if r["config"] == "defaults")
            queue[:0] = top_switchable_passes(defaults, args.top_passes)
            continue
        elapsed = time.time() - _START
        if args.budget_s and elapsed + longest > args.budget_s:
            print(f"budget: {name} and {len(queue)} more not run "
                  f"({elapsed:.0f} s used)", flush=True)
            break
        t = time.time()
        try:
            row = spawn(name, args)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            # One configuration that fails (or hangs) loses only its row.
            print(f"{name}: failed: {str(e)[-2000:]}", flush=True)
            continue
        finally:
            longest = max(longest, time.time() - t)
        rows.append(row)
        print(f"{name:28s} first step {row['first_step_s_since_start']:.1f} s"
              f"  steady {row['steady_step_median_s']:.2f} s/step"
              f"  grappler {row['grappler']['total_ms'] / 1000:.1f} s",
              flush=True)
        if args.out:  # after every row: a stopped run keeps what it has
            write(args, rows)
    print()
    print(summary.cpu_line(rows))
    print()
    print(table(rows))
    for row in rows[:1]:
        print()
        print(phase_table(row))
        if row["grappler"]["pass_ms"]:
            print()
            print(pass_table(row))


def write(args, rows):
    data = dict(variant=args.variant, batch=args.batch, size=args.size,
                steps=args.steps, configs=args.configs, runs=rows,
                command="python benchmarks/first_step.py "
                        + " ".join(sys.argv[1:]))
    with open(args.out, "w") as f:
        json.dump(data, f, indent=1)


if __name__ == "__main__":
    main()
