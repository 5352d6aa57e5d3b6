#!/usr/bin/env bash
# segrl on one GPU: the CUDA ops tests + bf16 benchmarks (benchmarks/gpu_check.py), about 10 minutes on an H200.
#
# The GPU machine has torch and transformers but no trl / datasets / peft / pytest and no network, so the
# wheels travel with the tree. Two steps:
#
#   1. Here (with PyPI access), once: download the wheels for the GPU machine's Python into .bench/wheels/
#        benchmarks/gpu_check.sh download [PYTHON_VERSION]      # e.g. 3.11 (default: this python's)
#      It takes the exact versions of this venv (trl 1.16, datasets, peft, accelerate, pytest, hypothesis, ...
#      and what they need, but not torch / transformers and their own dependencies, which the GPU machine has),
#      plus trl 1.12.0 for the PPO baseline. .bench/ is git-ignored: copy it along with the tree. About 70 MiB
#      for Python 3.11, 52 MiB of it pyarrow, which goes to .bench/wheels-pyarrow/ so that each folder fits a
#      64 MiB transfer on its own (a device tool that keeps ignored files between calls: carry
#      .bench/wheels-pyarrow with a first `true` command, then .bench/wheels with the run).
#
#   2. There: install from that folder only, then run (add --tiny to check it on a CPU in a few minutes):
#        benchmarks/gpu_check.sh run [--tiny] [--sections ops_tests,dpo,rm,ppo] [--no-trl]
#      Results: bench_results/gpu_check.md (+ .json), printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${SEGRL_WHEELS:-.bench/wheels}
PY=${PYTHON:-python}
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

cmd=${1:-run}
shift || true

case "$cmd" in
download)
    pyver=${1:-$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
    mkdir -p "$WHEELS"
    # pinned list: the requirement closure of the packages the check needs, minus torch / transformers' closure
    "$PY" - > "$WHEELS/requirements.txt" <<'EOF'
import re
from importlib import metadata

def deps(name):
    try:
        reqs = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return []
    out = []
    for r in reqs:
        if "extra ==" in r:
            continue
        out.append(re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0])
    return out

def closure(roots):
    seen, todo = set(), list(roots)
    while todo:
        n = todo.pop().lower().replace("_", "-")
        if n in seen:
            continue
        try:
            metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
        seen.add(n)
        todo += deps(n)
    return seen

present = closure(["torch", "transformers"])  # on the GPU machine already
needed = closure(["trl", "datasets", "peft", "accelerate", "rich", "pyyaml", "pytest", "hypothesis"])
# rich (segrl's progress bars) comes with transformers' CLI dependencies here; bring it anyway, it is small
for name in sorted((needed - present) | closure(["rich"])):
    print(f"{name}=={metadata.version(name)}")
EOF
    echo "downloading $(wc -l < "$WHEELS/requirements.txt") wheels + trl 1.12.0 for Python $pyver into $WHEELS ..."
    for spec in "-r $WHEELS/requirements.txt" "trl==1.12.0"; do
        # shellcheck disable=SC2086
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" \
            --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
            --dest "$WHEELS" $spec
    done
    mkdir -p "$WHEELS-pyarrow"
    mv "$WHEELS"/pyarrow-*.whl "$WHEELS-pyarrow/" 2>/dev/null || true
    du -sh "$WHEELS" "$WHEELS-pyarrow"
    ;;
run)
    if ! "$PY" -c "import trl, datasets, peft, pytest, hypothesis" 2>/dev/null; then
        [ -d "$WHEELS" ] || { echo "no trl/datasets here and no $WHEELS: run '$0 download' where PyPI is reachable" >&2; exit 2; }
        "$PY" -m pip install --no-index --no-deps --find-links "$WHEELS" --find-links "$WHEELS-pyarrow" \
            -r "$WHEELS/requirements.txt"
    fi
    if [ ! -f .bench/trl-1.12.0/trl/__init__.py ]; then  # TRL 1.12's PPO, used by benchmarks/bench_ppo.py
        if [ -d "$WHEELS" ] && ls "$WHEELS"/trl-1.12.0-*.whl >/dev/null 2>&1; then
            "$PY" -m pip install -q --no-index --no-deps --find-links "$WHEELS" --target .bench/trl-1.12.0 trl==1.12.0
        fi
    fi
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
    PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" benchmarks/gpu_check.py "$@"
    ;;
*)
    echo "usage: $0 download [PYTHON_VERSION] | run [--tiny] [--sections ...] [--no-trl]" >&2
    exit 2
    ;;
esac
