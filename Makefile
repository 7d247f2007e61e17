PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-all test-floor test-notf demo bench bench-peers bench-serving bench-remat bench-int8 bench-agc bench-contended \
	bench-profile bench-first-step bench-conv bench-serving-profile bench-all bench-venv bench-gpu clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,backends]"
	touch $(STAMP)

venv: $(STAMP)

# pytest exits 5 when it collects no test: that is not a failure of the build.
# `make test` (what CI runs) leaves out the tests marked slow (setup.cfg);
# `make test-all` runs them too. tests/unit runs on 2 pytest-xdist workers
# (a module stays whole on one worker, and the modules that train an
# F0-sized model share one: tests/conftest.py); tests/integration (the
# subprocess and multi-process runs, which use both cores themselves) runs
# after it, one test at a time. Both run even if the first fails.
PYTEST := TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q --durations=25
UNIT_WORKERS := -n 2 --dist loadgroup
define both_ok
for rc in $(1); do [ $$rc -eq 0 ] || [ $$rc -eq 5 ] || exit $$rc; done
endef

test: $(STAMP)
	$(PYTEST) -m "not slow" $(UNIT_WORKERS) tests/unit; u=$$?; \
	$(PYTEST) -m "not slow" tests/integration; i=$$?; \
	$(call both_ok,$$u $$i)

test-all: $(STAMP)
	$(PYTEST) $(UNIT_WORKERS) tests/unit; u=$$?; \
	$(PYTEST) tests/integration; i=$$?; \
	$(call both_ok,$$u $$i)

# The floor of the supported range (setup.cfg): the oldest TensorFlow with TPU
# wheels and the oldest Keras it accepts, in a venv of their own, on the fast
# subset (layers, AGC, weights, applications, optimizers). MirroredStrategy is
# covered there by the AGC canary; its 3-step NFNet comparison runs in `test`.
FLOOR_VENV := .venv-floor
FLOOR_PY := $(FLOOR_VENV)/bin/python
FLOOR_STAMP := $(FLOOR_VENV)/.installed
FLOOR_PINS := "tensorflow==2.20.*" "keras==3.10.*"
FLOOR_TESTS := tests/unit/test_layers_*.py tests/unit/test_runtime.py tests/unit/test_optim_clip.py tests/unit/test_optim_agc.py \
	tests/unit/test_optim_skip.py tests/unit/test_optim_fused_sgd.py tests/integration/test_agc_canary.py tests/unit/test_weights_deepmind.py \
	tests/unit/test_applications.py tests/unit/test_optim_recipe.py
# CI time: the heavy fit-based AGC tests run on the latest Keras in `test`; on
# the floor the canary (every backend and strategy it has, mixed_float16)
# shows that AGC clips inside fit.
FLOOR_DESELECT := test_mirrored_strategy_clips_the_global_batch_gradient \
	test_agc_train_step_compiles_with_xla test_save_and_load_keep_agc \
	test_mixed_float16_agc_sees_unscaled_gradients
# The big F-series builds (parameter counts F3-F6, F7 and the + variants) are
# the same code as F0-F2 on the floor; they run on the latest Keras in `test`.
FLOOR_DESELECT_APPS := $(foreach v,F3 F4 F5 F6,"test_parameter_counts_match_deepmind[$(v)]") \
	test_f7_and_plus_variants_build

$(FLOOR_STAMP): setup.cfg pyproject.toml
	test -x $(FLOOR_PY) || $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_PY) -m pip install -q --upgrade pip
	$(FLOOR_PY) -m pip install -q $(FLOOR_PINS) pytest
	$(FLOOR_PY) -m pip install -q -e ".[tensorflow]" $(FLOOR_PINS)
	touch $(FLOOR_STAMP)

test-floor: $(FLOOR_STAMP)
	$(FLOOR_PY) -c "import keras, tensorflow as tf; print('floor: keras', keras.__version__, 'tensorflow', tf.__version__)"
	TF_CPP_MIN_LOG_LEVEL=2 $(FLOOR_PY) -m pytest -q -m "not slow" --durations=10 \
	  $(FLOOR_TESTS) $(addprefix --deselect tests/unit/test_optim_agc.py::,$(FLOOR_DESELECT)) \
	  $(addprefix --deselect tests/unit/test_applications.py::,$(FLOOR_DESELECT_APPS)); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# The JAX and PyTorch user's install: the package with [jax,torch] and the
