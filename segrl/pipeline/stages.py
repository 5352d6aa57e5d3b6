"""The pipeline's stages, each cached in ``output_dir`` under a key of everything it depends on.

::

    SFT (shared)            output_dir/sft/
      -> pairs (per seed)   output_dir/seed{S}/pairs_{train,eval}.jsonl
      -> reward models      output_dir/seed{S}/rm_{segment,token,bandit}/     (train-rm + fit-norm + eval-rm)
      -> methods            output_dir/seed{S}/{method}/result.json
           DPO family  (segrl.dpo.ASRDPOTrainer: none / asr / tokenwise / stepwise masks,
                        token rewards from the segment RM, the implicit reward of the DPO run, or the oracle)
           PPO family  (segrl.ppo.SegmentPPOTrainer: bandit / token / segment RM arms, optional ASR mask)
           RS family   (segrl.rs.ASRRejectionSampler: plain vs ASR-masked fine-tuning on the best of K)

Every method run is evaluated greedily on ``dev`` held-out prompts at evenly spaced checkpoints
(learning curve, checkpoint selection) and on ``test`` held-out prompts at the end: the final
weights and the best-on-dev checkpoint. A stage whose ``result.json`` carries the same key is not
run again, so an interrupted or repeated run only does what is missing.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from segrl.pipeline.cache import RESULT, StageCache, read_json, read_jsonl, write_json, write_jsonl
from segrl.pipeline.diagnostics import segment_rm_credit
from segrl.pipeline.evaluation import METRICS, ArithEvaluator, CheckpointTracker, heldout_split
from segrl.pipeline.pairs import attach_oracle_rewards, pairs_from_samples, sample_responses, train_prompts
from segrl.pipeline.progress import Reporter, RichTrainerProgress
from segrl.pipeline.runners import runner_for
from segrl.pipeline.runners.common import mean, quiet_trainer, trainer_common
from segrl.pipeline.settings import (
    METHODS,
    DPOSettings,
    EvalSettings,
    PairSettings,
    PPOSettings,
    RMSettings,
    RSSettings,
    rm_threshold,
    settings_key,
)
from segrl.pipeline.sft import SFTSettings, load_or_train_sft, read_meta

__all__ = ["Pipeline", "quiet_libraries"]


def quiet_libraries() -> None:
    """Silence per-file loading bars and warnings of transformers / datasets (the pipeline shows its own)."""
    import datasets
    import transformers

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()
    for name in ("accelerate", "DeepSpeed", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    for pattern in (".*pad_token == eos_token.*", ".*requires_grad=True to a scalar.*", ".*use_cache=True.*",
                    ".*generation flags are not valid.*", ".*TRL currently only supports.*"):
        warnings.filterwarnings("ignore", message=pattern)


class Pipeline:
    """Runs and caches the stages for one ``output_dir``.

    Args:
        output_dir: where every artifact goes.
        sft, pairs, rm, dpo, ppo, rs, evals: stage settings.
        reporter: console output (``Reporter(enabled=False)`` for silence).
        use_packaged_sft: copy the packaged SFT checkpoint when ``sft`` equals its settings.
        sft_per_seed: train one SFT model per seed (``SFTSettings.seed = seed``) instead of one shared model.
        save_models: keep the final policy of every run in its directory (the DPO run's is always kept:
            the implicit-reward method reads it).
        num_threads: torch intra-op threads (1 is best for these tiny models on a shared machine).
    """

    def __init__(self, output_dir, *, sft: SFTSettings, pairs: PairSettings, rm: RMSettings, dpo: DPOSettings,
                 ppo: PPOSettings, rs: RSSettings, evals: EvalSettings, reporter: Reporter | None = None,
                 use_packaged_sft: bool = True, sft_per_seed: bool = False, save_models: bool = False,
                 num_threads: int = 1, force: bool = False):
        from segrl.models.tiny import build_tiny_tokenizer

        quiet_libraries()
        if num_threads > 0:
            torch.set_num_threads(num_threads)
        self.out = Path(output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.sft_settings, self.pair_settings, self.rm_settings = sft, pairs, rm
        self.dpo_settings, self.ppo_settings, self.rs_settings, self.eval_settings = dpo, ppo, rs, evals
        self.reporter = reporter or Reporter(enabled=False)
        self.use_packaged_sft, self.sft_per_seed, self.save_models = use_packaged_sft, sft_per_seed, save_models
        self.tokenizer = build_tiny_tokenizer()
        dev, test = heldout_split(evals.n_dev, evals.n_test, evals.seed)
        self.dev_prompts, self.test_prompts = dev, test
        self.dev_eval = ArithEvaluator(self.tokenizer, dev)
        self.test_eval = ArithEvaluator(self.tokenizer, test)
        self.cache = StageCache(force)
        self._eval_key = settings_key(evals)
        self._noted: set[Path] = set()

    # ------------------------------------------------------------------ helpers

    @property
    def timings(self) -> dict[str, float]:
        return self.cache.timings

    @property
    def force(self) -> bool:
        return self.cache.force

    def load_lm(self, path):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)

    def seed_dir(self, seed: int) -> Path:
        return self.out / f"seed{seed}"

    # ------------------------------------------------------------------ SFT

    def _sft_for(self, seed: int) -> SFTSettings:
        if not self.sft_per_seed:
            return self.sft_settings
        from dataclasses import replace

        return replace(self.sft_settings, seed=seed, data_seed=seed)

    def sft_dir(self, seed: int) -> Path:
        return self.out / (f"sft_seed{seed}" if self.sft_per_seed else "sft")

    def sft(self, seed: int = 0) -> dict:
        """Train (or reuse) the SFT model and evaluate it on dev and test. Returns its eval record."""
        settings = self._sft_for(seed)
        out = self.sft_dir(seed)
        key = settings_key(settings.key(), self._eval_key)
        cached = read_json(out / "eval.json")
        meta = read_meta(out)
        if self.cache.reusable(cached, key) and meta is not None and meta["key"] == settings.key():
            if out not in self._noted:
                self._noted.add(out)
                self.reporter.note(f"  SFT: reusing {out} ({meta.get('source', '?')}); held-out test step acc "
                                   f"{cached['test']['step_accuracy']:.3f}, exact {cached['test']['exact_match']:.3f}")
            return cached
        self.reporter.stage(f"SFT: tiny Llama ({settings.hidden_size}x{settings.num_layers}) on make_sft_data"
                            + (f" (seed {seed})" if self.sft_per_seed else ""))
        t0 = time.perf_counter()
        if self.force:
            shutil.rmtree(out, ignore_errors=True)
        with self.reporter.bar("SFT steps", settings.steps) as update:
            path, how = load_or_train_sft(out, self.tokenizer, settings, use_packaged=self.use_packaged_sft,
                                          progress=lambda s, n, loss: update(s, f"loss {loss:.3f}"))
            update(settings.steps, how)
        if how == "packaged":
            self.reporter.note("  using the packaged SFT checkpoint (trained by scripts/make_sft_checkpoint.py with "
                               "these exact settings; pass --train_sft to retrain)")
        model = self.load_lm(path)
        dev = self.dev_eval(model)
        test, responses = self.test_eval(model, return_samples=True)
        record = {"key": key, "how": how, "settings": asdict(settings), "dev": dev, "test": test,
                  "seconds": time.perf_counter() - t0}
        write_json(out / "eval.json", record)
        self.cache.computed(key)
        self._noted.add(out)
        write_jsonl(out / "test_samples.jsonl", [{"prompt": p, "response": r}
                                                 for p, r in zip(self.test_prompts, responses)])
        self.cache.add_time("sft", record["seconds"])
        self.reporter.note(f"  SFT held-out test: step acc {test['step_accuracy']:.3f}, exact {test['exact_match']:.3f}"
                           f" ({how}, {record['seconds']:.0f}s)")
        return record

    # ------------------------------------------------------------------ pairs

    def pairs_key(self, seed: int) -> str:
        return settings_key(self._sft_for(seed).key(), self.pair_settings, seed)

    def pairs(self, seed: int) -> tuple[list[dict], list[dict], dict]:
        """``(train_pairs, rm_eval_pairs, stats)`` for ``seed`` (with oracle token-reward columns)."""
        from segrl.tasks import make_preference_pairs, preference_stats

        d = self.seed_dir(seed)
        key = self.pairs_key(seed)
        meta = read_json(d / "pairs.json")
        if self.cache.reusable(meta, key):
            return read_jsonl(d / "pairs_train.jsonl"), read_jsonl(d / "pairs_eval.jsonl"), meta["stats"]
        s = self.pair_settings
        self.reporter.stage(f"seed {seed}: preference pairs ({s.source})")
        t0 = time.perf_counter()
        if s.source == "sampled":
            self.sft(seed)
            model = self.load_lm(self.sft_dir(seed))
            prompts = train_prompts(s.n_prompts, seed)
            with self.reporter.bar(f"sampling {s.samples_per_prompt} responses / prompt", len(prompts)) as update:
                samples = sample_responses(model, self.tokenizer, prompts, k=s.samples_per_prompt,
                                           temperature=s.temperature, seed=seed, progress=update)
            rows = pairs_from_samples(prompts, samples)
        else:
            rows = make_preference_pairs(s.n_prompts, seed=seed, conflict_fraction=s.conflict_fraction)
        if len(rows) < 8:
            raise RuntimeError(f"only {len(rows)} preference pairs: the SFT model's samples nearly always tie")
        rows = attach_oracle_rewards(rows, self.tokenizer)
        n_eval = max(4, round(len(rows) * s.rm_eval_fraction))
        train, evals = rows[:-n_eval], rows[-n_eval:]
        stats = {**preference_stats(train), "n_eval": len(evals), "n_prompts": s.n_prompts,
                 "seconds": time.perf_counter() - t0}
        write_jsonl(d / "pairs_train.jsonl", train)
        write_jsonl(d / "pairs_eval.jsonl", evals)
        write_json(d / "pairs.json", {"key": key, "stats": stats})
        self.cache.computed(key)
        self.cache.add_time("pairs", stats["seconds"])
        self.reporter.note(f"  {len(train)} training pairs (+{len(evals)} for RM eval), conflict fraction "
                           f"{stats['conflict_fraction']:.2f}, wrong parts chosen {stats['chosen_wrong_parts']:.2f} vs "
                           f"rejected {stats['rejected_wrong_parts']:.2f}")
        return train, evals, stats

    # ------------------------------------------------------------------ reward models

    def rm_dir(self, seed: int, arm: str) -> Path:
        return self.seed_dir(seed) / f"rm_{arm}"

    def rm_key(self, seed: int, arm: str) -> str:
        return settings_key(self.pairs_key(seed), self.rm_settings.key(), arm, seed)

    def reward_model(self, seed: int, arm: str = "segment") -> dict:
        """Train the ``arm`` RM (``segrl.rm``), fit its normaliser, measure pairwise accuracy."""
        from datasets import Dataset
        from transformers import set_seed

        from segrl.rm import (
            SegmentRewardConfig,
            SegmentRewardModel,
            SegmentRewardTrainer,
            evaluate_pairwise,
            fit_normalizer,
        )

        out = self.rm_dir(seed, arm)
        key = self.rm_key(seed, arm)
        cached = read_json(out / RESULT)
        if self.cache.reusable(cached, key) and (out / "config.json").is_file():
            if "first_error_hit_rate" not in cached.get("credit", {}):  # records written before these diagnostics
                cached["credit"] = segment_rm_credit(SegmentRewardModel.from_pretrained(out), self.pairs(seed)[1])
                write_json(out / RESULT, cached)
            return cached
        train, evals, _ = self.pairs(seed)
        s = self.rm_settings
        threshold = rm_threshold(arm, s)
        c = "inf" if math.isinf(threshold) else f"{threshold:g}"
        self.reporter.stage(f"seed {seed}: {arm} reward model (c = {c}): train-rm, fit-norm, eval-rm")
        t0 = time.perf_counter()
        sft_dir = self.sft_dir(seed)
        cols = ("prompt", "chosen", "rejected")
        train_ds = Dataset.from_list([{k: r[k] for k in cols} for r in train])
        eval_ds = Dataset.from_list([{k: r[k] for k in cols} for r in evals])
        shutil.rmtree(out, ignore_errors=True)
        args = SegmentRewardConfig(
            **trainer_common(out, seed), segment_threshold=threshold, ref_model_name_or_path=str(sft_dir),
            per_device_train_batch_size=s.batch_size, num_train_epochs=s.epochs, learning_rate=s.learning_rate,
            lr_scheduler_type="cosine", warmup_steps=5, entropy_batch_size=64, dataset_num_proc=None,
            segment_loss=s.segment_loss,
        )
        set_seed(seed)
        trainer = SegmentRewardTrainer(model=str(sft_dir), args=args, train_dataset=train_ds,
                                       processing_class=self.tokenizer,
                                       callbacks=[RichTrainerProgress(self.reporter, f"RM steps (c={c})")])
        quiet_trainer(trainer).train()
        trainer.save_model(str(out))
        log = [h for h in trainer.state.log_history if "loss" in h]
        del trainer
        rm = SegmentRewardModel.from_pretrained(out)
        fit = fit_normalizer(rm, train_ds, n_pairs=min(s.normalizer_pairs, len(train_ds)), batch_size=64,
                             progress=False, plot_path=out / "normalizer.png", reward_form=s.reward_form)
        SegmentRewardModel.write_normalizer(out, fit.coef, fit.reward_form)
        pairwise = evaluate_pairwise(rm, eval_ds, batch_size=64, progress=False)
        train_acc = evaluate_pairwise(rm, Dataset.from_list([{k: r[k] for k in cols} for r in train[:256]]),
                                      batch_size=64, progress=False)["accuracy"]
        credit = segment_rm_credit(rm, evals)
        record = {"key": key, "arm": arm, "seed": seed, "threshold": c, "eval": pairwise, "credit": credit,
                  "train_accuracy_256": train_acc, "normalizer_plot": str(out / "normalizer.png"),
                  "normalizer": fit.coef.to_dict(), "normalizer_segments": fit.n_segments, "train_log": log,
                  "seconds": time.perf_counter() - t0}
        write_json(out / RESULT, record)
        self.cache.computed(key)
        self.cache.add_time(f"rm_{arm}", record["seconds"])
        within = credit["auc_within_response"]
        self.reporter.note(f"  pairwise accuracy on {pairwise['n_pairs']} held-out pairs: {pairwise['accuracy']:.3f} "
                           f"(train {train_acc:.3f}); {pairwise['segments_per_response']:.2f} segments / response, "
                           f"mean length {pairwise['mean_segment_length']:.2f}; token credit AUC vs oracle "
                           f"{credit['auc']:.3f} pooled, {math.nan if within is None else within:.3f} within response "
                           f"({record['seconds']:.0f}s)")
        return record

    # ------------------------------------------------------------------ methods (shared)

    def run_dir(self, seed: int, method: str) -> Path:
        return self.seed_dir(seed) / method

    def method_key(self, seed: int, method: str) -> str:
        spec = METHODS[method]
        family_settings = {"dpo": self.dpo_settings, "ppo": self.ppo_settings, "rs": self.rs_settings}[spec.family]
        if spec.family == "dpo":
            # The ASR options enter below, for masked methods only (plain DPO does not depend on them).
            family_settings = family_settings.without_asr()
        upstream = [self.pairs_key(seed), self._eval_key]
        if spec.mask != "none":
            upstream += list(self.dpo_settings.asr_key(spec.baseline))
        if spec.rm_arm:
            upstream.append(self.rm_key(seed, spec.rm_arm))
        upstream += [self.method_key(seed, n) for n in spec.needs]
        return settings_key(method, seed, family_settings, METHODS[method], *upstream)

    def run_method(self, seed: int, method: str) -> dict:
        """Run (or load) one method for one seed; returns its result record."""
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
        spec = METHODS[method]
        key = self.method_key(seed, method)
        out = self.run_dir(seed, method)
        cached = read_json(out / RESULT)
        if self.cache.reusable(cached, key) and (not self.save_models or (out / "model").is_dir()):
            self.reporter.note(f"  seed {seed} {method}: cached")
            return cached
        for dep in spec.needs:
            self.run_method(seed, dep)
        sft = self.sft(seed)
        self.pairs(seed)
        if spec.rm_arm:
            self.reward_model(seed, spec.rm_arm)
        self.reporter.stage(f"seed {seed}: {spec.label}")
        t0 = time.perf_counter()
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        tracker, model, extra = runner_for(spec.family)(self, seed, spec, out, sft)
        record = self._finish(seed, spec, out, tracker, model, extra, key, time.perf_counter() - t0)
        return record

    def new_tracker(self, total: int, sft: dict) -> CheckpointTracker:
        """A dev-set checkpoint tracker for a run of ``total`` steps, starting from the SFT model's scores."""
        tracker = CheckpointTracker(self.dev_eval, self.eval_settings.schedule(total))
        tracker.add_start(sft["dev"])
        return tracker

    def _finish(self, seed, spec, out: Path, tracker: CheckpointTracker, model, extra: dict, key: str,
                seconds: float) -> dict:
        """Test-set evaluation of the final and the best-on-dev weights; write result.json."""
        final, responses = self.test_eval(model, return_samples=True)
        trained = [c for c in tracker.curve if c["step"] > 0]
        last_step = max(c["step"] for c in trained)
        if tracker.best_step is None or tracker.best_step == last_step:
            best = {**final, "step": last_step}
        else:
            # A fresh model, not a deepcopy: TRL patches the trained model's forward with a closure over
            # the original instance, so a copy would still run the final weights.
            best_model = self.load_lm(self.sft_dir(seed))
            best_model.load_state_dict(tracker.best_state)
            best = {**self.test_eval(best_model), "step": tracker.best_step}
        over = {k: mean([c[k] for c in trained]) for k in METRICS}
        record = {"key": key, "method": spec.name, "label": spec.label, "family": spec.family, "seed": seed,
                  "mask": spec.mask, "rewards": spec.rewards, "rm_arm": spec.rm_arm, "curve": tracker.curve,
                  "final": final, "best": best, "mean_over_checkpoints": over, "seconds": seconds, **extra}
        if self.save_models or spec.name == "dpo":
            model.save_pretrained(out / "model")
            self.tokenizer.save_pretrained(out / "model")
        write_jsonl(out / "test_samples.jsonl", [{"prompt": p, "response": r}
                                                 for p, r in zip(self.test_prompts, responses)])
        write_json(out / RESULT, record)
        self.cache.computed(key)
        self.cache.add_time(spec.family, seconds)
        kept = record.get("kept_token_fraction")
        self.reporter.note(
            f"  test: final step acc {final['step_accuracy']:.3f} / exact {final['exact_match']:.3f}; best-on-dev "
            f"(step {best['step']}) {best['step_accuracy']:.3f} / {best['exact_match']:.3f}"
            + (f"; kept tokens {kept:.2f}" if kept is not None else "") + f" ({seconds:.0f}s)")
        return record
