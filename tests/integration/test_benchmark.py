"""benchmarks/: the cpuinfo parser, the peer child's argument handling, the
configurations of an interleaved run, the ratio / roofline tables on a
synthetic result list, and the profile's op categories. No model is built
and nothing is timed (speed is what benchmarks/benchmark.py records)."""

import importlib
import json
import sys
import types

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))
peers = importlib.import_module("benchmarks.peers")
summary = importlib.import_module("benchmarks.summary")
profile_step = importlib.import_module("benchmarks.profile_step")

# /proc/cpuinfo of a 2-core AMD EPYC (Zen 3) VM, flags cut down.
EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx fma avx2 bmi2 sha_ni
processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx fma avx2 bmi2 sha_ni
"""
SAPPHIRE = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C
flags\t\t: avx2 fma avx512f avx512_bf16 avx_vnni amx_tile amx_bf16
"""


def test_cpuinfo_parser_names_the_cpu_and_its_vector_units():
    info = peers.parse_cpuinfo(EPYC)
    assert info["model"] == "AMD EPYC 7B13"
    assert info["logical_cpus"] == 2
    assert info["avx2"] and info["fma"]
    assert not info["avx512"] and not info["amx"]
    assert info["isa"] == "AVX2, no AVX-512, no AMX"
    assert info["flags"] == ["avx", "fma", "avx2"] and not info["bf16"]
    info = peers.parse_cpuinfo(SAPPHIRE)
    assert info["avx512"] and info["avx512_bf16"] and info["amx"]
    assert info["isa"] == "AVX2, AVX-512 (bf16), AMX"
    assert info["bf16"] and info["amx_bf16"] and info["avx_vnni"]
    assert info["flags"] == ["fma", "avx2", "avx512f", "avx512_bf16",
                             "avx_vnni", "amx_tile", "amx_bf16"]


def test_cpuinfo_of_this_machine_and_of_a_missing_file(tmp_path):
    info = peers.cpu_info()
    assert info["usable_cpus"] >= 1 and info["model"]
    missing = peers.cpu_info(str(tmp_path / "no_cpuinfo"))
    assert missing["isa"] == "no AVX2, no AVX-512, no AMX"


def test_peer_child_arguments():
    args = peers.parse_args(["--impl", "timm_channels_last", "--mode",
                             "train", "--size", "192"])
    assert (args.impl, args.mode, args.batch, args.size) == (
        "timm_channels_last", "train", 8, 192)
    args = peers.parse_args(["--impl", "openvino", "--precision", "bfloat16"])
    assert (args.impl, args.mode, args.precision) == (
        "openvino", "infer", "bfloat16")
    for bad in (["--impl", "onnxruntime", "--mode", "train", "--onnx", "m"],
                ["--impl", "onnxruntime"],  # no --onnx
                ["--impl", "openvino", "--mode", "train"],
                ["--impl", "openvino", "--channels_last"],
                ["--impl", "tf"],
                ["--batch", "0"]):
        with pytest.raises(SystemExit):
            peers.parse_args(bad)


def test_compile_bf16_and_cuda_peer_arguments():
    args = peers.parse_args(["--impl", "timm_compile", "--mode", "train"])
    assert peers.uses_compile(args) and not peers.uses_channels_last(args)
    args = peers.parse_args(["--device", "cuda", "--channels_last",
                             "--compile", "--precision", "bfloat16",
                             "--model", "test_nfnet"])
    assert peers.uses_compile(args) and peers.uses_channels_last(args)
    assert (args.device, args.precision, args.model) == (
        "cuda", "bfloat16", "test_nfnet")
    for bad in (["--impl", "onnxruntime", "--onnx", "m", "--compile"],
                ["--impl", "onnxruntime", "--onnx", "m", "--precision",
                 "bfloat16"],
                ["--precision", "float16"], ["--device", "tpu"],
                ["--steps", "0"]):
        with pytest.raises(SystemExit):
            peers.parse_args(bad)


def test_peer_module_imports_no_framework():
    # The peer child runs torch; TensorFlow must not be in its process.
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import peers; "
            "assert not {'tensorflow', 'torch', 'keras'} & set(sys.modules)")
    import subprocess
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def _benchmark():
    sys.path.insert(0, str(REPO / "benchmarks"))
    return importlib.import_module("benchmarks.benchmark")


def test_thread_settings_are_validated():
    benchmark = _benchmark()
    assert benchmark.parse_threads("0:1") == (0, 1)
    for bad in ("1", "a:b", "1:-1"):
        with pytest.raises(ValueError, match="INTRA:INTER|>= 0"):
            benchmark.parse_threads(bad)


def test_an_interleaved_round_pairs_each_mode_with_its_peers():
    benchmark = _benchmark()
    args = types.SimpleNamespace(
        grouped_conv=None, compare_grouped_conv=False, modes="train,infer",
        backend="tensorflow", batch=8, compare_remat=True,
        compare_allocator=False, compare_threads=["0:1"],
        compare_threads_modes=["train"], compare_peer_agc=True)
    configs = benchmark.build_configs(args, 192, 256, list(peers.PEERS))
    train = [c for c in configs if c["mode"] == "train"]
    infer = [c for c in configs if c["mode"] == "infer"]
    assert [c.get("impl", "keras") for c in train] == [
        "keras", "keras", "keras", "timm", "timm", "timm_channels_last",
        "timm_compile"]
    assert train[4]["agc_clipping"] == 0  # timm without AGC
    assert {c["size"] for c in train} == {192}
    assert [c.get("remat") for c in train[:2]] == ["auto", "on"]
    assert train[2]["tf_threads"] == "0:1"
    # ONNX Runtime and OpenVINO are inference peers only.
    assert [c.get("impl", "keras") for c in infer] == [
        "keras", "timm", "timm_channels_last", "timm_compile", "onnxruntime",
        "openvino"]
    common = types.SimpleNamespace(steps=3, warmup=1, agc_clipping=0.01)
    cmd = benchmark.peer_command(infer[-2], common,
                                 dict(path="/x.onnx", flops_per_image=2e9))
    assert cmd[1].endswith("peers.py")
    assert peers.parse_args(cmd[2:]).onnx == "/x.onnx"


