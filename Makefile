# Every target creates .venv on first use. torch==2.13.0 goes in first so pip never pulls a CUDA build.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.segrl-installed
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false

.PHONY: venv demo test test-fast bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q torch==2.13.0 -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/segrl demo --output_dir runs/demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# BENCH_ARGS=--quick for a fast pass; results go to bench_results/*.md
bench: $(STAMP)
	$(PY) benchmarks/bench_ops.py $(BENCH_ARGS)
	$(PY) benchmarks/bench_rm.py $(BENCH_ARGS)
	$(PY) benchmarks/bench_dpo.py $(BENCH_ARGS)
	$(PY) benchmarks/bench_ppo.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs build *.egg-info
