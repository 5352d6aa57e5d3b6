#!/usr/bin/env bash
# Multi-node verl 0.9.1 PPO with segrl's dense segment rewards, ASR-masked GAE and kept-token loss.
#
# NOT TESTED END TO END: this needs GPU nodes with vLLM (or SGLang) and a Ray cluster. What is tested
# (on CPU, tests/verl/) is every plugin piece against verl's own DataProto / loaders / config, and
# that examples/verl/segrl_asr_ppo.yaml composes with verl's defaults.
#
# On every node (same paths everywhere, e.g. a shared filesystem):
#   pip install torch "segrl[verl]" vllm          # one environment with verl's pins (transformers<5.11)
#
# Head node (rank 0):    NNODES=2 SEGRL_RM_PATH=... POLICY=... CRITIC=... TRAIN=... VAL=... \
#                            examples/verl/run_segrl_asr_ppo.sh head
# Every other node:      HEAD_IP=<head address> examples/verl/run_segrl_asr_ppo.sh worker
# Extra Hydra overrides after the role are passed to verl, e.g. `... head trainer.total_epochs=2`.
set -euo pipefail

ROLE="${1:?usage: $0 head|worker [hydra overrides...]}"
shift
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RAY_PORT="${RAY_PORT:-6379}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"

# The plugin must be imported in the driver AND in every Ray worker (reward-loop workers call the
# reward manager, actor workers call the policy loss). verl imports the modules named here on
# `import verl`; exporting it before `ray start` makes every worker on this node inherit it, and the
# runtime_env override below forwards it once more at the job level.
export VERL_USE_EXTERNAL_MODULES=segrl.integrations.verl
export TOKENIZERS_PARALLELISM=false

case "$ROLE" in
worker)
    : "${HEAD_IP:?set HEAD_IP to the head node address}"
    exec ray start --address="$HEAD_IP:$RAY_PORT" --num-gpus="$GPUS_PER_NODE" --block
    ;;
head)
    : "${SEGRL_RM_PATH:?trained segment RM directory (segrl train-rm + segrl fit-norm)}"
    : "${POLICY:?SFT policy (path or hub id)}"
    : "${TRAIN:?training prompts parquet}" "${VAL:?validation prompts parquet}"
    export SEGRL_RM_PATH
    CRITIC="${CRITIC:-$POLICY}"        # the paper initialises the critic from the SFT policy
    NNODES="${NNODES:-1}"
    ray start --head --port="$RAY_PORT" --num-gpus="$GPUS_PER_NODE" --dashboard-host=0.0.0.0
    echo "waiting for $NNODES node(s) to join the Ray cluster ..."
    until [[ "$(ray list nodes --filter 'state=ALIVE' --format json 2>/dev/null | python -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0)" -ge "$NNODES" ]]; do
        sleep 5
    done
    python -m verl.trainer.main_ppo \
        --config-path "$HERE" --config-name segrl_asr_ppo \
        +ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES=segrl.integrations.verl \
        data.train_files="$TRAIN" data.val_files="$VAL" \
        data.train_batch_size=256 data.max_prompt_length=512 data.max_response_length=512 \
        actor_rollout_ref.model.path="$POLICY" \
        actor_rollout_ref.rollout.name=vllm \
        actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
        actor_rollout_ref.rollout.gpu_memory_utilization=0.5 \
        actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4 \
        actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8 \
        actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8 \
        critic.model.path="$CRITIC" \
        critic.ppo_micro_batch_size_per_gpu=4 \
        reward.reward_model.rollout.name=vllm \
        trainer.nnodes="$NNODES" trainer.n_gpus_per_node="$GPUS_PER_NODE" \
        trainer.project_name=segrl trainer.experiment_name=asr_ppo \
        trainer.logger='["console"]' \
        "$@"
    ;;
*)
    echo "unknown role '$ROLE' (head|worker)" >&2
    exit 2
    ;;
esac