def test_bf16_rows_are_added_only_where_the_cpu_has_bf16():
    benchmark = _benchmark()
    epyc, sapphire = peers.parse_cpuinfo(EPYC), peers.parse_cpuinfo(SAPPHIRE)
    assert not benchmark.wants_bf16("auto", epyc)
    assert benchmark.wants_bf16("auto", sapphire)
    assert benchmark.wants_bf16("on", epyc)  # forced: the tests' way
    assert not benchmark.wants_bf16("off", sapphire)
    with pytest.raises(ValueError, match="--bf16 must be auto, on or off"):
        benchmark.wants_bf16("yes", epyc)
    args = types.SimpleNamespace(
        grouped_conv=None, compare_grouped_conv=False, modes="train,infer",
        backend="tensorflow", batch=8, compare_remat=True,
        compare_allocator=False, compare_threads=[],
        compare_threads_modes=["train"], compare_peer_agc=True)
    configs = benchmark.build_configs(args, 192, 256, list(peers.PEERS))
    added = benchmark.bf16_configs(configs)
    # Per mode: keras_nfnets' defaults and timm eager / channels_last with
    # AGC; not torch.compile, timm without AGC or ONNX Runtime.
    assert [(c["mode"], c.get("impl", "keras"), c["precision"])
            for c in added] == [
        ("train", "keras", "mixed_bfloat16"), ("train", "timm", "bfloat16"),
        ("train", "timm_channels_last", "bfloat16"),
        ("infer", "keras", "mixed_bfloat16"), ("infer", "timm", "bfloat16"),
        ("infer", "timm_channels_last", "bfloat16")]
    assert added[0]["remat"] == "auto" and added[0]["size"] == 192
    assert benchmark.bf16_configs(configs, "mixed_bfloat16") == []
    common = types.SimpleNamespace(steps=3, warmup=1, agc_clipping=0.01,
                                   timm_model=None)
    cmd = benchmark.peer_command(added[1], common)
    assert peers.parse_args(cmd[2:]).precision == "bfloat16"
    compiled = peers.parse_args(benchmark.peer_command(
        dict(impl="timm_compile", mode="train", batch=8, size=192),
        common)[2:])
    assert (compiled.warmup, compiled.steps) == (2, 3)


def test_bf16_rows_are_compared_with_bf16_peers_only():
    rows = ROWS + [
        _row("keras_nfnets", "train", 3.0, 0, precision="mixed_bfloat16"),
        _row("timm", "train", 2.5, 0, precision="bfloat16"),
        _row("timm_channels_last", "train", 4.0, 0, precision="bfloat16",
             memory_format="channels_last")]
    s = {(x["mode"], x["label"]): x for x in summary.summarize(rows)}
    bf16 = s["train", "keras_nfnets, mixed_bfloat16"]
    assert bf16["best_peer"] == "timm channels_last, bf16 autocast"
    assert bf16["ratio"] == pytest.approx(3.0 / 4.0)
    assert set(bf16["vs"]) == {"timm eager, bf16 autocast",
                               "timm channels_last, bf16 autocast"}
    # fp32 stays the headline: its best peer is an fp32 peer.
    ours = s["train", "keras_nfnets (defaults)"]
    assert ours["best_peer"] == "timm eager"
    assert ours["ratio"] == pytest.approx(1.1 / 1.9)
    targets = summary.targets(summary.summarize(rows))
    assert targets[0]["measured"] == "0.58× timm eager"
    assert summary.roofline(summary.summarize(rows), rows)[0][
        "best_peer"] == "timm eager"
    table = summary.ratio_table(summary.summarize(rows)).splitlines()
    fp32_last = max(i for i, line in enumerate(table)
                    if "| train |" in line and "bf16" not in line
                    and "bfloat16" not in line)
    assert all(i > fp32_last for i, line in enumerate(table)
               if "bf16" in line or "bfloat16" in line)
    assert summary.label(dict(impl="timm", mode="infer", compile=True,
                              memory_format="channels_last",
                              precision="bfloat16")) == \
        "timm channels_last + torch.compile, bf16 autocast"


def test_a_compile_peer_without_a_compiler_is_an_error_row(monkeypatch):
    # A real peer child: with no C++ compiler inductor cannot run on CPU;
    # the child says why in an error row (before it imports torch), and
    # the parent keeps it as a row rather than stopping the run.
    _needs("torch", "timm")
    benchmark = _benchmark()
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    common = types.SimpleNamespace(steps=1, warmup=0, agc_clipping=0.01,
                                   onnx_export=None, timm_model="test_nfnet")
    row = benchmark.spawn_peer(dict(impl="timm_compile", mode="train",
                                    batch=1, size=32), common)
    assert row["error"].startswith(
        "torch.compile: inductor needs a C++ compiler on CPU")
    assert "images_per_s" not in row and row["compile"]
    assert row["tensorflow_in_process"] is False and row["cxx"] is None
    assert row["cpu"]["model"] and "flags" in row["cpu"]
    row["round"] = 0
    assert summary.summarize([row]) == []
    assert summary.failed_lines([row]) == [
        "train timm torch.compile: not measured, failed in 1 process of the "
        "run: " + row["error"]]
    assert "FAILED: torch.compile" in benchmark.progress_line(0, row)
    # A child that dies without a result: an error row too.
    dead = benchmark.peer_error_row(dict(impl="timm", mode="infer", batch=8,
                                         size=256), "exit 1")
    assert dead["cpu"]["isa"] and summary.label(dead) == "timm eager"


def test_unknown_peer_is_named():
    benchmark = _benchmark()
    with pytest.raises(SystemExit, match="unknown peer 'pytorch'"):
        benchmark.check_peers("timm,pytorch")
    assert benchmark.check_peers("none") == []


def _row(impl, mode, ips, rnd, **kw):
    row = dict(agc_clipping=0.01, impl=impl, mode=mode, batch=8, size=192 if mode == "train"
               else 256, images_per_s=ips, round=rnd, peak_rss_gb=2.0,
               first_step_s_since_start=20.0, matmul_gflops=80.0, mfu=0.5,
               flops_per_image=13.95e9 if mode == "train" else 24.77e9,
               cpu=dict(model="AMD EPYC", isa="AVX2, no AVX-512, no AMX",
                        usable_cpus=2, logical_cpus=2, loadavg_1min=1.0))
    row.update(kw)
    return row


ROWS = [_row("keras_nfnets", "train", 1.0, 0), _row("timm", "train", 2.0, 0),
        _row("timm_channels_last", "train", 1.6, 0),
        _row("keras_nfnets", "train", 1.2, 0, remat_arg="off"),
        _row("keras_nfnets", "train", 1.2, 1), _row("timm", "train", 1.8, 1),
        _row("timm_channels_last", "train", 1.4, 1),
        _row("keras_nfnets", "train", 1.4, 1, remat_arg="off"),
        _row("keras_nfnets", "infer", 3.0, 0), _row("onnxruntime", "infer",
                                                    3.0, 0)]


