#!/usr/bin/env bash
# `make mutation`: mutation testing with mutmut 3 (not in CI: it runs the selected tests once per mutant).
#
# mutmut reads its settings from the pyproject.toml of the directory it runs in and writes a
# mutated copy of the sources to ./mutants, so it runs in a scratch copy of the repository
# (default .mutation/, git-ignored) whose pyproject.toml gets a generated [tool.mutmut] section:
# the repository's own files are never touched.
#
#   MUTATE  globs of the files to mutate (default: segrl/ops and the trainer glue)
#   TESTS   the pytest selection that must kill the mutants (mutmut runs, for each mutant, only
#           the tests of that selection that call the mutated function)
#   MAX_CHILDREN  parallel mutants (default 2)
#
# e.g. scripts/mutation.sh    or    MUTATE="segrl/ops/asr.py" TESTS="tests/test_ops_hand.py" scripts/mutation.sh
# At the end: the score (killed / mutants) and the surviving mutants (`mutmut show <name>` in .mutation/).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
WORK="${MUTATION_DIR:-$ROOT/.mutation}"
MUTATE="${MUTATE:-segrl/ops/*.py segrl/asr_options.py segrl/_distributed.py segrl/token_rewards.py segrl/dpo/layout.py segrl/dpo/collator.py segrl/grpo/trainer.py segrl/ppo/trainer.py}"
TESTS="${TESTS:-tests/test_ops_hand.py tests/test_ops_properties.py tests/test_ops_errors.py tests/test_ppo_ops.py tests/test_dpo_layout.py tests/test_dpo_trainer.py tests/test_grpo.py tests/test_ppo_trainer.py}"
MAX_CHILDREN="${MAX_CHILDREN:-2}"

"$PY" -c "import mutmut" 2>/dev/null || "$PY" -m pip install -q "mutmut==3.8.1"

mkdir -p "$WORK"
# A fresh copy of the code and tests; mutants/ (mutmut's cache of results) is kept between runs
# and mutmut re-runs only what changed.
rm -rf "$WORK/segrl" "$WORK/tests"
cp -rL "$ROOT/segrl" "$ROOT/tests" "$WORK/"  # -L: symlinks (segrl/examples) become copies
find "$WORK" -name __pycache__ -prune -exec rm -rf {} +

toml_list() { printf '['; local sep=""; for x in "$@"; do printf '%s"%s"' "$sep" "$x"; sep=", "; done; printf ']'; }
# shellcheck disable=SC2086
{
    cat "$ROOT/pyproject.toml"
    printf '\n[tool.mutmut]\nsource_paths = ["segrl"]\n'
    printf 'only_mutate = %s\n' "$(toml_list $MUTATE)"
    printf 'pytest_add_cli_args_test_selection = %s\n' "$(toml_list $TESTS)"
    printf 'pytest_add_cli_args = ["-q", "-p", "no:cacheprovider", "-x"]\n'
    printf 'use_git_change_detection = false\n'
} >"$WORK/pyproject.toml"

cd "$WORK"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# mutmut puts mutants/ first on sys.path, ahead of the editable install of segrl. Run the console
# script, not `python -m mutmut` (which would put the unmutated copy in the cwd first on sys.path).
"$VENV/bin/mutmut" run --max-children "$MAX_CHILDREN" || true
"$VENV/bin/mutmut" export-cicd-stats >/dev/null
"$PY" - <<'EOF'
import json
s = json.load(open("mutants/mutmut-cicd-stats.json"))
decided = s["killed"] + s["survived"] + s.get("timeout", 0)
print(f"\nmutation score: {s['killed']} killed / {decided} decided mutants = {s['killed'] / max(decided, 1):.1%} "
      f"(timeouts {s.get('timeout', 0)}, no tests {s.get('no_tests', 0)}, skipped {s.get('skipped', 0)}, "
      f"suspicious {s.get('suspicious', 0)})")
EOF
echo "surviving mutants (inspect with: cd $WORK && $VENV/bin/mutmut show <name>):"
"$VENV/bin/mutmut" results