# test-portable extra, no TensorFlow (asserted), in a venv of its own; the
# backend-portable tests (tests/integration/test_no_tensorflow.py) on each backend.
NOTF_VENV := .venv-notf
NOTF_PY := $(NOTF_VENV)/bin/python
NOTF_STAMP := $(NOTF_VENV)/.installed
NOTF_TESTS := tests/integration/test_no_tensorflow.py
# Quick XLA:CPU compiles for the JAX run (numerics unchanged), as the
# suite's JAX subprocesses use (tests/training_helpers.py FAST_XLA).
FAST_XLA := --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true

$(NOTF_STAMP): setup.cfg pyproject.toml
	test -x $(NOTF_PY) || $(PYTHON) -m venv $(NOTF_VENV)
	$(NOTF_PY) -m pip install -q --upgrade pip
	$(NOTF_PY) -m pip install -q ".[jax,torch,test-portable]"
	touch $(NOTF_STAMP)

test-notf: $(NOTF_STAMP)
	cd tests && ../$(NOTF_PY) -c "import importlib.util as u, sys; \
	  u.find_spec('tensorflow') and sys.exit('tensorflow is installed in $(NOTF_VENV)'); \
	  print('$(NOTF_VENV): tensorflow is not installed')"
	@for backend in jax torch; do \
	  echo "no TensorFlow, KERAS_BACKEND=$$backend:"; \
	  (cd tests && KERAS_BACKEND=$$backend JAX_PLATFORMS=cpu XLA_FLAGS="$(FAST_XLA)" ../$(NOTF_PY) -m pytest -q -p no:cacheprovider \
	    --rootdir=.. -c ../setup.cfg $(addprefix ../,$(NOTF_TESTS))) || exit $$?; \
	done

demo: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m training.train --demo

# Benchmarks run in a venv of their own, .venv-bench, built from the
# `bench` extra (timm, torch, onnx, onnxruntime: the peers; tf2onnx,
# LiteRT, jax for the serving and backend runs): none of it is the
# package's dependency, and `make test` (CI) does not build it.
BENCH_VENV := .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_PEERS := timm,timm_channels_last,timm_compile,onnxruntime
# The experiments in the peer run: remat forced on (the CPU default before
# remat="auto" decided by memory), and timm and keras_nfnets without AGC
# (timm's default training has none; the pair gives each one's AGC share
# per step). (`--compare_threads 0:1`, one inter-op thread, was measured no
# faster: results_peers.json at 64a158d.)
BENCH_EXPERIMENTS := --compare_remat --compare_peer_agc --compare_agc
BENCH_ARGS ?=

$(BENCH_STAMP): setup.cfg pyproject.toml
	test -x $(BENCH_PY) || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install -q --upgrade pip
	$(BENCH_PY) -m pip install -q -e ".[bench]"
	touch $(BENCH_STAMP)

bench-venv: $(BENCH_STAMP)

# `make bench`: the peer run (the README's table), the serving run, remat by
# memory and the int8 accuracy of the demo model.
bench: bench-peers bench-serving bench-remat bench-int8 bench-agc

