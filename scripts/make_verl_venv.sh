#!/usr/bin/env bash
# Create the separate verl test environment (default: .venv-verl) for `segrl[verl]`.
#
# Why a second venv: verl 0.9.1 pins transformers>=5.5.3,<5.11 while segrl's main venv tracks the
# newest transformers, so the two cannot share one environment. segrl goes in with --no-deps: the
# plugin only needs segrl.ops (torch + numpy + scikit-learn); transformers, tokenizers, safetensors
# and friends come in through verl itself (at verl's pins), which is enough for segrl.rm scoring.
#
# Order matters: torch==2.13.0 first (the CPU wheel), then pinned again next to verl so pip never
# swaps it for a CUDA build. Avoid verl's [cpu]/[fsdp]/[vllm]/[sglang]/[megatron] extras: they pin
# torch 2.11 and pull CUDA packages. [verl-core] is what the v1 trainer imports (transfer_queue...).
#
# Usage: scripts/make_verl_venv.sh [VENV_DIR]      (env: PYTHON=python3)
# Idempotent: a stamp file makes a second run a no-op unless pyproject.toml or this script changed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-${VENV_VERL:-$ROOT/.venv-verl}}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.segrl-verl-installed"
VERL_SPEC="verl[verl-core]==0.9.1"

if [[ -f "$STAMP" && "$STAMP" -nt "$ROOT/pyproject.toml" && "$STAMP" -nt "${BASH_SOURCE[0]}" ]]; then
    echo "make_verl_venv: $VENV is up to date"
    exit 0
fi

start=$(date +%s)
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
pip_install() {
    # The machine-wide pip config lists find-links/index locations that do not exist everywhere;
    # drop only those warnings. pipefail keeps pip's own exit status.
    "$VENV/bin/python" -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}
pip_install torch==2.13.0
pip_install torch==2.13.0 "$VERL_SPEC" "numpy>=1.26" "scikit-learn>=1.3" "pytest>=8"
# Editable and without dependencies: pulling segrl's own deps would upgrade transformers past verl's pin.
pip_install --no-deps -e "$ROOT"
# Fail here, not in the tests, if the resolver broke the environment. segrl's own requirements
# (trl, matplotlib, ...) are missing on purpose, so only other packages' complaints count.
conflicts=$("$VENV/bin/python" -m pip check 2>/dev/null | grep -v -e '^segrl ' -e '^No broken requirements' || true)
if [[ -n "$conflicts" ]]; then
    echo "make_verl_venv: pip check reported conflicts:" >&2
    echo "$conflicts" >&2
    exit 1
fi
HF_HUB_OFFLINE=1 "$VENV/bin/python" -c "import torch, verl, segrl.ops; print('make_verl_venv: torch', torch.__version__, '| verl', verl.__version__)"
touch "$STAMP"
echo "make_verl_venv: $VENV ready in $(( $(date +%s) - start )) s"
