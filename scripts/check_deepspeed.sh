#!/usr/bin/env bash
# Check that stock TRL DPOTrainer runs with examples/deepspeed/zero{2,3}.json on CPU, in one process
# and in two processes, on a tiny offline model (segrl.models.make_tiny_model_dir + load_tiny_prefs).
#
# Each run trains 2 DPO steps (fp32, no gradient checkpointing), then checks that the reported world
# size is the one launched (catches launchers that silently start one process), that the losses are
# finite, and that the saved model (under ZeRO-3: the 16-bit weights gathered on save) differs from
# the initial one.
#
# Needs deepspeed in the venv:  DS_BUILD_OPS=0 .venv/bin/pip install torch==2.13.0 deepspeed
# Usage: scripts/check_deepspeed.sh [VENV_DIR]        (env: CHECK_DS_CONFIGS="zero2 zero3",
#        CHECK_DS_NPROCS="1 2", CHECK_DS_ACCELERATE=0 to skip the accelerate-launched runs)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv}"
PY="$VENV/bin/python"
CONFIGS="${CHECK_DS_CONFIGS:-zero2 zero3}"
NPROCS="${CHECK_DS_NPROCS:-1 2}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"   # two ranks on two cores: no thread oversubscription

"$PY" -c "import deepspeed" 2>/dev/null || {
    echo "check_deepspeed: deepspeed is not installed in $VENV" >&2
    echo "  DS_BUILD_OPS=0 $VENV/bin/pip install torch==2.13.0 deepspeed" >&2
    exit 1
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/segrl-ds-check.XXXXXX")"
[[ "${CHECK_DS_KEEP:-0}" == 1 ]] && echo "check_deepspeed: keeping $WORK" >&2 || trap 'rm -rf "$WORK"' EXIT

cat > "$WORK/dpo_check.py" <<'EOF'
"""Two DPO steps; argv: ds_config (or "none" for plain DDP) model_dir out_dir expected_world_size."""
import math
import os
import sys
import time

T0 = time.perf_counter()
import torch  # noqa: E402

ds_config, model_dir, out_dir, expected_world = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ds_config = None if ds_config == "none" else ds_config

from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from segrl.models import load_tiny_prefs  # noqa: E402

if ds_config and int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # CPU-only quirk: with use_cpu=True accelerate sets up a plain gloo group and never initialises
    # deepspeed.comm, so the zero.Init that ZeRO-3 wraps around TRL's reference-model load sizes its
    # batch for world size 1 and asserts. On GPUs accelerate's DeepSpeed path does this itself.
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
T1 = time.perf_counter()
torch.manual_seed(0)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir)
rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in load_tiny_prefs()[:16]]
args = DPOConfig(
    output_dir=out_dir, deepspeed=ds_config, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
    per_device_train_batch_size=2, gradient_accumulation_steps=1, max_steps=2, learning_rate=1e-2,
    max_length=128, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
    dataloader_num_workers=0,
)
trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
world = trainer.accelerator.num_processes
assert world == expected_world, f"launched {expected_world} processes but the trainer sees world size {world}"
assert trainer.is_deepspeed_enabled == bool(ds_config), f"DeepSpeed active: {trainer.is_deepspeed_enabled}"
T2 = time.perf_counter()
trainer.train()
T3 = time.perf_counter()
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
assert losses and all(math.isfinite(x) for x in losses), f"bad losses {losses}"
trainer.save_model(os.path.join(out_dir, "final"))
if trainer.accelerator.is_main_process:
    # Read the files directly: under ZeRO-3 `from_pretrained` in this process would build a
    # partitioned (empty-tensor) model through zero.Init, and every comparison would be vacuous.
    from safetensors.torch import load_file

    before = load_file(os.path.join(model_dir, "model.safetensors"))
    after = load_file(os.path.join(out_dir, "final", "model.safetensors"))
    # (a save may add the tied lm_head copy explicitly; every initial tensor must be there)
    assert before.keys() <= after.keys(), f"saved model lacks {sorted(before.keys() - after.keys())}"
    changed = sum(not torch.equal(before[k], after[k]) for k in before)
    assert changed > 0, "no parameter changed after 2 DPO steps"
    stage = trainer.accelerator.state.deepspeed_plugin.zero_stage if ds_config else "none (DDP)"
    print(f"OK zero_stage={stage} world_size={world} losses={[round(x, 4) for x in losses]} "
          f"changed_tensors={changed}/{len(before)} | s: import {T1 - T0:.0f}, init {T2 - T1:.0f}, "
          f"train {T3 - T2:.0f}", flush=True)
EOF

"$PY" -c "from segrl.models import make_tiny_model_dir; make_tiny_model_dir('$WORK/model', seed=0)"

status=0
summary=()
run() {  # run NAME CMD...
    local name="$1"; shift
    local start=$(date +%s)
    if "$@" > "$WORK/$name.log" 2>&1; then
        local line; line=$(grep -h "^OK " "$WORK/$name.log" | tail -1)
        summary+=("PASS $name ($(( $(date +%s) - start )) s): $line")
    else
        summary+=("FAIL $name ($(( $(date +%s) - start )) s), log tail:")
        summary+=("$(tail -25 "$WORK/$name.log")")
        status=1
    fi
}

for cfg in $CONFIGS; do
    json="$ROOT/examples/deepspeed/$cfg.json"
    for n in $NPROCS; do
        if [[ "$n" == 1 ]]; then
            # One process without a launcher: the env:// rendezvous variables DeepSpeed expects.
            run "$cfg-1proc" env MASTER_ADDR=127.0.0.1 MASTER_PORT=29531 RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 \
                "$PY" "$WORK/dpo_check.py" "$json" "$WORK/model" "$WORK/out-$cfg-1" 1
        else
            run "$cfg-${n}proc-torchrun" "$VENV/bin/torchrun" --standalone --nproc_per_node "$n" \
                "$WORK/dpo_check.py" "$json" "$WORK/model" "$WORK/out-$cfg-$n" "$n"
        fi
    done
    if [[ "${CHECK_DS_ACCELERATE:-1}" == 1 ]]; then
        run "$cfg-2proc-accelerate" "$VENV/bin/accelerate" launch \
            --config_file "$ROOT/examples/accelerate/deepspeed_$cfg.yaml" --num_processes 2 \
            "$WORK/dpo_check.py" "$json" "$WORK/model" "$WORK/out-$cfg-acc" 2
    fi
done

if [[ "${CHECK_DS_ACCELERATE:-1}" == 1 ]]; then
    # the CPU DDP config itself (no DeepSpeed): must give world size 2, not 2 lone processes
    run "ddp-2proc-accelerate-multi_cpu" "$VENV/bin/accelerate" launch \
        --config_file "$ROOT/examples/accelerate/multi_cpu.yaml" --main_process_port 29542 \
        "$WORK/dpo_check.py" none "$WORK/model" "$WORK/out-ddp" 2
fi

printf '%s\n' "${summary[@]}"
exit $status