# keras_nfnets against timm (eager, channels_last, torch.compile) and ONNX
# Runtime on timm's export, interleaved over rounds in one run: the
# README's table. On a CPU with avx512_bf16 or AMX the run adds bf16 rows
# on both sides (--bf16 auto).
bench-peers: $(BENCH_STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(BENCH_PY) benchmarks/benchmark.py --peers $(BENCH_PEERS) \
	  $(BENCH_EXPERIMENTS) --rounds 2 --steps 3 --warmup 1 $(BENCH_ARGS) --out benchmarks/results_peers.json

# F0 inference at batch 1 and 8: the Keras model, its folded copy, its
# three export formats and its int8 exports, against timm (eager,
# channels_last, torch.compile), ONNX Runtime on timm's export and OpenVINO
# on timm's model, interleaved over rounds, each process also measuring
# this CPU's fp32 ceiling (docs/performance.md, "Inference and export").
bench-serving: $(BENCH_STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(BENCH_PY) benchmarks/benchmark.py --serving --serving_peers $(BENCH_PEERS),openvino \
	  --rounds 2 --steps 3 --warmup 2 --note "$(BENCH_NOTE)" $(BENCH_ARGS) --out benchmarks/results_serving.json

# The int8 exports' accuracy change: the offline demo model (trained first
# when --model_dir has none) on its held-out images, fp32 Keras against
# each int8 export (docs/performance.md). An accuracy, not a speed: it runs
# in the test venv, which has the training program's packages.
# AGC's per-step cost on each side (keras_nfnets, timm), two models
# stepping alternately in one process per side.
bench-agc: $(BENCH_STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(BENCH_PY) benchmarks/agc_cost.py --out benchmarks/results_agc_cost.json

bench-int8: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) benchmarks/int8_accuracy.py --note "$(BENCH_NOTE)" --out benchmarks/results_int8.json

# NFNet-F0 on a GPU: keras_nfnets on JAX (mixed_bfloat16 and float32)
# against timm on CUDA (bf16 autocast + channels_last, eager and
# torch.compile), each in its own process, interleaved; writes
# benchmarks/results_gpu.json (render it with python -m
# benchmarks.render_docs). For a machine with JAX (CUDA), PyTorch and timm
# and no TensorFlow: no venv is built; GPU_PY is its python, which also
# needs keras (keras, namex, optree). GPU_ARGS: e.g. --batch 128
# --train_size 224 --rounds 1 --configs keras_bf16,timm_bf16_cl_compile.
GPU_PY ?= python3
GPU_ARGS ?=
bench-gpu:
	$(GPU_PY) benchmarks/gpu.py --device cuda $(GPU_ARGS) --out benchmarks/results_gpu.json

# remat="auto" by memory: F0 at batch 32 in a 5 GB memory cgroup, auto
# against remat off (needs root; else the rows say so).
bench-remat: $(BENCH_STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(BENCH_PY) benchmarks/remat_memory.py --out benchmarks/results_remat.json

# The same under a fixed background load: a busy loop pinned to CPU 0.
bench-contended: $(BENCH_STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(BENCH_PY) benchmarks/benchmark.py --contended --modes train \
	  --peers timm --compare_threads 0:1 --rounds 1 --steps 2 --warmup 1 $(BENCH_ARGS) \
	  --out benchmarks/results_contended.json

# One profiled F0 training step by op type (docs/performance.md).
bench-profile: $(BENCH_STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(BENCH_PY) benchmarks/profile_step.py --out benchmarks/profile_f0.json

# The first training step from process start, phase by phase (imports,
# build, tracing, grappler from its own log, first execution), per
# configuration: defaults, remat off, grappler off and its longest passes
# off one by one, oneDNN off (docs/performance.md).
bench-first-step: $(BENCH_STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(BENCH_PY) benchmarks/first_step.py --out benchmarks/results_first_step.json

# The convolution kernels of F0's training step, TensorFlow's gradient
# kernels against keras_nfnets' own formulations (docs/performance.md).
bench-conv: $(BENCH_STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(BENCH_PY) benchmarks/conv_gradients.py --out benchmarks/results_conv_gradients.json

# Where OpenVINO's inference time goes, op class by op class, in the folded
# export and in timm's model, and what Winograd for the stride-1 3x3
# convolutions could save (docs/performance.md).
bench-serving-profile: $(BENCH_STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(BENCH_PY) benchmarks/serving_profile.py --out benchmarks/results_serving_profile.json

bench-all: bench bench-contended bench-profile bench-first-step bench-conv bench-serving-profile
	TF_CPP_MIN_LOG_LEVEL=2 $(BENCH_PY) benchmarks/benchmark.py --compare_allocator --out benchmarks/results.json
	TF_CPP_MIN_LOG_LEVEL=2 $(BENCH_PY) benchmarks/benchmark.py --modes train --backend tensorflow,jax,torch --out benchmarks/results_backends.json

clean:
	rm -rf $(VENV) $(FLOOR_VENV) $(NOTF_VENV) $(BENCH_VENV) build *.egg-info