def test_ratios_to_the_best_peer():
    s = {(x["mode"], x["label"]): x for x in summary.summarize(ROWS)}
    ours = s["train", "keras_nfnets (defaults)"]
    assert ours["images_per_s"] == pytest.approx(1.1)  # median of rounds
    assert ours["best_peer"] == "timm eager"
    assert ours["ratio"] == pytest.approx(1.1 / 1.9)
    assert ours["vs"]["timm channels_last"] == pytest.approx(1.1 / 1.5)
    assert s["train", "keras_nfnets, remat off"]["ratio"] == pytest.approx(
        1.3 / 1.9)
    assert s["infer", "keras_nfnets (defaults)"]["ratio"] == 1.0
    table = summary.ratio_table(summary.summarize(ROWS))
    assert "| train | keras_nfnets (defaults) | 8 x 192 | 1.10 (1.00, 1.20) " \
           "| 0.58× |" in table
    assert "| train | timm eager | 8 x 192 | 1.90 (2.00, 1.80) | best peer" \
        in table
    assert summary.label(dict(impl="keras_nfnets", tf_threads="0:1")) == \
        "keras_nfnets, TF inter-op threads 1"
    no_agc = summary.label(_row("timm", "train", 1, 0, agc_clipping=None))
    assert no_agc == "timm eager, no AGC"
    lines = summary.ratio_lines(summary.summarize(ROWS))
    assert lines[0].startswith("train keras_nfnets (defaults): 0.58× the "
                               "best peer (timm eager)")
    assert "AMD EPYC" in summary.cpu_line(ROWS)


def test_roofline_states_the_mfu_the_target_needs():
    s = summary.summarize(ROWS)
    train = summary.roofline(s, ROWS)[0]
    work = 3 * 13.95 * 8  # GFLOP per step
    assert train["gflop_per_step"] == pytest.approx(work)
    assert train["floor_s"] == pytest.approx(work / 80)
    assert train["target_s"] == pytest.approx(8 / 1.9 / summary.TARGET_RATIO)
    infer = summary.roofline(s, ROWS)[1]  # the serving target, 1.2x
    assert infer["target"] == 1.2
    assert infer["target_s"] == pytest.approx(infer["peer_s"] / 1.2)
    assert train["target_mfu"] == pytest.approx(work / train["target_s"]
                                                / 80)
    assert "| train | 335 | 80 |" in summary.roofline_table([train])


def test_targets_are_judged_on_the_defaults():
    t = {x["target"]: x for x in summary.targets(summary.summarize(ROWS))}
    train = t["training ≥ 1.0× the best peer"]
    assert not train["holds"] and train["measured"] == "0.58× timm eager"
    # inference: judged on the serving route, in the serving table
    assert not any("inference" in x for x in t)
    assert t["peak training memory ≤ timm eager's"]["holds"]  # 2.0 vs 2.0
    assert t["first training step ≤ 30 s from process start"]["holds"]
    assert "| no |" in summary.targets_table(list(t.values()))


def test_agc_target_compares_each_sides_own_share():
    """AGC's per-step share: keras_nfnets with AGC against without, and
    timm's the same way, in one run."""
    rows = [_row("keras_nfnets", "train", 1.0, 0),
            _row("keras_nfnets", "train", 1.05, 0, agc_clipping=None),
            _row("timm", "train", 2.0, 0),
            _row("timm", "train", 2.2, 0, agc_clipping=None)]
    t = {x["target"]: x for x in summary.targets(summary.summarize(rows))}
    agc = t["AGC's per-step cost ≤ timm's own"]
    assert agc["holds"]
    assert agc["measured"] == "+5.0 % step time (timm: +10.0 %)"


def test_memory_target_splits_what_the_step_adds():
    rows = [_row("keras_nfnets", "train", 1.0, 0, peak_rss_gb=2.7,
                 rss_before_first_step_gb=1.0),
            _row("timm", "train", 2.0, 0, peak_rss_gb=2.6,
                 rss_before_first_step_gb=0.5)]
    t = {x["target"]: x for x in summary.targets(summary.summarize(rows))}
    memory = t["peak training memory ≤ timm eager's"]
    assert not memory["holds"]
    assert memory["measured"] == (
        "2.70 GB vs 2.60 GB (1.04×); above the memory before the first "
        "step: 1.70 GB vs 2.10 GB (before it: 1.00 vs 0.50 GB)")
    # Rows from before the field was recorded: the peaks only.
    old = summary.targets(summary.summarize(ROWS))
    assert [x["measured"] for x in old if "memory" in x["target"]] == [
        "2.00 GB vs 2.00 GB (1.00×)"]


def test_timed_records_the_memory_before_the_first_step():
    result = {}
    held = []
    times = peers.timed(lambda: held.append(bytearray(50_000_000)), 1, 2,
                        result)
    assert len(times) == 2
    before = result["rss_before_first_step_gb"]
    assert 0 < before < peers.current_rss_gb()  # the step's 150 MB came after
    assert peers.current_rss_gb() - before > 0.1


def test_summary_without_peers_has_no_ratio():
    s = summary.summarize([r for r in ROWS if r["impl"] == "keras_nfnets"])
    assert all(x["ratio"] is None for x in s)
    assert summary.ratio_lines(s) == []


@pytest.mark.parametrize("name,op_type,category", [
    ("nfnet_f0/nf_block/conv1/convolution", "Conv2D",
     "Conv2D (forward, and own k x k gradients where used)"),
    ("gradient_tape/nfnet_f0/final_conv/convolution/Conv2DBackpropInput",
     "Conv2DBackpropInput", "Conv2DBackpropInput (TensorFlow's gradient kernels)"),
    ("nfnet_f0/nf_block/conv1/split", "Split",
     "grouped-conv split / concat"),
    ("cond/then/_0/cond/sgd/AssignAddVariableOp", "AssignAddVariableOp",
     "optimizer: momentum update and AGC"),
    ("nfnet_f0/nf_block/Gelu/ArithmeticOptimizer/ConvertPow__inner_Pow",
     "Square", "GELU and its derivative"),
    ("conv1b/mul", "Mul", "weight standardization (+ bias) in conv layers"),
    ("nfnet_f0/nf_block/conv0/Mean", "Mean",
     "weight standardization (+ bias) in conv layers"),
    ("nfnet_f0/preprocessing/Sub", "Sub", "other elementwise and reductions"),
    # TensorFlow's oneDNN kernels (CPUs with AVX512_VNNI, AVX512_BF16, AMX)
    ("nfnet_f0/nf_block/conv1/convolution", "_MklNativeConv2D",
     "Conv2D (forward, and own k x k gradients where used)"),
    ("nfnet_f0/stem_conv0/convolution", "_MklNativeFusedConv2D",
     "Conv2D (forward, and own k x k gradients where used)"),
    ("gradient_tape/nfnet_f0/stem_conv1/convolution/Conv2DBackpropFilter",
     "_MklNativeConv2DBackpropFilter",
     "Conv2DBackpropFilter (TensorFlow's gradient kernels)"),
    ("nfnet_f0/nf_block/conv0/MatMul", "_MklMatMul",
     "MatMul (1x1 convolutions and gradients, SE, classifier)"),
    ("nfnet_f0/nf_block/squeeze_excite/MatMul", "_MklFusedMatMul",
     "MatMul (1x1 convolutions and gradients, SE, classifier)"),
    ("nfnet_f0/nf_block/conv1/Transpose", "_MklTranspose",
     "weight standardization (+ bias) in conv layers"),
])
def test_profile_categories(name, op_type, category):
    assert profile_step.categorize(name, op_type) == category
    assert category in profile_step.CATEGORIES


