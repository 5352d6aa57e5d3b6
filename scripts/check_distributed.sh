#!/usr/bin/env bash
# Data-parallel invariance of every segrl trainer on CPU: 1 process vs 2 processes (gloo), same
# GLOBAL batch, fixed tiny models and data, fp32, dropout off, seed 0. Prints one line per case and
# the per-step losses; exits non-zero if a case that must match does not.
#
#   scripts/check_distributed.sh [VENV_DIR]
#   env: CHECK_DP_CASES="rm,dpo_trap,..."   (default: all DDP cases below)
#        CHECK_DP_DEEPSPEED="zero2 zero3"  (default: both when deepspeed is importable; "" to skip)
#        CHECK_DP_LAUNCHER=accelerate|torchrun (DDP side; DeepSpeed always uses torchrun)
#        CHECK_DP_KEEP=1                    keep the work directory (logs, per-case JSON / .pt)
#
# The cases (tests/distributed/dp_cases.py):
#   rm                      dense segment RM (entropy segments), random sampler
#   rm_ga2                  the same global batch as 2 gradient-accumulation micro-batches
#   dpo_trap                ASR-DPO, batch_mean baseline, data whose global mean differs from each rank's
#   dpo_seqmean_precompute  ASR-DPO, sequence_mean, precomputed per-token reference log-probs, ipo
#   dpo_segment_rm          ASR-DPO, token rewards from a saved segment RM (token_reward_source=segment_rm)
#   rs                      ASR rejection sampling (fixed candidates file) -> masked SFT
#   ppo                     ASR-PPO on fixed rollouts (test hooks for prompts and generate)
#   grpo / grpo_zero        dense segment GRPO + ASR (batch_mean / zero baseline), fixed completions
# Informational (expected to differ, reported only):
#   dpo_sft_term            TRL's own `sft` DPO term is a token mean over the LOCAL batch (upstream)
#   dpo_trap_ga2            batch_mean is resolved per micro-batch: accumulation changes the mask
# Known segrl bugs at the time of writing are listed in CHECK_DP_EXPECT_DIFFER (reported, not failed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv}"
PY="$VENV/bin/python"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1

CASES="${CHECK_DP_CASES:-rm,rm_ga2,dpo_trap,dpo_seqmean_precompute,dpo_segment_rm,rs,ppo,grpo_zero,grpo,dpo_sft_term,dpo_trap_ga2}"
EXPECT_DIFFER="${CHECK_DP_EXPECT_DIFFER:-grpo,dpo_sft_term}"
LAUNCHER="${CHECK_DP_LAUNCHER:-accelerate}"
if [[ -z "${CHECK_DP_DEEPSPEED+x}" ]]; then
    if "$PY" -c "import deepspeed" >/dev/null 2>&1; then CHECK_DP_DEEPSPEED="zero2 zero3"; else
        echo "check_distributed: deepspeed not installed, skipping ZeRO runs (DS_BUILD_OPS=0 $VENV/bin/pip install deepspeed)" >&2
        CHECK_DP_DEEPSPEED=""
    fi
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/segrl-dp-check.XXXXXX")"
if [[ "${CHECK_DP_KEEP:-0}" == 1 ]]; then echo "check_distributed: keeping $WORK" >&2; else trap 'rm -rf "$WORK"' EXIT; fi

status=0
start=$(date +%s)
echo "== DDP: 1 process (python) vs 2 processes ($LAUNCHER)"
"$PY" "$ROOT/tests/distributed/launch.py" --work "$WORK" --cases "$CASES" --launcher "$LAUNCHER" \
    --expect-differ "$EXPECT_DIFFER" || status=1

# Gradient accumulation maps onto the same global batch; the ASR baseline is per micro-batch.
(cd "$ROOT" && "$PY" -c "
import sys; sys.path.insert(0, 'tests/distributed')
from pathlib import Path
from launch import compare
w = Path('$WORK')
ok = True
for a, b, must in (('rm', 'rm_ga2', True), ('dpo_trap', 'dpo_trap_ga2', False)):
    if (w / 'p1' / f'{a}.json').exists() and (w / 'p1' / f'{b}.json').exists():
        c = compare(a, w / 'p1', w / 'p1', other_case=b)
        print(('' if must else '(expected to differ) ') + c.line())
        ok &= c.ok or not must
sys.exit(0 if ok else 1)
") || status=1

for stage in $CHECK_DP_DEEPSPEED; do
    echo "== DeepSpeed $stage: 1 process (python, no DeepSpeed) vs 1 and 2 processes (torchrun)"
    if [[ $stage == zero3 ]]; then
        # Separate launches: known bug, frozen helper models (the RM trainer's reference, a saved segment RM)
        # are loaded inside zero.Init -> empty weights; with 2 processes it deadlocks, so only 1 is tried.
        # Once fixed: CHECK_DP_ZERO3_KNOWN_BAD="" and add them to the first launch.
        "$PY" "$ROOT/tests/distributed/launch.py" --work "$WORK" --cases dpo_zero --launcher torchrun \
            --deepspeed "$stage" --deepspeed-nprocs 1,2 || status=1
        for c in ${CHECK_DP_ZERO3_KNOWN_BAD-rm dpo_segment_rm}; do
            "$PY" "$ROOT/tests/distributed/launch.py" --work "$WORK" --cases "$c" --launcher torchrun --timeout 300 \
                --deepspeed "$stage" --deepspeed-nprocs 1 --expect-differ "$c" --tag "$c" || status=1
        done
    else
        "$PY" "$ROOT/tests/distributed/launch.py" --work "$WORK" --cases dpo_zero,rm,dpo_segment_rm --launcher torchrun \
            --deepspeed "$stage" --deepspeed-nprocs 1,2 || status=1
    fi
done
echo "check_distributed: $(( $(date +%s) - start )) s, status $status"
exit $status
