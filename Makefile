PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test demo bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,backends]"
	touch $(STAMP)

venv: $(STAMP)

# pytest exits 5 when it collects no test: that is not a failure of the build.
test: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

demo: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m training.train --demo

bench: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) benchmarks/benchmark.py --compare_allocator --out benchmarks/results.json
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) benchmarks/benchmark.py --modes train --backend tensorflow,jax,torch --out benchmarks/results_backends.json
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) benchmarks/benchmark.py --serving --note "$(BENCH_NOTE)" --out benchmarks/results_serving.json

clean:
	rm -rf $(VENV) build *.egg-info