@pytest.mark.parametrize("name,phase", [
    ("nfnet_f0/nf_block/conv1/convolution", "forward"),
    ("gradient_tape/conv1b/convolution/Conv2DBackpropFilter", "backward"),
    ("conv1b/convolution", "recomputed forward (remat)"),
    ("Gelu/Tanh", "recomputed forward (remat)"),
    ("cond/then//cond/sgd/SelectV2", "optimizer update and AGC"),
    ("IsFinite", profile_step.PHASES[-1]),
])
def test_profile_phases(name, phase):
    assert profile_step.phase(name) == phase


def test_profile_names_are_normalized_over_instances():
    assert profile_step.normalize("nfnet_f0_1/nf_block_3/conv1_1/split_2") \
        == "nfnet_f0/nf_block/conv1/split"


def _first_step():
    sys.path.insert(0, str(REPO / "benchmarks"))
    return importlib.import_module("benchmarks.first_step")


# TensorFlow's log with TF_CPP_VMODULE=meta_optimizer=1: one item, lines
# before absl's log is initialised (seconds since the epoch) and after it.
GRAPPLER_LOG = """\
I0000 00:00:1796192545.896977   21665 cudart_stub.cc:31] Could not find cuda
I0000 00:00:1796192545.900000   21665 meta_optimizer.cc:1059] Starting \
optimization for grappler item: __inference_one_step_on_data_16406
I0000 00:00:1796192546.100000   21665 meta_optimizer.cc:973] model_pruner: \
Graph size after: 90 nodes (-10), 100 edges (-5), time = 200.5ms.
I0000 00:00:1796192547.100000   21665 meta_optimizer.cc:973] \
tfg_optimizer{any(tfg-consolidate-attrs,tfg-toposort)}: Graph size after: \
90 nodes (0), 100 edges (0), time = 1000ms.
I0000 00:00:1796192548.100000   21665 meta_optimizer.cc:973] remapper: \
Graph size after: 80 nodes (-10), 90 edges (-10), time = 999.5ms.
I1202 06:22:28.600000   21665 meta_optimizer.cc:973] model_pruner: \
Graph size after: 80 nodes (0), 90 edges (0), time = 0.5ms.
W0000 00:00:1796192549.000000   21665 dump_graph.cc:162] Failed to dump
"""


def test_grappler_log_is_parsed_into_passes_and_wall_time():
    fs = _first_step()
    g = fs.parse_grappler_log(GRAPPLER_LOG, year=2026)
    assert g["start"] == pytest.approx(1796192545.9)
    # 2026-12-02 06:22:28.6 UTC, a dated line (the year is today's).
    assert g["end"] - g["start"] == pytest.approx(
        fs.log_time(fs.LOG_LINE.match(GRAPPLER_LOG.splitlines()[5]),
                    year=2026) - 1796192545.9)
    assert g["end"] - g["start"] == pytest.approx(2.7, abs=1e-3)
    assert g["pass_ms"] == {"remapper": 999.5, "tfg_optimizer": 1000.0,
                            "model_pruner": 201.0}
    assert list(g["pass_ms"])[0] == "tfg_optimizer"  # longest first
    assert g["nodes_before"] == 100
    assert [(i["name"], i["ms"]) for i in g["items"]] == [
        ("__inference_one_step_on_data_16406", 2200.5)]
    row = dict(grappler=g)
    # The longest passes with a switch: tfg_optimizer has none.
    assert fs.top_switchable_passes(row, 2) == ["no_remapping",
                                                "no_model_pruning"]
    assert fs.parse_grappler_log("no log\n")["pass_ms"] == {}


def test_first_step_configurations_are_validated():
    fs = _first_step()
    assert fs.plan("defaults,top_passes,remat_off", 2) == [
        "defaults", "top_passes", "remat_off"]
    with pytest.raises(SystemExit, match="unknown configuration 'fast'"):
        fs.plan("defaults,fast", 2)
    with pytest.raises(SystemExit, match="needs the defaults run before"):
        fs.plan("top_passes,defaults", 2)
    with pytest.raises(SystemExit, match="top_passes must be >= 0"):
        fs.plan("defaults", -1)
    # Every grappler switch is an option tf.config.optimizer takes.
    assert fs.CONFIGS["no_remapping"]["grappler"] == {"remapping": False}
    assert fs.CONFIGS["no_model_pruning"]["grappler"] == {
        "disable_model_pruning": True}
    assert fs.CONFIGS["grappler_off"]["grappler"] == {
        "disable_meta_optimizer": True}
    assert fs.process_start_time() <= fs._START + 1e-3


RUNTIME_LOG = """\
I0000 00:00:100.000000   1 process_function_library_runtime.cc:518] \
Instantiating MultiDevice function "__wrapped____EagerConst_device_CPU"
I0000 00:00:101.500000   1 process_function_library_runtime.cc:518] \
Instantiating MultiDevice function "__inference_one_step_on_data_16406" on
I0000 00:00:110.250000   1 process_function_library_runtime.cc:603] \
Finished graph optimizations for MultiDevice function \
"__inference_one_step_on_data_16406" with target device. Took 9 secs.
I0000 00:00:111.000000   1 process_function_library_runtime.cc:835] \
Instantiated MultiDevice function "__inference_one_step_on_data_16406" with
I0000 00:00:119.000000   1 process_function_library_runtime.cc:835] \
Instantiated MultiDevice function "__inference_one_step_on_data_16406" with
"""


def test_runtime_log_times_the_train_functions_way_to_its_first_run():
    fs = _first_step()
    assert fs.parse_runtime_log(RUNTIME_LOG) == dict(
        instantiate_s=101.5, graph_optimized_s=110.25, instantiated_s=111.0)
    assert fs.parse_runtime_log(RUNTIME_LOG, function="predict") == {}


