"""`remat="auto"` by memory: both sides of the trade-off, measured.

NFNet-F0 training (the `benchmark.py --child train` step: SGD, AGC 0.01,
fp32, TensorFlow), each configuration in its own process, interleaved over
`--rounds`: a large batch (`--large_batch`, 32 x 192 px) in a memory
cgroup of `--limit_gb` (a container or a small VM), with `remat="auto"`
(which should decide on there) against `remat=False`: whether the step
fits, its speed and its peak. (At the default batch with all of the
machine's memory, "auto" against `remat=True` is in the peer run,
`benchmark.py --compare_remat`, next to the peers; `--with_default_batch`
adds that pair here too.)

Every row records the decision the step made, the activations it would
keep without remat (`keras_nfnets.model.kept_activation_bytes`), the free
memory it saw, its speed, its peak RSS, the CPU, or how the process died
(the kernel's OOM killer in the cgroup). The cgroup needs root (cgroup v1
or v2); without it the limited rows say so and the run goes on.

    python benchmarks/remat_memory.py --out benchmarks/results_remat.json
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import peers  # noqa: E402  (no TensorFlow at import)


def make_cgroup(name, limit_bytes):
    """A new memory cgroup limited to `limit_bytes`: (path, procs file), or
    (None, reason) where none can be made."""
    tried = []
    for root, limit_file in (("/sys/fs/cgroup/memory",
                              "memory.limit_in_bytes"),
                             ("/sys/fs/cgroup", "memory.max")):
        path = os.path.join(root, name)
        try:
            os.mkdir(path)
        except OSError as e:
            tried.append(f"{root}: {e.strerror}")
            continue
        try:
            with open(os.path.join(path, limit_file), "w") as f:
                f.write(str(int(limit_bytes)))
            return path, os.path.join(path, "cgroup.procs")
        except OSError as e:
            os.rmdir(path)
            tried.append(f"{path}/{limit_file}: {e.strerror}")
    return None, "no memory cgroup could be made (" + "; ".join(tried) + ")"


def remove_cgroup(path):
    for _ in range(50):  # the killed child's pages are released shortly
        try:
            os.rmdir(path)
            return
        except OSError:
            time.sleep(0.1)


def run_config(config, args, index):
    cmd = [sys.executable, os.path.join(HERE, "benchmark.py"), "--child",
           "train", "--variant", "F0", "--batch", str(config["batch"]),
           "--size", str(args.size), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--remat", config["remat"],
           "--agc_clipping", "0.01", "--backend", "tensorflow"]
    row = dict(config, size=args.size, cpu=peers.cpu_info(),
               load_at_start=os.getloadavg()[0])
    cgroup, procs = None, None
    if config.get("limit_gb"):
        cgroup, procs = make_cgroup(
            f"keras_nfnets_bench_{os.getpid()}_{index}",
            config["limit_gb"] * 1e9)
        if cgroup is None:
            row["failed"] = procs
            return row

    def enter_cgroup():
        if procs:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env,
                             preexec_fn=enter_cgroup, timeout=args.timeout_s)
    except subprocess.TimeoutExpired:
        row["failed"] = f"did not finish within {args.timeout_s} s"
        return row
    finally:
        if cgroup:
            remove_cgroup(cgroup)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            row.update(json.loads(line[len("RESULT "):]))
            return row
    if out.returncode == -9 and cgroup:
        row["failed"] = (f"killed by the kernel (out of memory in its "
                         f"{config['limit_gb']:g} GB cgroup)")
    else:
        row["failed"] = (f"exit {out.returncode}: "
                         f"{out.stderr.strip().splitlines()[-1:]}")
    return row


def configs(args):
    default = [
        dict(name=f"batch {args.batch}, auto", batch=args.batch,
             remat="auto"),
        dict(name=f"batch {args.batch}, remat on", batch=args.batch,
             remat="on")] if args.with_default_batch else []
    return default + [
        dict(name=f"batch {args.large_batch}, {args.limit_gb:g} GB, auto",
             batch=args.large_batch, remat="auto", limit_gb=args.limit_gb),
        dict(name=f"batch {args.large_batch}, {args.limit_gb:g} GB, "
                  "remat off",
             batch=args.large_batch, remat="off", limit_gb=args.limit_gb),
    ]


def table(rows):
    """The rows as a Markdown table (lines): what `make bench-remat` prints
    and docs/performance.md renders."""
    lines = ["| configuration | remat used | kept without remat GB | free GB "
             "| img/s | peak RSS GB | first step s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['name']} | {r.get('remat_arg', r['remat'])}"
                         f" | - | - | {r['failed']} | - | - |")
            continue
        lines.append(
            f"| {r['name']} | {'on' if r['remat'] else 'off'} | "
            f"{r['kept_activations_gb']:.2f} | {r['free_memory_gb']:.1f} | "
            f"{r['images_per_s']:.2f} | {r['peak_rss_gb']:.2f} | "
            f"{r['first_step_s_since_start']:.1f} |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--large_batch", type=int, default=32)
    p.add_argument("--limit_gb", type=float, default=5.0)
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--timeout_s", type=int, default=1200)
    p.add_argument("--with_default_batch", action="store_true",
                   help="also --batch with all the memory, auto and on")
    p.add_argument("--note", default="")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    chosen = configs(args)
    rows = []
    for r in range(args.rounds):
        for i, config in enumerate(chosen):
            row = run_config(config, args, i)
            row["round"] = r
            rows.append(row)
            print(f"round {r} {config['name']:32s} " + (
                row["failed"] if "failed" in row else
                f"remat {'on' if row['remat'] else 'off'}  "
                f"{row['images_per_s']:.2f} img/s  "
                f"rss {row['peak_rss_gb']:.2f} GB  "
                f"kept {row['kept_activations_gb']:.2f} GB  "
                f"free {row['free_memory_gb']:.1f} GB"), flush=True)
    result = dict(note=args.note, command="python benchmarks/remat_memory.py "
                  + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                  rows=rows)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print()
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
