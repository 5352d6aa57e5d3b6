# Every target creates .venv on first use. torch==2.13.0 goes in first so pip never pulls a CUDA build.
PYTHON ?= python3
VENV   ?= .venv
VENV_VERL ?= .venv-verl
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.segrl-installed
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
export DS_BUILD_OPS=0

.PHONY: venv demo test test-fast test-verl check-distributed check-deepspeed bench clean compat mutation

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q torch==2.13.0 -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/segrl demo --output_dir runs/demo

# The verl plugin's tests run in their own venv: verl 0.9.1 pins transformers < 5.11.
test: $(STAMP) test-verl
	$(PY) -m pytest -q -n 2 --dist loadfile

test-verl:
	scripts/make_verl_venv.sh $(VENV_VERL)
	$(VENV_VERL)/bin/python -m pytest -q -p no:cacheprovider tests/verl

check-distributed: $(STAMP)
	scripts/check_distributed.sh $(VENV)

check-deepspeed: $(STAMP)
	$(PY) -c "import deepspeed" 2>/dev/null || DS_BUILD_OPS=0 $(PY) -m pip install -q torch==2.13.0 deepspeed
	scripts/check_deepspeed.sh $(VENV)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# BENCH_ARGS=--quick for a fast pass; results go to bench_results/*.md
bench: $(STAMP)
	$(PY) benchmarks/bench_ops.py $(BENCH_ARGS)
	$(PY) benchmarks/bench_rm.py $(BENCH_ARGS)
	$(PY) benchmarks/bench_dpo.py $(BENCH_ARGS)
	$(PY) benchmarks/bench_ppo.py $(BENCH_ARGS)

# Trainer parity tests against the lowest and highest TRL the pin allows (.venv-compat-lo / -hi).
compat:
	scripts/check_trl_compat.sh $(COMPAT_ARGS)

# Mutation testing with mutmut (slow, not in CI). Defaults: segrl/ops + trainer glue; narrow with e.g.
# make mutation MUTATE=segrl/ops/asr.py TESTS="tests/test_ops_hand.py tests/test_ops_properties.py"
mutation: $(STAMP)
	VENV=$(VENV) $(if $(MUTATE),MUTATE="$(MUTATE)") $(if $(TESTS),TESTS="$(TESTS)") scripts/mutation.sh

clean:
	rm -rf $(VENV) $(VENV_VERL) .venv-compat-lo .venv-compat-hi .mutation runs build *.egg-info