def test_first_step_phases_and_table():
    fs = _first_step()
    phases = dict(script_start_s=0.1, import_tf_s=7.0, import_keras_s=7.1,
                  import_keras_nfnets_s=7.2, built_s=9.0, compiled_s=9.1,
                  train_function_s=10.0, trace_start_s=10.1,
                  trace_forward_s=14.0, trace_gradient_s=24.0,
                  trace_update_s=30.0, trace_done_s=30.5, instantiate_s=31.0,
                  grappler_start_s=32.0, grappler_end_s=40.0,
                  graph_optimized_s=41.0, instantiated_s=42.0,
                  first_step_s_since_start=50.0)
    d = fs.durations(phases)
    assert list(d) == [k for k, _ in fs.PHASES]
    assert d["grappler_end_s"] == pytest.approx(8.0)
    assert sum(d.values()) == pytest.approx(50.0)
    # Grappler off: no log of it, its time goes to the next phase.
    off = fs.durations({k: v for k, v in phases.items()
                        if not k.startswith("grappler")})
    assert off["graph_optimized_s"] == pytest.approx(10.0)
    row = dict(config="defaults", durations_s=d, phases_s=phases,
               first_step_s_since_start=50.0, steady_step_median_s=7.25,
               peak_rss_gb=2.7, grappler=dict(
                   total_ms=8000.0, pass_ms={"remapper": 6000.0,
                                             "memory_optimizer": 2000.0}))
    table = fs.table([row, dict(row, config="grappler_off", durations_s=off)])
    assert ("| defaults | 7.2 | 2.8 | 20.5 | 8.0 | 3.5 | 8.0 | 50.0 | 7.25 "
            "| 2.70 |") in table
    assert "| grappler_off | 7.2 | 2.8 | 20.5 | - | 11.5 | 8.0 | 50.0 |" \
        in table
    assert "| grappler | 8.0 | 40.0 |" in fs.phase_table(row)
    passes = fs.pass_table(row)
    assert "| remapper | 6.0 | 75 % | `remapping` |" in passes
    assert "| memory_optimizer | 2.0 | 25 % | none |" in passes


def test_recorded_first_step_rows_name_the_cpu():
    import json
    data = json.loads((REPO / "benchmarks" / "results_first_step.json")
                      .read_text())
    assert data["runs"] and data["runs"][0]["config"] == "defaults"
    for row in data["runs"]:
        assert {"model", "isa", "avx2", "avx512", "amx",
                "loadavg_1min"} <= set(row["cpu"])
        assert row["first_step_s_since_start"] > 0
        assert len(row["steady_step_s"]) >= 1


def _needs(*modules):
    """Skips unless `modules` are installed (found, not imported: torch
    is not imported into a process that holds TensorFlow)."""
    import importlib.util
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (test extras)")


def _tiny_config():
    from conftest import fixture_path
    return str(fixture_path("nfnet_tiny_config.json"))


def _gpu_row(config, ips, rnd=0, **kw):
    cfg = dict(keras_bf16=dict(impl="keras_nfnets", backend="jax",
                               precision="mixed_bfloat16"),
               timm_bf16_cl=dict(impl="timm", precision="bfloat16",
                                 memory_format="channels_last"),
               timm_bf16_cl_compile=dict(impl="timm", precision="bfloat16",
                                         memory_format="channels_last",
                                         compile=True))[config]
    row = _row(cfg.pop("impl"), "train", ips, rnd, config=config, batch=64,
               device="cuda", device_peak_gb=20.0, first_step_s=40.0,
               **cfg)
    row.update(kw)
    return row


def test_gpu_harness_commands_table_and_block(tmp_path):
    # What `make bench-gpu` runs and writes, without running it: each
    # configuration's child command, TensorFlow blocked in the keras_nfnets
    # child, the table (ratios within bf16) and the docs block from a JSON.
    import json
    gpu = importlib.import_module("benchmarks.gpu")
    args = types.SimpleNamespace(
        batch=64, train_size=192, infer_size=256, steps=10, warmup=3,
        agc_clipping=0.01, device="cuda", variant="F0",
        timm_model="dm_nfnet_f0", compile_mode="default", matmul_n=4096)
    ours = gpu.child_command("keras_bf16", "train", args)
    assert ours[1].endswith("gpu.py") and ours[2:4] == ["--child", "keras"]
    assert ours[ours.index("--precision") + 1] == "mixed_bfloat16"
    timm = peers.parse_args(gpu.child_command("timm_bf16_cl_compile",
                                              "infer", args)[2:])
    assert (timm.device, timm.precision, timm.size, timm.batch) == (
        "cuda", "bfloat16", 256, 64)
    assert peers.uses_channels_last(timm) and peers.uses_compile(timm)
    assert gpu.child_env("cpu")["JAX_PLATFORMS"] == "cpu"
    with pytest.raises(ModuleNotFoundError, match="no TensorFlow"):
        gpu.NoTensorFlow().find_spec("tensorflow.python")
    assert gpu.NoTensorFlow().find_spec("tensorboard") is None
    rows = [_gpu_row("keras_bf16", 300.0), _gpu_row("timm_bf16_cl", 250.0),
            _gpu_row("timm_bf16_cl_compile", 400.0),
            dict(_gpu_row("keras_bf16", 0, 1), error="exit 1, no result")]
    del rows[-1]["images_per_s"]
    table = gpu.table(rows)
    assert ("| train | keras_nfnets, jax, mixed_bfloat16 | 64 x 192 | 300.0 "
            "(300.0) | 0.75× | 20.00 | 40.0; 20.0 | 50 % |") in table
    assert "timm channels_last + torch.compile, bf16 autocast | 64 x 192 " \
        "| 400.0 (400.0) | best peer |" in table
    assert table.endswith("train keras_nfnets, jax, mixed_bfloat16: not "
                          "measured, failed in 1 process of the run: exit 1,"
                          " no result")
    out = tmp_path / "results_gpu.json"
    out.write_text(json.dumps(dict(date="2026-12-06", device="cuda",
                                   gpus="NVIDIA H100 80GB HBM3", rows=rows,
                                   command="python benchmarks/gpu.py")))
    render_docs = importlib.import_module("benchmarks.render_docs")
    block = render_docs.f0_gpu(str(out))
    assert block.startswith("Device: NVIDIA H100 80GB HBM3 (cuda)")
    assert block.endswith(f"Source: `{out}`, measured 2026-12-06 on NVIDIA "
                          f"H100 80GB HBM3; command: `python "
                          f"benchmarks/gpu.py`.")


