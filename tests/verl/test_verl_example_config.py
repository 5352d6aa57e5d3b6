"""examples/verl/segrl_asr_ppo.yaml composes with verl's defaults and drives every plugin piece.

This is the closest to a verl run that a CPU box allows: the real Hydra config, verl's own
reward-manager loader and advantage dispatch, and the actor config dataclass verl builds from it.
Rollouts, Ray workers and FSDP engines are not exercised (they need GPUs).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from verl import DataProto
from verl_helpers import right_padded, rollout_batch

from segrl.integrations import verl as plugin

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "verl"


@pytest.fixture()
def example_cfg(segment_rm_dir, monkeypatch):
    from hydra import compose, initialize_config_dir

    monkeypatch.setenv("SEGRL_RM_PATH", str(segment_rm_dir[0]))
    with initialize_config_dir(config_dir=str(EXAMPLES), version_base=None):
        return compose(config_name="segrl_asr_ppo", overrides=["data.train_batch_size=4",
                                                                "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1"])


def test_keys_point_at_the_plugin(example_cfg):
    cfg = example_cfg
    assert cfg.algorithm.adv_estimator == plugin.ADV_ESTIMATOR_NAME
    assert cfg.actor_rollout_ref.actor.policy_loss.loss_mode == plugin.POLICY_LOSS_NAME
    assert cfg.reward.reward_manager.name == plugin.REWARD_MANAGER_NAME
    assert cfg.actor_rollout_ref.actor.ppo_mini_batch_size == cfg.data.train_batch_size
    assert plugin.ASROptions.from_config(cfg.algorithm) == plugin.ASROptions()  # the file spells out the defaults


def test_reward_path_from_the_example_config(example_cfg, segment_rm_dir):
    from verl.trainer.ppo.reward import load_reward_manager

    from segrl.rm import SegmentRewardModel

    manager = load_reward_manager(example_cfg, tokenizer=None)  # verl's own loader
    assert isinstance(manager, plugin.SegmentDenseRewardManager)
    path, tok = segment_rm_dir
    prompts = [tok.encode("2 + 3 = "), tok.encode("Tell me about the sea. ")]
    responses = [tok.encode("5, thank you.") + [tok.eos_token_id], tok.encode("It is calm.") + [tok.eos_token_id]]
    data = rollout_batch(prompts, responses, pad_id=tok.pad_token_id)

    async def run():
        return await asyncio.gather(*(manager.run_single(data[i : i + 1]) for i in range(len(data))))

    scores = manager.assemble_rm_scores(data, [o["reward_score"] for o in asyncio.run(run())])
    direct, mask = SegmentRewardModel.from_pretrained(path).score_token_ids(prompts, responses)
    torch.testing.assert_close(scores, (direct * mask).clamp(-10, 10)[:, : scores.shape[1]], atol=1e-5, rtol=0)


def test_advantage_and_loss_from_the_example_config(example_cfg):
    from verl.trainer.ppo.core_algos import get_policy_loss_fn
    from verl.trainer.ppo.ray_trainer import compute_advantage
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.config import ActorConfig

    g = torch.Generator().manual_seed(0)
    rewards, mask = right_padded([[1.0] * n for n in (6, 4, 5, 3)])
    rewards = torch.randn(rewards.shape, generator=g) * mask
    data = DataProto.from_dict(
        tensors={"token_level_rewards": rewards, "token_level_scores": rewards,
                 "values": torch.randn(rewards.shape, generator=g) * mask, "response_mask": mask},
        non_tensors={"uid": np.array(list("abcd"), dtype=object)},
    )
    algo = example_cfg.algorithm
    data = compute_advantage(data, adv_estimator=algo.adv_estimator, gamma=algo.gamma, lam=algo.lam, config=algo)
    keep = data.batch["advantages"] != 0
    assert 0 < int(keep.sum()) < int(mask.sum())

    actor_cfg = omega_conf_to_dataclass(example_cfg.actor_rollout_ref.actor)  # as verl's actor worker does
    assert isinstance(actor_cfg, ActorConfig)
    actor_cfg.global_batch_info.update(dp_size=1, batch_num_tokens=int(mask.sum()))
    old = -torch.rand(rewards.shape, generator=g)
    new = (old + 0.1 * torch.randn(rewards.shape, generator=g)).requires_grad_(True)
    loss, _ = get_policy_loss_fn(actor_cfg.policy_loss.loss_mode)(
        old_log_prob=old, log_prob=new, advantages=data.batch["advantages"], response_mask=mask.bool(),
        loss_agg_mode=actor_cfg.loss_agg_mode, config=actor_cfg, rollout_is_weights=None,
    )
    loss.backward()
    assert bool((new.grad[~keep] == 0).all()) and bool((new.grad[keep] != 0).any())
    assert os.environ["SEGRL_RM_PATH"]  # the env interpolation was what the config read


def test_the_launch_script_overrides_compose(monkeypatch):
    """Every Hydra override in examples/verl/run_segrl_asr_ppo.sh is valid against the config."""
    import shlex

    from hydra import compose, initialize_config_dir
    from verl.utils.config import omega_conf_to_dataclass

    monkeypatch.setenv("SEGRL_RM_PATH", "/models/segment_rm")
    script = (EXAMPLES / "run_segrl_asr_ppo.sh").read_text()
    block = script[script.index("python -m verl.trainer.main_ppo"): script.index('"$@"')]
    values = {"$TRAIN": "/d/train.parquet", "$VAL": "/d/val.parquet", "$POLICY": "/m/sft", "$CRITIC": "/m/sft",
              "$NNODES": "2", "$GPUS_PER_NODE": "8"}
    overrides = []
    for token in shlex.split(block.replace("\\\n", " ")):
        if "=" in token and not token.startswith("--"):
            for key, value in values.items():
                token = token.replace(key, value)
            overrides.append(token)
    assert len(overrides) > 10
    with initialize_config_dir(config_dir=str(EXAMPLES), version_base=None):
        cfg = compose(config_name="segrl_asr_ppo", overrides=overrides)
    assert cfg.ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES == "segrl.integrations.verl"
    assert cfg.trainer.nnodes == 2
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)  # verl's own validation of the actor section
    assert actor.policy_loss.loss_mode == "segrl_asr" and actor.ppo_mini_batch_size == cfg.data.train_batch_size
