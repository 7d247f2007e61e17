"""benchmarks/: the cpuinfo parser, the peer child's argument handling, the
configurations of an interleaved run, the ratio / roofline tables on a
synthetic result list, and the profile's op categories. No model is built
and nothing is timed (speed is what benchmarks/benchmark.py records)."""

import importlib
import sys
import types

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
    info = peers.parse_cpuinfo(SAPPHIRE)
    assert info["avx512"] and info["avx512_bf16"] and info["amx"]
    assert info["isa"] == "AVX2, AVX-512 (bf16), AMX"


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
    for bad in (["--impl", "onnxruntime", "--mode", "train", "--onnx", "m"],
                ["--impl", "onnxruntime"],  # no --onnx
                ["--impl", "tf"],
                ["--batch", "0"]):
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
        "keras", "keras", "keras", "timm", "timm", "timm_channels_last"]
    assert train[4]["agc_clipping"] == 0  # timm without AGC
    assert {c["size"] for c in train} == {192}
    assert [c.get("remat") for c in train[:2]] == ["auto", "off"]
    assert train[2]["tf_threads"] == "0:1"
    # ONNX Runtime is an inference peer only.
    assert [c.get("impl", "keras") for c in infer] == [
        "keras", "timm", "timm_channels_last", "onnxruntime"]
    common = types.SimpleNamespace(steps=3, warmup=1, agc_clipping=0.01)
    cmd = benchmark.peer_command(infer[-1], common,
                                 dict(path="/x.onnx", flops_per_image=2e9))
    assert cmd[1].endswith("peers.py")
    assert peers.parse_args(cmd[2:]).onnx == "/x.onnx"


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
    assert train["target_s"] == pytest.approx(8 / 1.9 / 1.5)
    assert train["target_mfu"] == pytest.approx(work / train["target_s"]
                                                / 80)
    assert "| train | 335 | 80 |" in summary.roofline_table([train])


def test_targets_are_judged_on_the_defaults():
    t = {x["target"]: x for x in summary.targets(summary.summarize(ROWS))}
    train = t["training ≥ 1.5× the best peer"]
    assert not train["holds"] and train["measured"] == "0.58× timm eager"
    assert t["inference ≥ 1.5× the best peer"]["measured"].startswith(
        "1.00× ONNX Runtime")
    assert t["peak training memory ≤ timm eager's"]["holds"]  # 2.0 vs 2.0
    assert t["first training step ≤ 30 s from process start"]["holds"]
    assert "| no |" in summary.targets_table(list(t.values()))


def test_summary_without_peers_has_no_ratio():
    s = summary.summarize([r for r in ROWS if r["impl"] == "keras_nfnets"])
    assert all(x["ratio"] is None for x in s)
    assert summary.ratio_lines(s) == []


@pytest.mark.parametrize("name,op_type,category", [
    ("nfnet_f0/nf_block/conv1/convolution", "Conv2D",
     "convolution forward"),
    ("gradient_tape/nfnet_f0/final_conv/convolution/Conv2DBackpropInput",
     "Conv2DBackpropInput", "convolution input gradient"),
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