@pytest.mark.slow  # two fresh processes, JAX's import and XLA compiling a
# train step among them: about 80 s of CPU time (the keras_nfnets child
# alone is over 10 s).
def test_gpu_harness_end_to_end_on_cpu(tmp_path):
    # benchmarks/gpu.py as `make bench-gpu` runs it, on CPU and tiny models:
    # keras_nfnets on JAX under mixed_bfloat16 and timm's test_nfnet under
    # bf16 autocast + channels_last, each in its own process; then the
    # table and the docs block from its JSON.
    import json
    import subprocess
    from training_helpers import backend_env
    _needs("jax", "torch", "timm")
    out = tmp_path / "results_gpu.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--device",
         "cpu", "--variant", _tiny_config(), "--timm_model", "test_nfnet",
         "--configs", "keras_bf16,timm_bf16_cl", "--modes", "train",
         "--size", "32", "--batch", "2", "--steps", "1", "--warmup", "0",
         "--rounds", "1", "--matmul_n", "64", "--out", str(out)],
        capture_output=True, text=True, env=backend_env("jax"), timeout=900,
        check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    ours, timm = data["rows"]
    assert not ours.get("error") and not timm.get("error"), data["rows"]
    assert (ours["backend"], ours["precision"], ours["config"]) == (
        "jax", "mixed_bfloat16", "keras_bf16")
    assert ours["tensorflow_blocked"]
    assert (timm["precision"], timm["memory_format"], timm["model"]) == (
        "bfloat16", "channels_last", "test_nfnet")
    for row in (ours, timm):
        assert row["tensorflow_in_process"] is False
        assert row["images_per_s"] > 0 and row["first_step_s"] > 0
        assert row["cpu"]["model"] and "flags" in row["cpu"]
    gpu = importlib.import_module("benchmarks.gpu")
    table = gpu.table(data["rows"])
    assert "| train | keras_nfnets, jax, mixed_bfloat16 | 2 x 32 |" in table
    assert "| train | timm channels_last, bf16 autocast | 2 x 32 |" in table
    render_docs = importlib.import_module("benchmarks.render_docs")
    block = render_docs.f0_gpu(str(out))
    assert f"Source: `{out}`, measured {data['date']} on no GPU" in block
    assert "command: `python benchmarks/gpu.py --device cpu" in block


def test_gpu_block_says_not_measured_without_its_json(tmp_path):
    render_docs = importlib.import_module("benchmarks.render_docs")
    block = render_docs.f0_gpu(str(tmp_path / "absent.json"))
    assert block.startswith("Not measured: no GPU was available.")
    assert "command: `make bench-gpu" in block


@pytest.mark.slow  # TensorFlow's import and two traced train steps, and
# inductor compiling timm's test model: about a minute on 2 cores.
def test_benchmark_run_with_forced_bf16_rows_and_the_compile_peer(tmp_path):
    # The whole peer run on tiny models, the bf16 rows forced (this CPU
    # has no bf16: `--bf16 auto` would leave them out) and torch.compile's
    # peer measured (inductor works on this CPU) or, where it cannot run,
    # an error row that names why.
    import json
    import subprocess
    _needs("torch", "timm")
    out = tmp_path / "peers.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "benchmark.py"),
         "--variant", _tiny_config(), "--timm_model", "test_nfnet",
         "--peers", "timm,timm_compile", "--bf16", "on", "--modes", "train",
         "--train_size", "32", "--batch", "2", "--rounds", "1", "--steps",
         "1", "--warmup", "0", "--out", str(out)],
        capture_output=True, text=True, timeout=900, check=False,
        env=dict(__import__("os").environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(summary.label(r), r.get("precision")) for r in rows] == [
        ("keras_nfnets (defaults)", "float32"), ("timm eager", "float32"),
        ("timm torch.compile", "float32"),
        ("keras_nfnets, mixed_bfloat16", "mixed_bfloat16"),
        ("timm eager, bf16 autocast", "bfloat16")]
    for row in rows:
        assert row["cpu"]["model"] and "flags" in row["cpu"]
        if summary.is_peer(row):
            assert row["tensorflow_in_process"] is False
    compiled = rows[2]
    assert "images_per_s" in compiled or compiled["error"].startswith(
        "torch.compile:"), compiled
    s = {x["label"]: x for x in summary.summarize(rows)}
    assert s["keras_nfnets, mixed_bfloat16"]["best_peer"] == \
        "timm eager, bf16 autocast"
    assert s["keras_nfnets (defaults)"]["best_peer"] != \
        "timm eager, bf16 autocast"
    # forced on, whatever this CPU has (the line names what it has)
    has_bf16 = rows[0]["cpu"]["bf16"]
    assert (f"bf16 rows: 2 configurations (on; CPU bf16: {has_bf16})"
            in proc.stdout)


def test_conv_gradient_kernels_table(tmp_path):
    """benchmarks/conv_gradients.py on F0's two smallest layer shapes (one
    round, one call each): every kernel of a shape is timed, the own
    formulations beside TensorFlow's, and the rendered table compares
    them."""
    conv_gradients = importlib.import_module("benchmarks.conv_gradients")
    render_docs = importlib.import_module("benchmarks.render_docs")
    out = tmp_path / "conv.json"
    result = conv_gradients.main([
        "--rounds", "1", "--repeats", "1", "--out", str(out),
        "--layers", "3x3 group, stage 4;1x1 conv0, stage 3"])
    three, one = result["rows"]
    assert set(three["ms"]) == {
        "forward convolution", "TF input gradient", "TF weight gradient",
        "own input + weight gradients (convolutions)",
        "TF input + weight gradients"}
    assert {"own forward (MatMul)", "own input gradient (MatMul)",
            "own weight gradient (MatMul)"} <= set(one["ms"])
    assert all(v > 0 for r in (three, one) for v in r["ms"].values())
    rows = [line for line in render_docs._conv_gradients_table(
        json.loads(out.read_text())).splitlines() if line.startswith("| ")]
    assert len(rows) == 2 + 2 and rows[2].startswith("| 3x3 group, stage 4 |")
    with pytest.raises(SystemExit, match="unknown layers"):
        conv_gradients.main(["--layers", "5x5"])


def _serving_run(runtime, ips, rnd=0):
    return dict(impl="keras_nfnets", mode="serve", runtime=runtime,
                round=rnd, peak_rss_gb=1.0,
                batches={"1": dict(images_per_s=ips),
                         "8": dict(images_per_s=2 * ips)})


def _serving_peer(impl, batch, ips, precision="float32", rnd=0):
    return dict(impl=impl, mode="infer", batch=batch, images_per_s=ips,
                precision=precision, round=rnd, peak_rss_gb=2.0)


