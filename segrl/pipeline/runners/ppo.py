"""The PPO family: dense-reward PPO with the bandit / token / segment reward model, optional ASR mask."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from segrl.pipeline.pairs import train_prompts
from segrl.pipeline.runners.common import mean, metric


def run(pipeline, seed: int, spec, out: Path, sft: dict):
    from transformers import AutoModelForTokenClassification, set_seed

    from segrl.ppo import PPOCallback, SegmentPPOConfig, SegmentPPOTrainer
    from segrl.ppo.rewards import source_from_reward_model
    from segrl.rm import SegmentRewardModel

    s = pipeline.ppo_settings
    asr = pipeline.dpo_settings  # the ASR options are shared by every family of the pipeline
    sft_dir = pipeline.sft_dir(seed)
    rm = SegmentRewardModel.from_pretrained(pipeline.rm_dir(seed, spec.rm_arm))
    args = SegmentPPOConfig(
        output_dir=str(out / "trainer"), total_episodes=s.iterations * s.rollout_batch_size,  # one process
        rollout_batch_size=s.rollout_batch_size,
        mini_batch_size=s.mini_batch_size, ppo_epochs=s.ppo_epochs, max_new_tokens=s.max_new_tokens,
        temperature=s.temperature, learning_rate=s.learning_rate * spec.lr_scale,
        critic_learning_rate=s.critic_learning_rate, kl_coef=s.kl_coef, asr=spec.mask == "asr",
        asr_baseline=spec.baseline or asr.asr_baseline, asr_delta=asr.asr_delta,
        asr_delta_quantile=asr.asr_delta_quantile, use_cpu=True, seed=seed,
        logging_steps=1,
    )
    tracker = pipeline.new_tracker(s.iterations, sft)
    set_seed(seed)  # the critic's fresh head is drawn from the global RNG when it is loaded
    policy, ref = pipeline.load_lm(sft_dir), pipeline.load_lm(sft_dir)
    critic = AutoModelForTokenClassification.from_pretrained(sft_dir, num_labels=1, dtype=torch.float32)

    class DevEvaluation(PPOCallback):
        def on_iteration_end(self, trainer, metrics):
            tracker.maybe(trainer.iteration, trainer.accelerator.unwrap_model(trainer.policy))

    trainer = SegmentPPOTrainer(args, policy=policy, ref_model=ref, critic=critic,
                                reward_source=source_from_reward_model(rm), tokenizer=pipeline.tokenizer,
                                prompts=train_prompts(s.n_prompts, 10_000 + seed), callbacks=[DevEvaluation()])
    history = trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.policy)
    extra = {
        "kept_token_fraction": mean([metric(h, "asr/kept_token_fraction", "kept_token_fraction") for h in history]),
        "segments_per_response": mean([metric(h, "rm/segments_per_response", "segments_per_response")
                                       for h in history]),
        "train_log": history,
    }
    shutil.rmtree(out / "trainer", ignore_errors=True)
    return tracker, model, extra
