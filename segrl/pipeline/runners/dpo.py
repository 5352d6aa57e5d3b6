"""The DPO family: plain DPO and its masked variants (ASR / token-wise / step-wise / random), with
token rewards from a reward model, the implicit reward of the plain DPO run, or the oracle columns."""

from __future__ import annotations

import shutil
from pathlib import Path

from segrl.pipeline.evaluation import EvalCallback
from segrl.pipeline.progress import RichTrainerProgress
from segrl.pipeline.runners.common import mean, numeric_logs, quiet_trainer, random_rewards, trainer_common

REWARD_COLUMNS = ("chosen_token_rewards", "rejected_token_rewards")


def loss_args(settings, spec) -> dict:
    """The ``beta`` / ``loss_type`` / ``loss_weights`` of ASRDPOConfig for a method: the DPO settings,
    overridden by the method's own loss (``spec.loss_type``, ``spec.sft_weight``, ``spec.beta_scale``)."""
    loss_type = spec.loss_type or settings.loss_type
    sft_weight = settings.sft_weight if spec.sft_weight is None else spec.sft_weight
    out = {"beta": settings.beta * spec.beta_scale, "loss_type": [loss_type]}
    if sft_weight:
        out.update(loss_type=[loss_type, "sft"], loss_weights=[1.0, sft_weight])
    return out


def run(pipeline, seed: int, spec, out: Path, sft: dict):
    from datasets import Dataset
    from transformers import set_seed

    from segrl.dpo import ASRDPOConfig, ASRDPOTrainer

    s = pipeline.dpo_settings
    train, _, _ = pipeline.pairs(seed)
    cols = ["prompt", "chosen", "rejected"] + (list(REWARD_COLUMNS) if spec.rewards in ("oracle", "random") else [])
    rows = [{k: r[k] for k in cols} for r in train]
    if spec.rewards == "random":
        rows = random_rewards(rows, seed, REWARD_COLUMNS)
    dataset = Dataset.from_list(rows)
    source = {"segment_rm": "segment_rm", "implicit": "implicit"}.get(spec.rewards, "columns")
    sft_dir = pipeline.sft_dir(seed)
    implicit = spec.rewards == "implicit"
    args = ASRDPOConfig(
        **trainer_common(out / "trainer", seed), max_steps=s.steps, per_device_train_batch_size=s.batch_size,
        learning_rate=s.learning_rate * spec.lr_scale, lr_scheduler_type="constant_with_warmup",
        warmup_steps=s.warmup_steps, **loss_args(s, spec), mask_type=spec.mask,
        asr_baseline=spec.baseline or s.asr_baseline, asr_delta=s.asr_delta, asr_delta_quantile=s.asr_delta_quantile,
        token_reward_source=source,
        reward_model_path=str(pipeline.rm_dir(seed, spec.rm_arm)) if spec.rm_arm else None,
        implicit_policy=str(pipeline.run_dir(seed, "dpo") / "model") if implicit else None,
        implicit_ref=str(sft_dir) if implicit else None, implicit_beta=s.implicit_beta,
        token_reward_batch_size=64, dataset_num_proc=None,
    )
    set_seed(seed)
    model, ref = pipeline.load_lm(sft_dir), pipeline.load_lm(sft_dir)
    tracker = pipeline.new_tracker(s.steps, sft)
    trainer = ASRDPOTrainer(
        model=model, ref_model=ref, args=args, train_dataset=dataset, processing_class=pipeline.tokenizer,
        callbacks=[EvalCallback(tracker), RichTrainerProgress(pipeline.reporter, "DPO steps", tracker.last)],
    )
    quiet_trainer(trainer).train()
    logs = trainer.state.log_history
    masked = spec.mask != "none"
    kept_c = mean([h.get("asr/kept_token_fraction_chosen") for h in logs])
    kept_r = mean([h.get("asr/kept_token_fraction_rejected") for h in logs])
    extra = {
        "kept_token_fraction": mean([kept_c, kept_r]) if masked else 1.0,
        "kept_token_fraction_chosen": kept_c if masked else 1.0,
        "kept_token_fraction_rejected": kept_r if masked else 1.0,
        "segments_per_response": mean([h.get("asr/segments_per_response") for h in logs]),
        "fallbacks_per_step": mean([h.get("asr/fallbacks") for h in logs]),
        "train_log": numeric_logs(logs),
    }
    shutil.rmtree(out / "trainer", ignore_errors=True)
    model = trainer.model
    del trainer
    return tracker, model, extra