def test_serving_routes_are_compared_with_peers_of_their_precision():
    """fp32 and int8 routes against the fp32 peers, the bf16 route against
    the bf16 peers; the recommended route is a float one that gives the
    model's numbers, whatever the bf16 and int8 routes reach."""
    benchmark = _benchmark()
    data = dict(exports=[
        dict(runtime="openvino", export_s=5.0, file_mb=286.0,
             rel_diff_vs_keras=3e-7),
        dict(runtime="openvino_bf16", export_s=5.0, file_mb=286.0,
             rel_diff_vs_keras=2e-3),
        dict(runtime="litert_int8_dynamic", export_s=9.0, file_mb=72.0,
             rel_diff_vs_keras=0.05)], runs=[
        _serving_run("keras_folded", 6.0), _serving_run("openvino", 9.0),
        _serving_run("openvino_bf16", 24.0),
        _serving_run("litert_int8_dynamic", 40.0),
        _serving_peer("onnxruntime", 1, 10.0),
        _serving_peer("onnxruntime", 8, 20.0),
        _serving_peer("openvino", 1, 30.0, "bfloat16"),
        _serving_peer("openvino", 8, 40.0, "bfloat16")])
    rows = {(r["label"], r["batch"]): r for r in benchmark.serving_rows(data)}
    ov = rows["OpenVINO (folded export)", 1]
    assert ov["exact"] and ov["best_peer"] == "ONNX Runtime (timm export)"
    assert ov["ratio"] == pytest.approx(0.9)
    bf16 = rows["OpenVINO bf16 (folded export)", 8]
    assert not bf16["exact"] and bf16["precision"] == "bf16"
    assert bf16["best_peer"] == "OpenVINO (timm, from PyTorch), bf16"
    assert bf16["ratio"] == pytest.approx(48.0 / 40.0)
    int8 = rows["LiteRT int8, dynamic-range", 1]
    assert int8["best_peer"] == "ONNX Runtime (timm export)"
    peer = rows["OpenVINO (timm, from PyTorch), bf16", 1]
    assert peer["peer"] and peer["precision"] == "bf16"
    pick = benchmark.serving_recommendation(list(rows.values()))
    assert pick["runtime"] == "openvino" and pick["holds"] is False
    assert pick["fastest_bf16"][8]["label"] == "OpenVINO bf16 (folded export)"
    assert pick["fastest_int8"][1]["ratio"] == pytest.approx(4.0)
    lines = benchmark.serving_lines(pick)
    assert lines[0].startswith("Recommended serving route")
    assert any(line.startswith("Fastest bf16 route (against the bf16 peers): "
                               "OpenVINO bf16 (folded export) at batch 1 "
                               "(0.80×)") for line in lines)


def test_serving_ceiling_states_the_rate_the_target_needs():
    """Each batch's best fp32 peer and fastest exact route as GFLOP/s of
    the model against the median of the processes' GEMM ceilings, and
    what 1.2x the best peer needs; the bf16 peer is not the fp32 one."""
    benchmark = _benchmark()
    flops = 25e9  # per image: 10 img/s is 250 GFLOP/s
    runs = [dict(_serving_run("keras_folded", 6.0), ceiling_gflops=300.0),
            dict(_serving_run("onnx", 8.0), ceiling_gflops=320.0),
            dict(_serving_peer("openvino", 1, 10.0), ceiling_gflops=310.0,
                 flops_per_image=flops),
            dict(_serving_peer("openvino", 8, 11.0), ceiling_gflops=290.0,
                 flops_per_image=flops),
            dict(_serving_peer("openvino", 8, 30.0, "bfloat16"),
                 ceiling_gflops=305.0, flops_per_image=flops)]
    data = dict(exports=[dict(runtime="onnx", export_s=5.0, file_mb=286.0,
                              rel_diff_vs_keras=2e-7)], runs=runs)
    rows = benchmark.serving_rows(data)
    lines = {x["batch"]: x for x in benchmark.serving_ceiling(data, rows)}
    assert lines[1]["ceiling_gflops"] == 305.0  # median of the five
    assert lines[1]["ceiling_range"] == (290.0, 320.0)
    assert lines[8]["peer"] == "OpenVINO (timm, from PyTorch)"
    assert lines[8]["peer_gflops"] == pytest.approx(275.0)
    assert lines[8]["ours"] == "ONNX Runtime (folded export)"
    assert lines[8]["ours_gflops"] == pytest.approx(400.0)
    assert lines[8]["need_gflops"] == pytest.approx(1.2 * 275.0)
    table = benchmark.serving_ceiling_table(list(lines.values()))
    assert "fp32 ceiling: 305 GFLOP/s" in table
    assert ("| 8 | OpenVINO (timm, from PyTorch): 11.00, 275 (90 %) | "
            "ONNX Runtime (folded export): 16.00, 400 (131 %) | "
            "13.20, 330 (108 %; 103 %) |") in table
    # Runs recorded before the ceiling: no table.
    old = dict(data, runs=[{k: v for k, v in r.items()
                            if k != "ceiling_gflops"} for r in runs])
    assert benchmark.serving_ceiling(old, benchmark.serving_rows(old)) == []
    assert benchmark.serving_ceiling_table([]) == ""


def test_serving_run_end_to_end_on_a_tiny_model(tmp_path):
    """`--serving` on the tiny NFNet at 32 px without peers: the Keras,
    ONNX and OpenVINO routes exported in their own processes, each
    artefact's logits checked against the Keras model's, the table and
    the recommended route."""
    import os
    import subprocess
    _needs("onnxruntime", "openvino", "tf2onnx")
    out = tmp_path / "serving.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "benchmark.py"),
         "--serving", "--variant", _tiny_config(), "--serving_peers", "none",
         "--runtimes", "keras_folded,onnx,openvino", "--batches", "1,2",
         "--infer_size", "32", "--rounds", "1", "--steps", "1", "--warmup",
         "0", "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    exports = {e["runtime"]: e for e in data["exports"]}
    assert set(exports) == {"onnx", "openvino"}
    for e in exports.values():
        assert e["rel_diff_vs_keras"] < 1e-5 and e["file_mb"] > 0.5
    assert {r["runtime"] for r in data["runs"]} == {
        "keras_folded", "onnx", "openvino"}
    assert data["runs"][2]["framework"].startswith("openvino ")
    assert data["recommended"]["runtime"] in {"keras_folded", "onnx",
                                              "openvino"}
    assert "| OpenVINO (folded export) | fp32 |" in proc.stdout
    assert all(r["ceiling_gflops"] > 0 for r in data["runs"])


