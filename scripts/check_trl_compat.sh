#!/usr/bin/env bash
# `make compat`: run the trainer parity tests against the lowest and the highest TRL that
# pyproject.toml allows (segrl._trl_compat.SUPPORTED_TRL), each in its own venv:
# .venv-compat-lo and .venv-compat-hi (one venv when both ends are the same release).
#
# Versions come from the package index (`pip index versions trl`), filtered by the pinned range.
# torch==2.13.0 goes in first (the CPU wheel), then segrl (editable, [peft]) with trl==<version>.
# Usage: scripts/check_trl_compat.sh [PYTEST_ARGS...]   (env: PYTHON=python3, COMPAT_TESTS=...)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
COMPAT_TESTS="${COMPAT_TESTS:-tests/test_trl_compat.py tests/test_dpo_trainer.py tests/test_rm_trainer.py tests/test_grpo.py tests/test_rs_sampler.py}"

quiet_pip() {  # drop the machine-wide "location is ignored" warnings, keep pip's exit status
    "$1/bin/python" -m pip "${@:2}" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

PIN_RANGE="$("$PYTHON" -c "import ast,sys; t=open('segrl/_trl_compat.py').read(); \
print(next(ast.literal_eval(n.value) for n in ast.parse(t).body if isinstance(n, ast.Assign) \
and getattr(n.targets[0], 'id', '') == 'SUPPORTED_TRL'))")"
AVAILABLE="$("$PYTHON" -m pip index versions trl 2>/dev/null | sed -n 's/^Available versions: //p')"
read -r LO HI < <("$PYTHON" - "$PIN_RANGE" "$AVAILABLE" <<'EOF'
import sys
from packaging.specifiers import SpecifierSet
from packaging.version import Version
spec, available = SpecifierSet(sys.argv[1]), [v.strip() for v in sys.argv[2].split(",") if v.strip()]
ok = sorted((Version(v) for v in available if Version(v) in spec))
if not ok:
    sys.exit(f"no trl release on the index matches trl{spec} (index says: {available or 'nothing'})")
print(ok[0], ok[-1])
EOF
)
echo "make compat: trl$PIN_RANGE -> lowest $LO, highest $HI"

status=0
summary=""
for end in lo hi; do
    version=$([[ $end == lo ]] && echo "$LO" || echo "$HI")
    if [[ $end == hi && "$HI" == "$LO" ]]; then
        summary+="hi: trl $HI is the same release as lo (tested once)"$'\n'
        continue
    fi
    venv="$ROOT/.venv-compat-$end"
    if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('trl') != '$version')" 2>/dev/null; then
        test -x "$venv/bin/python" || "$PYTHON" -m venv "$venv"
        quiet_pip "$venv" install -q torch==2.13.0
        quiet_pip "$venv" install -q torch==2.13.0 "trl==$version" -e ".[peft]" "pytest>=8" "hypothesis>=6.100"
    fi
    installed=$("$venv/bin/python" -c "import trl; print(trl.__version__)")
    echo "== trl $installed in $venv: $COMPAT_TESTS"
    # shellcheck disable=SC2086
    if "$venv/bin/python" -m pytest -q -p no:cacheprovider $COMPAT_TESTS "$@"; then
        summary+="$end: trl $installed passed"$'\n'
    else
        summary+="$end: trl $installed FAILED"$'\n'
        status=1
    fi
done
printf '\nmake compat (trl%s):\n%s' "$PIN_RANGE" "$summary"
exit $status
