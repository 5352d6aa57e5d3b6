"""The rejection-sampling family: best of K by a reward model, then plain or ASR-masked fine-tuning."""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

from segrl.pipeline.cache import read_json, write_json, write_jsonl
from segrl.pipeline.evaluation import EvalCallback
from segrl.pipeline.pairs import train_prompts
from segrl.pipeline.progress import RichTrainerProgress
from segrl.pipeline.runners.common import metric, numeric_logs, random_like, trainer_common
from segrl.pipeline.settings import settings_key

CANDIDATE_FIELDS = ("prompt", "candidates", "scores", "token_rewards", "prompt_ids", "candidate_ids")


def rs_args(pipeline, seed: int, spec, out: Path, mask: str):
    from segrl.rs import ASRRejectionSamplingConfig

    s = pipeline.rs_settings
    asr = pipeline.dpo_settings  # the ASR options are shared by every family of the pipeline
    return ASRRejectionSamplingConfig(
        **trainer_common(out, seed), num_candidates=s.num_candidates,
        max_new_tokens=pipeline.ppo_settings.max_new_tokens, temperature=s.temperature,
        reward_model_path=str(pipeline.rm_dir(seed, spec.rm_arm)), mask_type=mask,
        asr_baseline=spec.baseline or asr.asr_baseline, asr_delta=asr.asr_delta,
        asr_delta_quantile=asr.asr_delta_quantile, max_steps=s.steps,
        per_device_train_batch_size=s.batch_size, learning_rate=s.learning_rate * spec.lr_scale,
        lr_scheduler_type="constant_with_warmup", warmup_steps=5, generation_batch_size=64, reward_batch_size=64,
        save_candidates=False, dataset_num_proc=None,
    )


def candidates(pipeline, seed: int, spec) -> list[dict]:
    """K sampled, RM-scored candidates per prompt, shared by plain and ASR rejection sampling (cached)."""
    from segrl.rs import ASRRejectionSampler
    from segrl.rs.sampler import load_candidates

    path = pipeline.seed_dir(seed) / f"rs_candidates_{spec.rm_arm}.jsonl"
    s = pipeline.rs_settings
    # Only what the candidates depend on (not the fine-tuning options), so both RS variants and any
    # fine-tuning sweep share them.
    key = settings_key(pipeline.rm_key(seed, spec.rm_arm), s.n_prompts, s.num_candidates, s.temperature,
                       pipeline.ppo_settings.max_new_tokens, seed)
    if pipeline.cache.reusable(read_json(path.with_suffix(".json")), key) and path.is_file():
        records = load_candidates(path, pipeline.tokenizer)
        if all(r.get("token_rewards") is not None for r in records):
            return records
    prompts = train_prompts(s.n_prompts, 20_000 + seed)
    sampler = ASRRejectionSampler(str(pipeline.sft_dir(seed)), rs_args(pipeline, seed, spec, path.parent / "rs_tmp", "asr"),
                                  prompts=prompts)
    t0 = time.perf_counter()
    with pipeline.reporter.bar(f"sampling {s.num_candidates} candidates / prompt and scoring", 2) as update:
        records = sampler.generate()
        update(1, f"{len(records)} prompts sampled")
        records = sampler.score(records)
        update(2, "scored")
    write_jsonl(path, [{k: r[k] for k in CANDIDATE_FIELDS} for r in records])
    write_json(path.with_suffix(".json"), {"key": key, "seconds": time.perf_counter() - t0})
    pipeline.cache.computed(key)
    shutil.rmtree(path.parent / "rs_tmp", ignore_errors=True)
    return records


def run(pipeline, seed: int, spec, out: Path, sft: dict):
    from transformers import set_seed

    from segrl.rs import ASRRejectionSampler
    from segrl.tasks import score_responses

    s = pipeline.rs_settings
    records = candidates(pipeline, seed, spec)
    if spec.rewards == "random":
        records = [{**r, "token_rewards": random_like(r["token_rewards"], random.Random(f"random-rs-{seed}-{i}"))}
                   for i, r in enumerate(records)]
    set_seed(seed)
    sampler = ASRRejectionSampler(str(pipeline.sft_dir(seed)), rs_args(pipeline, seed, spec, out / "trainer", spec.mask))
    selected = sampler.select(records)
    quality = score_responses(list(selected["prompt"]), list(selected["completion"]))
    tracker = pipeline.new_tracker(s.steps, sft)
    progress = RichTrainerProgress(pipeline.reporter, "RS fine-tuning steps", tracker.last)
    sampler.train(selected, callbacks=[EvalCallback(tracker), progress], print_logs=False)
    trainer = sampler.trainer
    m = sampler.selection_metrics
    extra = {
        "kept_token_fraction": metric(m, "asr/kept_token_fraction", "rs/kept_token_fraction"),
        "segments_per_response": metric(m, "asr/segments_per_response", "rs/segments_per_response"),
        "selection": {k.removeprefix("rs/"): v for k, v in m.items()},
        "selected_quality": quality,
        "train_log": numeric_logs(trainer.state.log_history),
    }
    model = trainer.model
    shutil.rmtree(out / "trainer", ignore_errors=True)
    return tracker, model, extra