def test_agc_cost_alternates_and_takes_the_median_of_pairs():
    agc_cost = importlib.import_module("benchmarks.agc_cost")
    calls = []
    on, off = agc_cost.alternate(3, lambda: calls.append("on"),
                                 lambda: calls.append("off"), warmup=1)
    assert calls == ["on", "off", "on", "off", "off", "on", "on", "off"]
    assert len(on) == len(off) == 3
    calls.clear()
    agc_cost.alternate(1, lambda: calls.append("on"),
                       lambda: calls.append("off"), warmup=1,
                       prepare=lambda: calls.append("prepare"))
    assert calls == ["prepare", "on", "prepare", "off"] * 2
    assert agc_cost.overhead([1.1, 2.4, 1.0], [1.0, 2.0, 1.0]) == \
        pytest.approx(0.1)
    assert agc_cost.added([0.3, 0.25, 0.5], [0.2, 0.2, 0.2]) == \
        pytest.approx(0.1)
    # A scalar parameter (timm's skip gains) gets an array too.
    grads = agc_cost._fixed_gradients([(), (2, 3)])
    assert [g.shape for g in grads] == [(), (2, 3)]
    assert all(isinstance(g, np.ndarray) and g.dtype == np.float32
               for g in grads)
    low, high = agc_cost.quartiles([1.0, 1.1, 1.2, 1.3, 1.4],
                                   [1.0] * 5)
    assert low < 0.1 < 0.3 < high
    rows = [dict(side="keras_nfnets", on_median_s=2.3, off_median_s=2.25,
                 overhead=0.02, overhead_quartiles=(-0.01, 0.05), steps=20,
                 update_on_median_s=0.22, update_off_median_s=0.2,
                 update_added_s=0.02, update_share=0.02 / 2.25,
                 update_reps=30),
            dict(side="timm", on_median_s=2.7, off_median_s=2.5,
                 overhead=0.08, overhead_quartiles=(0.0, 0.1), steps=20,
                 update_on_median_s=0.33, update_off_median_s=0.13,
                 update_added_s=0.2, update_share=0.08, update_reps=30)]
    assert ("| keras_nfnets | 2.30 | 2.25 | +2.0 % (-1.0 to +5.0) | 220 | "
            "200 | +20 | +0.9 % | 20 / 30 |") in agc_cost.table(rows)
    assert agc_cost.verdict(rows).endswith("met.")
    assert ("+0.9 % of the step, in the update (timm: +8.0 %); whole steps"
            ", median of pairs: +2.0 % (timm: +8.0 %)") in \
        agc_cost.verdict(rows)
    assert agc_cost.target(rows)["holds"]
    assert agc_cost.verdict(rows[::-1][:1]) is None
    # The verdict reads the update measurement, not the whole steps.
    rows[0]["overhead"] = 0.09
    assert not agc_cost.verdict(rows).endswith("not met.")
    rows[0]["update_share"] = 0.081
    assert agc_cost.verdict(rows).endswith("not met.")


def test_agc_cost_run_on_tiny_models(tmp_path):
    """benchmarks/agc_cost.py end to end: each side (the tiny NFNet in
    Keras, timm's test_nfnet) in its own process, two models each, with and
    without AGC; the JSON, the table and the verdict."""
    import os
    import subprocess
    _needs("torch", "timm")
    out = tmp_path / "agc.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "agc_cost.py"),
         "--variant", _tiny_config(), "--timm_model", "test_nfnet",
         "--size", "32", "--batch", "2", "--steps", "2", "--warmup", "1",
         "--update_reps", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert [r["side"] for r in data["rows"]] == ["keras_nfnets", "timm"]
    for r in data["rows"]:
        assert len(r["on_s"]) == len(r["off_s"]) == 2
        assert len(r["update_on_s"]) == len(r["update_off_s"]) == 2
        assert r["update_on_median_s"] > 0 and r["update_off_median_s"] > 0
        assert r["cpu"]["model"]
    assert data["verdict"].startswith("AGC's per-step cost: ")
    assert "| timm |" in proc.stdout


def test_winograd_f23_computes_the_grouped_convolution():
    """benchmarks/serving_profile.py's F(2, 3) in OpenVINO ops against a
    grouped stride-1 "same" 3x3 convolution computed in float64 numpy,
    within fp32's rounding bound."""
    _needs("openvino")
    import openvino as ov
    serving_profile = importlib.import_module("benchmarks.serving_profile")
    rng = np.random.default_rng(3)
    n, cin, cout, h, groups = 2, 8, 6, 6, 2
    cg, og = cin // groups, cout // groups
    w = rng.standard_normal((groups, og, cg, 3, 3)).astype("float32")
    x = rng.standard_normal((n, cin, h, h)).astype("float32")
    got = ov.Core().compile_model(
        serving_profile.winograd_model(n, cin, h, w), "CPU",
        {"INFERENCE_PRECISION_HINT": "f32"})({0: x})[0]
    xp = np.pad(x.astype("float64"), ((0, 0), (0, 0), (1, 1), (1, 1)))
    want, scale = np.zeros((n, cout, h, h)), np.zeros((n, cout, h, h))
    for g in range(groups):
        for i in range(3):
            for j in range(3):
                patch = xp[:, g * cg:(g + 1) * cg, i:i + h, j:j + h]
                want[:, g * og:(g + 1) * og] += np.einsum(
                    "nchw,oc->nohw", patch, w[g, :, :, i, j])
                scale[:, g * og:(g + 1) * og] += np.einsum(
                    "nchw,oc->nohw", np.abs(patch), np.abs(w[g, :, :, i, j]))
    # A sum of k terms in fp32 is within k * eps of the sum of their
    # magnitudes; F(2, 3)'s transforms add 4 + 4 terms before and after the
    # 16 products per output and scale them by at most 4 (B^T d B, A^T m A).
    eps = np.finfo("float32").eps
    assert np.all(np.abs(got - want) <= 4 * (9 * cg + 16) * eps * scale)
    assert np.abs(got - want).max() > 0  # fp32, not float64


def test_serving_profile_end_to_end_at_64_px(tmp_path):
    """benchmarks/serving_profile.py at 64 px, batch 1, one round: both IRs
    made in their own processes and profiled node by node; they hold the
    same network's FLOPs (keras_nfnets' own count); every stride-1 3x3
    shape has its Winograd row, with F(2, 3)'s output as the convolution's;
    the network table and its verdict line. Exports F0 twice (Keras and
    timm): about 40 s."""
    _needs("openvino", "torch", "timm")
    import keras_nfnets
    from keras_nfnets import flops
    serving_profile = importlib.import_module("benchmarks.serving_profile")
    out = tmp_path / "profile.json"
    data = serving_profile.main([
        "--size", "64", "--batches", "1", "--rounds", "1", "--repeats", "1",
        "--winograd_rounds", "1", "--out", str(out)])
    assert json.loads(out.read_text())["network"] == data["network"]
    model = keras_nfnets.NFNet("F0", weights=None, input_shape=(64, 64, 3))
    expected = flops.count_flops(model)
    for side in ("ours", "timm"):
        profile = data["profiles"][side]["1"]
        assert sum(r["flops"] for r in profile["classes"].values()) == \
            pytest.approx(expected, rel=1e-3)
        assert profile["classes"]["GroupConv 3x3, stride 1"]["nodes"] == 19
        # 12 squeeze-excites of two linears each, and the classifier
        assert profile["classes"][serving_profile.LINEAR]["nodes"] == 25
    shapes = {tuple(c["shape"]) for c in
              data["profiles"]["ours"]["1"]["stride1_3x3"]}
    assert {(r["in_channels"], r["out_channels"], r["spatial"], r["groups"])
            for r in data["winograd"]} == shapes
    assert all(r["rel_diff"] < 1e-5 for r in data["winograd"])
    text = serving_profile.tables(data)
    assert "| Conv 1x1 |" in text and "| all executed nodes |" in text
    assert text.splitlines()[-1].startswith("F(2, 3) as OpenVINO ops is ")
    with pytest.raises(SystemExit):
        serving_profile.main(["--size", "100"])
