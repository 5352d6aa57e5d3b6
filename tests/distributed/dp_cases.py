#!/usr/bin/env python
"""Data-parallel invariance cases for every segrl trainer (issue 8).

Each case trains a few steps on fixed tiny models and fixed data with a fixed GLOBAL batch
(``per_device = GLOBAL // world_size``, no gradient accumulation, fp32, dropout off, seed 0). Run this
script once as a single process and once under a 2-process launcher; :mod:`compare` then checks that
the per-step losses and the final parameters agree. Per case, the main process writes
``<out>/<case>.json`` (losses, a few metrics, the fingerprints of the rows every rank trained on,
extra checks) and ``<out>/<case>.pt`` (final parameters).

Usage (from the repository root)::

    python tests/distributed/dp_cases.py --work W --out W/p1 --cases rm,dpo_trap --prepare
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \\
        --dynamo_backend no --main_process_port PORT tests/distributed/dp_cases.py --work W --out W/p2 --cases ...
    torchrun --standalone --nproc_per_node 2 tests/distributed/dp_cases.py ... --deepspeed examples/deepspeed/zero2.json

``--prepare`` builds the models under ``W/models`` (only in a single-process run); the others load them.

Cases (see CASES): rm, dpo_trap, dpo_auto, dpo_seqmean_precompute, dpo_sft_term, rs, ppo, grpo, and
gradient-accumulation / mini-batch variants (rm_ga2, dpo_auto_ga2, ppo_ga2, ppo_mb2, grpo_ga2).
Generation-based trainers do not sample: PPO and GRPO get fixed rollouts through test hooks
(PPO: ``_prompt_batch`` and the policy's ``generate``; GRPO: TRL's ``rollout_func``), RS reads a
fixed candidates file. The losses and updates computed from those rollouts are the real code paths.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import zlib
from pathlib import Path

for _key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_key, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch

torch.set_num_threads(1)

GLOBAL_PAIRS = 4  # RM / DPO / RS: rows per optimiser step, all processes together
GLOBAL_ROLLOUTS = 8  # PPO / GRPO: rollouts per iteration, all processes together
STEPS = 3
SEED = 0
THRESHOLD = 3.6  # entropy threshold of the segment RM: about the median entropy of the tiny reference

ENV = {"world": int(os.environ.get("WORLD_SIZE", "1")), "rank": int(os.environ.get("RANK", "0"))}
DEEPSPEED: str | None = None


# ----------------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------------


def is_main() -> bool:
    return ENV["rank"] == 0


def per_device(global_batch: int) -> int:
    if global_batch % ENV["world"]:
        raise SystemExit(f"global batch {global_batch} is not divisible by world size {ENV['world']}")
    return global_batch // ENV["world"]


def gather_objects(obj) -> list:
    """Every rank's ``obj`` (in rank order); ``[obj]`` without torch.distributed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def fingerprint(ids) -> int:
    return zlib.crc32(json.dumps([int(i) for i in ids]).encode())


class RecordingCollator:
    """Wraps a collator; remembers a fingerprint of every row of every batch it builds."""

    def __init__(self, base, key: str):
        self.base, self.key, self.calls = base, key, []

    def __call__(self, examples):
        self.calls.append([fingerprint(ex[self.key]) for ex in examples])
        return self.base(examples)

    def __getattr__(self, name):  # e.g. trainers that read attributes of their collator
        return getattr(self.base, name)


def global_batches(local_calls: list[list[int]], steps: int, ga: int = 1) -> list[list[int]]:
    """Per optimiser step, the rows of all ranks: micro-batch by micro-batch, rank by rank (the first
    ``steps * ga`` collator calls of each rank; the loader may have built one more in advance)."""
    per_rank = gather_objects(local_calls[: steps * ga])
    return [[fp for m in range(s * ga, (s + 1) * ga) for rank in per_rank for fp in rank[m]] for s in range(steps)]


def common_args(out_dir: str, global_batch: int, ga: int = 1, **kwargs) -> dict:
    """Trainer arguments for GLOBAL batch ``global_batch`` = per_device x world x ``ga``."""
    args = dict(
        output_dir=out_dir, per_device_train_batch_size=per_device(global_batch // ga), gradient_accumulation_steps=ga,
        max_steps=STEPS, bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
        save_strategy="no", logging_steps=1, disable_tqdm=True, seed=SEED, data_seed=SEED, dataloader_num_workers=0,
        learning_rate=5e-3, lr_scheduler_type="constant", warmup_steps=0,
    )
    if DEEPSPEED:
        args["deepspeed"] = DEEPSPEED
    args.update(kwargs)
    return args


def ready(args):
    """Initialise the process group now (``TrainingArguments`` does it lazily, on first ``.device``).

    Under ZeRO-3, ``from_pretrained`` after the arguments exist builds the model inside
    ``deepspeed.zero.Init``, which reads the world size from torch.distributed: if the group is not up
    yet it assumes 1 process and fails the batch-size check (``4 != 2 * 1 * 1``). With
    ``use_cpu=True`` transformers sets up a plain gloo group and never calls
    ``deepspeed.init_distributed`` (it does on GPUs), so do that here too."""
    _ = args.device
    if getattr(args, "deepspeed", None) and ENV["world"] > 1:
        import deepspeed
        import deepspeed.comm as ds_comm

        if not ds_comm.is_initialized():
            deepspeed.init_distributed(dist_backend="gloo")
    return args


def trainer_state(trainer) -> dict[str, torch.Tensor] | None:
    """Final parameters, gathered from ZeRO-3 partitions when needed (a collective: call on every rank)."""
    model = trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model
    state = trainer.accelerator.get_state_dict(model)
    if not is_main():
        return None
    return {k: v.detach().float().cpu().clone() for k, v in state.items()}


def module_state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}


def log_series(trainer, *names) -> dict[str, list[float]]:
    hist = [h for h in trainer.state.log_history if "loss" in h]
    return {n: [float(h[n]) for h in hist if n in h] for n in names}


def write_result(out: Path, case: str, result: dict, state: dict | None) -> None:
    if not is_main():
        return
    out.mkdir(parents=True, exist_ok=True)
    if state is not None:
        torch.save(state, out / f"{case}.pt")
    (out / f"{case}.json").write_text(json.dumps(result, indent=1))


def models_dir(work: Path) -> Path:
    return work / "models"


# ----------------------------------------------------------------------------------------------------------------------
# fixed models and data
# ----------------------------------------------------------------------------------------------------------------------


def prepare(work: Path) -> None:
    """Tiny models, built once and saved; every run (1 or 2 processes, DeepSpeed or not) loads these files."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    from segrl.models import build_tiny_causal_lm, build_tiny_tokenizer

    root = models_dir(work)
    if (root / "done").exists():
        _prepare_segment_rm(root)
        return
    root.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_tokenizer()
    small = dict(hidden_size=32, num_layers=2, num_heads=4)
    # policy: the model every trainer updates; ref: a second random model whose entropies spread
    # around THRESHOLD (initializer_range 0.5), used as DPO reference and for entropy segmentation.
    for name, seed, extra in (("policy", 1, {}), ("ref", 2, {"initializer_range": 0.5})):
        model = build_tiny_causal_lm(tok, seed=seed, **small, **extra)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    # Heads are drawn here once (seeded) so that no run depends on its own RNG state at load time.
    torch.manual_seed(3)
    rm = AutoModelForSequenceClassification.from_pretrained(root / "policy", num_labels=1)
    rm.save_pretrained(root / "rm_init")
    tok.save_pretrained(root / "rm_init")
    torch.manual_seed(4)
    critic = AutoModelForTokenClassification.from_pretrained(root / "ref", num_labels=1)
    critic.save_pretrained(root / "critic_init")
    tok.save_pretrained(root / "critic_init")
    _prepare_segment_rm(root)
    (root / "done").write_text("ok\n")


def _prepare_segment_rm(root: Path) -> None:
    """A saved segment RM (random head, reference = ``ref``, a fitted-looking normaliser) for ASR-DPO's
    ``token_reward_source="segment_rm"``."""
    if (root / "segment_rm" / "config.json").exists():
        return
    from transformers import AutoModelForSequenceClassification

    from segrl import ops
    from segrl.rm import SegmentRewardModel

    tok = load_tokenizer(root.parent)
    rm = AutoModelForSequenceClassification.from_pretrained(root / "rm_init", num_labels=1)
    coef = ops.LocationNormalizerCoef(a_mu=0.1, b_mu=0.0, a_sigma=0.0, b_sigma=1.0)
    SegmentRewardModel(rm, tok, threshold=THRESHOLD, reference_model=str(root / "ref"), normalizer=coef
                       ).save_pretrained(root / "segment_rm")


def load_tokenizer(work: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(models_dir(work) / "policy")


def pref_rows(n: int) -> list[dict]:
    from segrl.models import load_tiny_prefs

    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in load_tiny_prefs()[:n]]


def completion_length(tok, prompt: str, completion: str) -> int:
    """Completion tokens as TRL tokenises prompt + completion + EOS (the tiny prompts end on a token boundary)."""
    return len(tok(prompt + completion + tok.eos_token)["input_ids"]) - len(tok(prompt)["input_ids"])


# ----------------------------------------------------------------------------------------------------------------------
# cases
# ----------------------------------------------------------------------------------------------------------------------


def case_rm(work: Path, out: Path, name: str, ga: int = 1) -> None:
    """Dense segment RM (c = 2.0, entropies precomputed from the reference), random sampler."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification

    from segrl.rm import SegmentRewardConfig, SegmentRewardTrainer

    m = models_dir(work)
    tok = load_tokenizer(work)
    args = ready(SegmentRewardConfig(**common_args(str(out / f"run-{name}"), GLOBAL_PAIRS, ga), segment_threshold=THRESHOLD,
                                     reference_model=str(m / "ref"), center_rewards_coefficient=0.01))
    model = AutoModelForSequenceClassification.from_pretrained(m / "rm_init", num_labels=1)
    trainer = SegmentRewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(pref_rows(GLOBAL_PAIRS * STEPS)),
                                   processing_class=tok)
    trainer.data_collator = rec = RecordingCollator(trainer.data_collator, "chosen_ids")
    trainer.train()
    result = {
        "world": trainer.accelerator.num_processes, "deepspeed": trainer.is_deepspeed_enabled,
        "losses": log_series(trainer, "loss")["loss"],
        "strict": log_series(trainer, "grad_norm"),
        "metrics": log_series(trainer, "accuracy", "margin", "mean_reward", "rm/segments_per_response",
                              "rm/mean_segment_length"),
        "batches": global_batches(rec.calls, STEPS, ga),
    }
    write_result(out, name, result, trainer_state(trainer))


def _dpo_rows(tok, trap: bool) -> list[dict]:
    """Preference rows with per-token rewards (columns source).

    ``trap``: within every global batch of GLOBAL_PAIRS consecutive rows (sequential sampler), the
    first half of the pairs has token rewards around +1 and the second half around -1 (noise 1).
    The batch mean is then ~0 while a 2-process run's local halves have means ~+1 and ~-1, so a
    baseline resolved on the local half keeps different tokens than one resolved on the global
    batch; either way the masks are partial (not the all-kept / fallback extremes).
    """
    rng = random.Random(7)
    rows = pref_rows(GLOBAL_PAIRS * STEPS)
    half = GLOBAL_PAIRS // 2
    for i, r in enumerate(rows):
        offset = (1.0 if (i % GLOBAL_PAIRS) < half else -1.0) if trap else 0.0
        for side in ("chosen", "rejected"):
            n = completion_length(tok, r["prompt"], r[side])
            r[f"{side}_token_rewards"] = [round(offset + rng.gauss(0, 1), 4) for _ in range(n)]
    return rows


def _trap_armed_dpo(trainer, steps: int) -> list[int]:
    """Per step (sequential sampler), tokens whose keep flag differs between the global-batch baseline
    and the baseline of the half a 2-process run would see. > 0 means the case can catch a local baseline."""
    from segrl import ops

    ds = trainer.train_dataset
    diffs = []
    for s in range(steps):
        idx = list(range(s * GLOBAL_PAIRS, (s + 1) * GLOBAL_PAIRS))

        def keep(rows):
            lists = [ds[i]["chosen_token_rewards"] for i in rows] + [ds[i]["rejected_token_rewards"] for i in rows]
            width = max(map(len, lists))
            rewards = torch.zeros(len(lists), width)
            mask = torch.zeros(len(lists), width, dtype=torch.bool)
            for j, v in enumerate(lists):
                rewards[j, : len(v)] = torch.tensor(v)
                mask[j, : len(v)] = True
            sign = torch.tensor([1] * len(rows) + [-1] * len(rows))
            k = ops.asr_mask(rewards, mask, sign, baseline="batch_mean")
            return [k[j, : len(v)] for j, v in enumerate(lists)]

        full = keep(idx)
        h = GLOBAL_PAIRS // 2
        a, b = keep(idx[:h]), keep(idx[h:])
        halves = a[:h] + b[:h] + a[h:] + b[h:]  # back to [chosen of all; rejected of all]
        diffs.append(int(sum((x != y).sum() for x, y in zip(full, halves))))
    return diffs


def _dpo_case(work: Path, out: Path, name: str, *, trap: bool, file_backed: bool = False, ga: int = 1, **config) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from segrl.dpo import ASRDPOConfig, ASRDPOTrainer

    m = models_dir(work)
    tok = load_tokenizer(work)
    run_dir = out / f"run-{name}"
    args = ready(ASRDPOConfig(**common_args(str(run_dir), GLOBAL_PAIRS, ga, **config)))
    policy = AutoModelForCausalLM.from_pretrained(m / "policy")
    ref = AutoModelForCausalLM.from_pretrained(m / "ref")
    rows = _dpo_rows(tok, trap)
    if config.get("token_reward_source", "columns") != "columns":
        rows = [{k: v for k, v in r.items() if not k.endswith("_token_rewards")} for r in rows]
    if file_backed:
        # As `segrl dpo` / load_dataset give it: an Arrow-cached dataset in a directory every rank sees
        # (a per-run cache dir, so the 2-process run recomputes instead of reusing the 1-process cache).
        from datasets import load_dataset

        path = run_dir / "train.jsonl"
        with args.main_process_first(desc="write the dataset"):
            if is_main():
                run_dir.mkdir(parents=True, exist_ok=True)
                path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            dataset = load_dataset("json", data_files=str(path), split="train", cache_dir=str(run_dir / "hf_cache"))
    else:
        dataset = Dataset.from_list(rows)
    trainer = ASRDPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=dataset, processing_class=tok)
    trainer.data_collator = rec = RecordingCollator(trainer.data_collator, "chosen_ids")
    armed = _trap_armed_dpo(trainer, STEPS) if trap and is_main() else None
    trainer.train()
    result = {
        "world": trainer.accelerator.num_processes, "deepspeed": trainer.is_deepspeed_enabled,
        "losses": log_series(trainer, "loss")["loss"],
        "strict": {**log_series(trainer, "grad_norm"),
                   **({"asr_delta": log_series(trainer, "asr/delta")["asr/delta"]} if trainer.asr_delta is not None
                      else {})},
        "metrics": log_series(trainer, "rewards/margins", "asr/kept_token_fraction_chosen",
                              "asr/kept_token_fraction_rejected", "asr/baseline", "asr/fallbacks"),
        "batches": global_batches(rec.calls, STEPS, ga),
        "extra": {"trap_tokens_differing_per_step": armed, "asr_delta": trainer.asr_delta},
    }
    write_result(out, name, result, trainer_state(trainer))


def case_dpo_trap(work, out, name, ga: int = 1):
    """ASR-DPO, batch_mean baseline, sequential sampler, data whose global batch mean differs from each half's."""
    _dpo_case(work, out, name, trap=True, ga=ga, mask_type="asr", asr_baseline="batch_mean", asr_delta=0.2,
              train_sampling_strategy="sequential", loss_type=["sigmoid"])


def case_dpo_auto(work, out, name, ga: int = 1):
    """ASR-DPO with the default options (sequence_mean baseline, asr_delta="auto": resolved once over a
    seeded sample of the training set before the first step, never per micro-batch), sequential
    sampler. ``ga=2`` (dpo_auto_ga2): the same global batch in 2 accumulation micro-steps; with a
    row-local baseline the masks, the delta and the losses must equal dpo_auto's."""
    _dpo_case(work, out, name, trap=True, ga=ga, mask_type="asr", asr_baseline="sequence_mean", asr_delta="auto",
              train_sampling_strategy="sequential", loss_type=["sigmoid"])


def case_dpo_seqmean_precompute(work, out, name):
    """ASR-DPO, sequence_mean baseline (row-local: DP-invariant by construction), precomputed per-token
    reference log-probs (a sharded DataLoader + gather), ipo (per-row kept-token normalisation), random
    sampler, file-backed dataset (see case_dpo_precompute_inmemory)."""
    _dpo_case(work, out, name, trap=False, file_backed=True, mask_type="asr", asr_baseline="sequence_mean",
              precompute_ref_log_probs=True, loss_type=["ipo"])


def case_dpo_precompute_inmemory(work, out, name):
    """precompute_ref_log_probs=True with an in-memory dataset (Dataset.from_list). Known to crash with
    2 processes: the cache file path comes from `dataset._get_cache_file_path`, which for a dataset
    without cache files is in a per-process temporary directory, so only rank 0 finds the file it
    wrote (TRL's own DPOTrainer._precompute_ref_logps has the same pattern). Run it in its own launch."""
    _dpo_case(work, out, name, trap=False, mask_type="asr", asr_baseline="sequence_mean",
              precompute_ref_log_probs=True, loss_type=["sigmoid"])


def case_dpo_zero(work, out, name):
    """ASR-DPO, zero baseline, on-the-fly reference, sigmoid loss, random sampler (the DeepSpeed case)."""
    _dpo_case(work, out, name, trap=False, mask_type="asr", asr_baseline="zero", loss_type=["sigmoid"])


def case_dpo_segment_rm(work, out, name):
    """ASR-DPO with token rewards from a saved segment RM (scored once at dataset preparation, on every
    rank), batch_mean baseline."""
    _dpo_case(work, out, name, trap=False, mask_type="asr", asr_baseline="batch_mean", loss_type=["sigmoid"],
              token_reward_source="segment_rm", token_reward_model=str(models_dir(work) / "segment_rm"))


def case_dpo_sft_term(work, out, name):
    """Informational: TRL's own `sft` DPO term is a token mean over the LOCAL batch (upstream behaviour)."""
    _dpo_case(work, out, name, trap=False, mask_type="none", loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0],
              train_sampling_strategy="sequential")


# ---------------------------------------------------------------------------------------------------------------- RS


def _rs_candidates(tok, path: Path) -> None:
    """8 prompts x 3 candidates with fixed scores and token rewards. With a sequential sampler and a
    global batch of 4 selected rows, the selected responses of rows 0-1 of every batch are long and
    those of rows 2-3 short, so the two ranks hold different numbers of kept tokens: a per-rank token
    mean (instead of the global one) would change the loss."""
    rng = random.Random(11)
    rows = []
    for p in range(2 * GLOBAL_PAIRS):
        prompt = f"{p + 1}+{p + 2}="
        long_ = p % GLOBAL_PAIRS < GLOBAL_PAIRS // 2
        cands = []
        for k in range(3):
            n_terms = (5 if long_ else 1) + k % 2
            cands.append(";".join(f"{p + k + t}+{t}={p + k + 2 * t}" for t in range(n_terms)))
        token_rewards = []
        for c in cands:
            n = completion_length(tok, prompt, c)
            token_rewards.append([round(rng.gauss(0.5 if long_ else -0.5, 1.0), 4) for _ in range(n)])
        scores = [round(rng.uniform(-1, 1), 4) for _ in cands]
        rows.append({"prompt": prompt, "candidates": cands, "scores": scores, "token_rewards": token_rewards})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def case_rs(work: Path, out: Path, name: str) -> None:
    from transformers import AutoModelForCausalLM

    from segrl.rs import ASRRejectionSampler, ASRRejectionSamplingConfig
    from segrl.rs.sampler import load_candidates

    m = models_dir(work)
    tok = load_tokenizer(work)
    cand_file = models_dir(work) / "rs_candidates_fixed.jsonl"
    if is_main() and ENV["world"] == 1 and not cand_file.exists():
        _rs_candidates(tok, cand_file)
    run_dir = out / f"run-{name}" / f"rank{ENV['rank']}"  # the sampler writes its JSONL files here
    args = ready(ASRRejectionSamplingConfig(
        **common_args(str(run_dir), GLOBAL_PAIRS, train_sampling_strategy="sequential"),
        num_candidates=2, max_new_tokens=6, generation_batch_size=4, mask_type="asr", asr_baseline="batch_mean",
        candidates_file=str(cand_file), max_length=None,
    ))
    policy = AutoModelForCausalLM.from_pretrained(m / "policy")
    sampler = ASRRejectionSampler(policy, args, processing_class=tok)

    # Sampling is not sharded: every rank samples every prompt with the same seed. Check that the
    # ranks (and the single process) agree on what they sampled, before training changes the model.
    sampled = sampler.generate([f"{a}+{a}=" for a in range(1, 5)])
    sampled_fp = [fingerprint(c) for r in sampled for c in r["candidate_ids"]]
    per_rank_samples = gather_objects(sampled_fp)

    records = sampler.score(load_candidates(cand_file, tok))
    selected = sampler.select(records)
    per_rank_tokens = []
    for s in range(STEPS if len(selected) >= GLOBAL_PAIRS * STEPS else len(selected) // GLOBAL_PAIRS):
        rows = selected.select(range(s * GLOBAL_PAIRS, (s + 1) * GLOBAL_PAIRS))
        kept = [sum(k) for k in rows["kept"]]
        h = GLOBAL_PAIRS // 2
        per_rank_tokens.append([sum(kept[:h]), sum(kept[h:])])

    import segrl.rs.sampler as rs_mod

    recorders = []
    base_cls = rs_mod._RejectionSamplingSFTTrainer

    class Recording(base_cls):  # sees the SFT batches the sampler's trainer builds
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.data_collator = RecordingCollator(self.data_collator, "input_ids")
            recorders.append(self.data_collator)

    rs_mod._RejectionSamplingSFTTrainer = Recording
    try:
        sampler.train(selected)
    finally:
        rs_mod._RejectionSamplingSFTTrainer = base_cls
    trainer = sampler.trainer
    steps = trainer.state.global_step
    result = {
        "world": trainer.accelerator.num_processes, "deepspeed": trainer.is_deepspeed_enabled,
        "losses": log_series(trainer, "loss")["loss"],
        "strict": log_series(trainer, "grad_norm"),
        "metrics": {**log_series(trainer, "asr/kept_token_fraction", "asr/baseline")},
        "batches": global_batches(recorders[0].calls, steps),
        "extra": {"sampled_fingerprints_per_rank": per_rank_samples,
                  "kept_tokens_per_half_per_step": per_rank_tokens},
    }
    write_result(out, name, result, trainer_state(trainer))


# --------------------------------------------------------------------------------------------------------------- PPO

PPO_PROMPTS = [f"{a}+{b}=" for a, b in ((1, 2), (3, 4), (5, 6), (7, 8), (2, 1), (4, 3), (6, 5), (8, 7))]


def _ppo_responses(tok) -> dict[str, list[int]]:
    """Fixed responses: the first half of the prompts (rank 0 of a 2-process run) get long, digit-heavy
    responses (high DigitScore reward), the second half short wordy ones (low reward)."""
    out = {}
    for i, p in enumerate(PPO_PROMPTS):
        text = f"{i}{i + 1};{i + 2}{i + 3}={i}{i}{i + 4}" if i < len(PPO_PROMPTS) // 2 else ["so the", "it is a", "we see", "the end of"][i % 4]
        out[p] = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return out


class DigitScore:
    """Rule 'reward model': per-position score = fraction of digit tokens in the response so far (x 4)."""

    def __init__(self, tok):
        vocab = tok.convert_ids_to_tokens(list(range(len(tok))))
        self.is_digit = torch.tensor([any(ch.isdigit() for ch in t) for t in vocab], dtype=torch.float32)

    def __call__(self, query_responses, attention_mask, context_length):
        hits = self.is_digit.to(query_responses.device)[query_responses].clone()
        hits[:, :context_length] = 0
        valid = attention_mask.float().clone()
        valid[:, :context_length] = 0
        return hits.cumsum(dim=1) / valid.cumsum(dim=1).clamp(min=1) * 4.0


def mask_fingerprints(keep: torch.Tensor, mask: torch.Tensor) -> list[int]:
    """One fingerprint per row of a keep mask (its flags over the row's valid tokens)."""
    return [fingerprint(k[m].long().tolist()) for k, m in zip(keep.cpu(), mask.bool().cpu())]


def case_ppo(work: Path, out: Path, name: str, mini_batches: int = 1, ga: int = 1) -> None:
    """ASR-PPO (batch_mean baseline on token rewards, asr_delta="auto") on fixed rollouts; one
    mini-batch per rollout (mini_batch_size == rollout_batch_size: with several mini-batches per
    rollout the shuffle is per rank and the global mini-batches differ by design), two PPO epochs
    (the 2nd has ratio != 1). ``mini_batches=2`` (case ppo_mb2): the same rollouts in two mini-batches,
    whose ASR masks and resolved delta must equal the one-mini-batch run's (never per micro-batch).
    ``ga=2`` (case ppo_ga2): each mini-batch in 2 accumulated micro-batches: everything must match ppo."""
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    from segrl import ops
    from segrl.ppo import SegmentPPOConfig, SegmentPPOTrainer, SegmentRewardSource

    m = models_dir(work)
    tok = load_tokenizer(work)
    local = per_device(GLOBAL_ROLLOUTS)
    responses = _ppo_responses(tok)
    policy = AutoModelForCausalLM.from_pretrained(m / "ref")  # policy == reference at the start (KL 0)
    ref = AutoModelForCausalLM.from_pretrained(m / "ref")
    critic = AutoModelForTokenClassification.from_pretrained(m / "critic_init", num_labels=1)

    def fixed_generate(input_ids, attention_mask, return_dict_in_generate=False, output_logits=False, **_):
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            prompt = tok.decode([t for t, k in zip(ids, mask) if k])
            rows.append(responses[prompt])
        width = max(map(len, rows))
        resp = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows], device=input_ids.device)
        sequences = torch.cat([input_ids, resp], dim=1)
        if not return_dict_in_generate:
            return sequences
        from types import SimpleNamespace

        from segrl.ppo.trainer import forward_logits

        # what generate's output_logits would hold: the policy's logits before each response token
        full_mask = torch.cat([attention_mask, torch.ones_like(resp)], dim=1)
        with torch.no_grad():
            logits = forward_logits(policy, sequences, full_mask)[:, input_ids.shape[1] - 1: -1]
        return SimpleNamespace(sequences=sequences, logits=tuple(logits.unbind(dim=1)) if output_logits else None)

    policy.generate = fixed_generate  # the rollout calls generate on the unwrapped policy

    class FixedPromptsPPO(SegmentPPOTrainer):
        def _prompt_batch(self, iteration):
            rank = self.accelerator.process_index
            return self.prompt_ids[rank * local: (rank + 1) * local]

    args = SegmentPPOConfig(
        output_dir=str(out / f"run-{name}"), num_iterations=2, rollout_batch_size=local,
        mini_batch_size=local // mini_batches, gradient_accumulation_steps=ga,
        ppo_epochs=2, max_new_tokens=16, learning_rate=3e-3, critic_learning_rate=3e-3, kl_coef=0.05,
        mask_type="asr", asr_baseline="batch_mean", asr_delta="auto", use_cpu=True, seed=SEED, deepspeed=DEEPSPEED,
    )
    identity = ops.LocationNormalizerCoef(a_mu=0.0, b_mu=0.0, a_sigma=0.0, b_sigma=1.0)
    source = SegmentRewardSource(DigitScore(tok), threshold=THRESHOLD, normalizer=identity)
    trainer = FixedPromptsPPO(args, policy=policy, ref_model=ref, critic=critic, reward_source=source, tokenizer=tok,
                              prompts=PPO_PROMPTS)
    rollouts = []
    real_rollout = trainer.rollout

    def recording_rollout(prompt_rows):
        batch = real_rollout(prompt_rows)
        rollouts.append(batch)
        return batch

    trainer.rollout = recording_rollout
    history = trainer.train()  # logs the global gradient norms before clipping (DDP: all-reduced; DeepSpeed: its own)

    # Armed check (single process): the ASR mask with the global batch mean vs with each half's mean.
    armed = None
    if ENV["world"] == 1:
        b = rollouts[0]
        r, mask = b["token_rewards"], b["response_mask"]
        seq = b["seq_rewards"]
        sign = torch.where(seq >= seq.mean(), 1, -1)
        full = ops.asr_mask(r, mask, sign, baseline="batch_mean", delta="auto")
        h = r.shape[0] // 2
        halves = torch.cat([ops.asr_mask(r[:h], mask[:h], sign[:h], baseline="batch_mean", delta="auto"),
                            ops.asr_mask(r[h:], mask[h:], sign[h:], baseline="batch_mean", delta="auto")])
        armed = {"mask_tokens_differing": int((full != halves).sum()),
                 "kept_tokens_per_half": [int(full[:h].sum()), int(full[h:].sum())],
                 "response_tokens_per_half": [int(mask[:h].sum()), int(mask[h:].sum())],
                 # "auto" resolved on a half (a per-rank delta) differs from the whole batch's
                 "delta": ops.resolve_delta(r, mask, "batch_mean", "auto"),
                 "delta_per_half": [ops.resolve_delta(r[:h], mask[:h], "batch_mean", "auto"),
                                    ops.resolve_delta(r[h:], mask[h:], "batch_mean", "auto")]}
    per_rank = gather_objects([{k: h[k] for k in ("policy_loss", "value_loss", "clipfrac", "approx_kl")}
                               for h in history])
    local_keep = gather_objects([int(b["loss_mask"].sum()) for b in rollouts])
    # per iteration, the keep-mask fingerprint of every row of every rank (rank order = prompt order)
    per_rank_masks = gather_objects([mask_fingerprints(b["loss_mask"], b["response_mask"]) for b in rollouts])
    masks = [[fp for rank in per_rank_masks for fp in rank[i]] for i in range(len(rollouts))]
    keys = ("policy_loss", "value_loss")
    mean_over_ranks = {k: [sum(r[i][k] for r in per_rank) / len(per_rank) for i in range(len(history))] for k in keys}
    acc = trainer.accelerator
    # every rank: under ZeRO-3 get_state_dict gathers the partitioned weights
    policy_state, critic_state = acc.get_state_dict(trainer.policy), acc.get_state_dict(trainer.critic)
    state = None
    if is_main():
        state = {**{f"policy.{k}": v.detach().float().cpu().clone() for k, v in policy_state.items()},
                 **{f"critic.{k}": v.detach().float().cpu().clone() for k, v in critic_state.items()}}
    result = {
        "world": acc.num_processes, "deepspeed": trainer.policy_updater.deepspeed,
        # PPO's history holds each rank's own mini-batch losses (token sums / (global count / world)):
        # their mean over ranks is the global loss.
        "losses": mean_over_ranks["policy_loss"],
        "strict": {"value_loss": mean_over_ranks["value_loss"], "policy_grad_norm": [h["policy_grad_norm"] for h in history],
                   "critic_grad_norm": [h["critic_grad_norm"] for h in history], "asr_delta": [h["asr/delta"] for h in history]},
        "metrics": {
                    "rank0_policy_loss": [h["policy_loss"] for h in history],
                    **{k: [h[k] for h in history] for k in ("reward", "asr/kept_token_fraction", "rm/segments_per_response",
                                                             "rm/mean_segment_length", "kl")}},
        "batches": None,
        "extra": {"armed": armed, "kept_tokens_per_rank_per_iteration": local_keep, "masks": masks,
                  "asr_delta": [h["asr/delta"] for h in history]},
    }
    write_result(out, name, result, state)


# -------------------------------------------------------------------------------------------------------------- GRPO

GRPO_PROMPTS = [f"{a}+{b}=" for a in range(1, 5) for b in range(1, 3)]
GRPO_GENERATIONS = 4


def _grpo_completion(prompt: str, j: int) -> str:
    a = int(prompt.split("+")[0])
    if a % 2:  # long, digit-heavy
        return f"{prompt}{a + j};{a}+{j}={a + j};={a + j}{j}"
    return ["so", "the end", "it is", "we see it"][j]


def case_grpo(work: Path, out: Path, name: str, baseline: str = "batch_mean", ga: int = 1) -> None:
    """Dense segment GRPO with the ASR mask (batch_mean, asr_delta="auto"), fixed completions through
    TRL's rollout_func, beta > 0 (reference KL), dapo loss (global token count). ``ga=2`` (grpo_ga2):
    the same global generation batch in two accumulation micro-steps; masks and delta must not change."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from segrl import ops
    from segrl.grpo import SegmentGRPOConfig, SegmentGRPOTrainer
    from segrl.ppo.trainer import response_mask_from
    from segrl.rm import SegmentRewardModel

    m = models_dir(work)
    tok = load_tokenizer(work)
    coef = ops.LocationNormalizerCoef(a_mu=0.1, b_mu=0.0, a_sigma=0.0, b_sigma=1.0)
    rm_model = AutoModelForSequenceClassification.from_pretrained(m / "rm_init", num_labels=1)
    ref = AutoModelForCausalLM.from_pretrained(m / "ref")
    segment_rm = SegmentRewardModel(rm_model, tok, threshold=THRESHOLD, reference_model=ref, normalizer=coef)
    seen = []

    def rollout_func(prompts, trainer):
        start = trainer.accelerator.process_index * len(prompts)
        prompt_ids, completion_ids = [], []
        for i, p in enumerate(prompts):
            j = (start + i) % GRPO_GENERATIONS
            prompt_ids.append(tok(p, add_special_tokens=False)["input_ids"])
            completion_ids.append(tok(_grpo_completion(p, j), add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
        seen.append([fingerprint(pi + ci) for pi, ci in zip(prompt_ids, completion_ids)])
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    args = ready(SegmentGRPOConfig(
        **common_args(str(out / f"run-{name}"), GLOBAL_ROLLOUTS, ga, max_steps=2, learning_rate=3e-3),
        num_generations=GRPO_GENERATIONS, max_completion_length=32, beta=0.04, mask_type="asr",
        asr_baseline=baseline, asr_delta="auto", disable_dropout=True,
    ))
    policy = AutoModelForCausalLM.from_pretrained(m / "policy")
    trainer = SegmentGRPOTrainer(policy, args=args, train_dataset=Dataset.from_list([{"prompt": p} for p in GRPO_PROMPTS]),
                                 processing_class=tok, segment_reward_model=segment_rm, rollout_func=rollout_func)

    # Armed check (single process): recompute the ASR inputs of the first generation batch exactly as
    # the trainer does, and compare the global-baseline mask with the per-half (per-rank) ones.
    armed = None
    captured = []
    real = trainer._generate_and_score_completions

    deltas, masks = [], []

    def capturing(inputs):
        out_ = real(inputs)
        captured.append(out_)
        mode = "train" if trainer.model.training else "eval"
        deltas.append(float(trainer._metrics[mode]["asr/delta"][-1]))
        resp, _ = response_mask_from(out_["completion_ids"], tok.eos_token_id)
        masks.append(mask_fingerprints(out_["tool_mask"].bool(), resp))
        return out_

    trainer._generate_and_score_completions = capturing
    trainer.train()
    if ENV["world"] == 1 and baseline == "batch_mean":
        out0 = captured[0]
        resp_mask, _ = response_mask_from(out0["completion_ids"], tok.eos_token_id)
        p_ids = [row[mm.bool()].tolist() for row, mm in zip(out0["prompt_ids"], out0["prompt_mask"])]
        c_ids = [row[mm].tolist() for row, mm in zip(out0["completion_ids"], resp_mask)]
        seg = segment_rm.segment_token_ids(p_ids, c_ids)
        seg_norm = segment_rm.normalized_segment_rewards(seg)
        tr = ops.spread_segment_rewards(seg_norm, seg.segment_ids, mode="even")
        padded = torch.zeros(resp_mask.shape)
        padded[:, : tr.shape[1]] = tr
        sc = seg.scores
        g = GRPO_GENERATIONS
        sign = torch.where(sc >= sc.view(-1, g).mean(1).repeat_interleave(g), 1, -1)
        full = ops.asr_mask(padded, resp_mask, sign, baseline="batch_mean", delta="auto")
        h = padded.shape[0] // 2
        halves = torch.cat([ops.asr_mask(padded[:h], resp_mask[:h], sign[:h], baseline="batch_mean", delta="auto"),
                            ops.asr_mask(padded[h:], resp_mask[h:], sign[h:], baseline="batch_mean", delta="auto")])
        armed = {"mask_tokens_differing": int((full != halves).sum()),
                 "delta": ops.resolve_delta(padded, resp_mask, "batch_mean", "auto"),
                 "delta_per_half": [ops.resolve_delta(padded[:h], resp_mask[:h], "batch_mean", "auto"),
                                    ops.resolve_delta(padded[h:], resp_mask[h:], "batch_mean", "auto")],
                 "global_baseline": float((padded * resp_mask).sum() / resp_mask.sum()),
                 "half_baselines": [float((padded[:h] * resp_mask[:h]).sum() / resp_mask[:h].sum()),
                                    float((padded[h:] * resp_mask[h:]).sum() / resp_mask[h:].sum())]}
    per_rank_seen = gather_objects(seen)
    batches = [[fp for rank in per_rank_seen for fp in rank[s]] for s in range(len(seen))]
    per_rank_masks = gather_objects(masks)
    masks = [[fp for rank in per_rank_masks for fp in rank[s]] for s in range(len(masks))]
    result = {
        "world": trainer.accelerator.num_processes, "deepspeed": trainer.is_deepspeed_enabled,
        "losses": log_series(trainer, "loss")["loss"],
        "strict": {**log_series(trainer, "grad_norm"), "asr_delta": deltas},
        "metrics": log_series(trainer, "kl", "asr/kept_token_fraction", "rm/segments_per_response", "reward"),
        "batches": batches,
        "extra": {"armed": armed, "masks": masks, "asr_delta": deltas},
    }
    write_result(out, name, result, trainer_state(trainer))


CASES = {
    "rm": case_rm,
    # the same global batch as 2 micro-batches of gradient accumulation (compare with "rm": must match)
    "rm_ga2": lambda work, out, name: case_rm(work, out, name, ga=2),
    "dpo_trap": case_dpo_trap,
    # informational: batch_mean is resolved per MICRO-batch (of all processes), so gradient accumulation
    # changes the ASR mask while the number of processes does not (compare with "dpo_trap": differs)
    "dpo_trap_ga2": lambda work, out, name: case_dpo_trap(work, out, name, ga=2),
    "dpo_auto": case_dpo_auto,
    "dpo_auto_ga2": lambda work, out, name: case_dpo_auto(work, out, name, ga=2),
    "dpo_seqmean_precompute": case_dpo_seqmean_precompute,
    "dpo_precompute_inmemory": case_dpo_precompute_inmemory,
    "dpo_zero": case_dpo_zero,
    "dpo_segment_rm": case_dpo_segment_rm,
    "dpo_sft_term": case_dpo_sft_term,
    "rs": case_rs,
    "ppo": case_ppo,
    # the same rollouts in 2 mini-batches: the ASR masks and the "auto" delta must equal ppo's
    "ppo_mb2": lambda work, out, name: case_ppo(work, out, name, mini_batches=2),
    # each mini-batch as 2 micro-batches of gradient accumulation (compare with "ppo": must match)
    "ppo_ga2": lambda work, out, name: case_ppo(work, out, name, ga=2),
    "grpo": case_grpo,
    # the same global generation batch as 2 accumulation micro-steps (compare with "grpo": must match)
    "grpo_ga2": lambda work, out, name: case_grpo(work, out, name, ga=2),
    # the same with a row-local ("zero") baseline: isolates the batch_mean baseline as the only non-invariant part
    "grpo_zero": lambda work, out, name: case_grpo(work, out, name, baseline="zero"),
}


def apply_mutations(spec: str) -> None:
    """Test-only patches, named in ``SEGRL_DP_MUTATE`` (comma-separated), to check the harness itself.

    - ``dpo_local_baseline``: re-creates the per-rank batch_mean baseline ASR-DPO had before it was
      made global; ``dpo_trap`` must then DIFFER between 1 and 2 processes (the harness can see it).
    - ``local_auto_delta``: PPO / GRPO resolve ``asr_delta="auto"`` over each rank's own rows (a
      per-rank delta); ``ppo`` must then DIFFER between 1 and 2 processes.
    - ``zero3_fix``: frozen helper models (the RM's reference, a saved segment RM) loaded unpartitioned
      under ZeRO-3 (the fix proposed for segrl/rm); ``rm`` / ``dpo_segment_rm`` then run under ZeRO-3.
    """
    for name in filter(None, spec.split(",")):
        if name == "dpo_local_baseline":
            from segrl.dpo import ASRDPOTrainer

            ASRDPOTrainer._global_mask_options = lambda self, token_rewards, mask: self._mask_options
        elif name == "local_auto_delta":
            import segrl._distributed as distributed_mod
            from segrl import ops

            def local_auto_delta(accelerator, rewards, mask, baseline, quantile):
                return ops.resolve_delta(rewards, mask, baseline, "auto", quantile)  # this rank's rows only

            distributed_mod.global_auto_delta = local_auto_delta  # what PPO / GRPO's global_mask_options call
        elif name in ("rm_zero3_fix", "zero3_fix"):
            _patch_rm_zero3()
        else:
            raise SystemExit(f"unknown SEGRL_DP_MUTATE entry {name!r}")


def _patch_rm_zero3() -> None:
    """The fix proposed for the segment RM under ZeRO-3, applied as a test-only patch.

    1. The frozen reference (a path) is loaded as a full, unpartitioned copy: it only runs at dataset
       preparation, rank by rank (``global_then_local_main_first``), where ZeRO-3 partitioned weights
       could not be gathered (a gather is a collective) -- and under ``zero.Init`` its embedding has 0 rows.
    2. Vocabulary sizes are read through ``ds_shape`` when a parameter is partitioned.
    """
    from contextlib import contextmanager

    from transformers.integrations import deepspeed as hf_ds

    import segrl.rm.entropy as entropy_mod
    import segrl.rm.trainer as trainer_mod

    @contextmanager
    def full_weights():
        obj = hf_ds._hf_deepspeed_config_weak_ref() if hf_ds._hf_deepspeed_config_weak_ref is not None else None
        if obj is None or not hf_ds.is_deepspeed_zero3_enabled():
            yield
            return
        hf_ds.unset_hf_deepspeed_config()
        try:
            yield
        finally:
            hf_ds.set_hf_deepspeed_config(obj)

    real_load = entropy_mod.load_reference_model

    def load_reference_model(name_or_path, **kwargs):
        with full_weights():
            return real_load(name_or_path, **kwargs)

    def rows(weight):
        return int(getattr(weight, "ds_shape", weight.shape)[0])

    def _embedding_rows(model):
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if emb is not None and getattr(emb, "weight", None) is not None:
            return rows(emb.weight)
        return int(model.config.get_text_config().vocab_size)

    real_vocab_rows = trainer_mod._vocab_rows

    def _vocab_rows(model, args):
        if isinstance(model, torch.nn.Module) and model.get_input_embeddings() is not None:
            return rows(model.get_input_embeddings().weight)
        return real_vocab_rows(model, args)

    trainer_mod.load_reference_model = load_reference_model
    entropy_mod.load_reference_model = load_reference_model  # SegmentRewardModel.load_reference imports it lazily
    entropy_mod._embedding_rows = _embedding_rows
    trainer_mod._vocab_rows = _vocab_rows

    # 3. the same for a saved segment RM loaded as a frozen token-reward source (ASR-DPO segment_rm, RS, GRPO)
    from segrl.rm.model import SegmentRewardModel

    real_from_pretrained = SegmentRewardModel.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        with full_weights():
            return real_from_pretrained(cls, *args, **kwargs)

    SegmentRewardModel.from_pretrained = classmethod(from_pretrained)


def main(argv=None) -> int:
    global DEEPSPEED
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="shared work directory (models live in WORK/models)")
    parser.add_argument("--out", required=True, help="where this run writes <case>.json / <case>.pt")
    parser.add_argument("--cases", required=True, help=f"comma-separated, from {sorted(CASES)}")
    parser.add_argument("--prepare", action="store_true", help="build the models first (single-process runs only)")
    parser.add_argument("--deepspeed", default=None, help="DeepSpeed JSON config passed to the TRL trainers")
    opts = parser.parse_args(argv)
    work, out = Path(opts.work), Path(opts.out)
    DEEPSPEED = opts.deepspeed
    if opts.prepare:
        if ENV["world"] != 1:
            raise SystemExit("--prepare only in a single-process run (it writes the shared model files)")
        prepare(work)
    if not (models_dir(work) / "done").exists():
        raise SystemExit(f"{models_dir(work)} has no models: run once with --prepare in a single process")
    apply_mutations(os.environ.get("SEGRL_DP_MUTATE", ""))
    names = [c for c in opts.cases.split(",") if c]
    for name in names:
        if name not in CASES:
            raise SystemExit(f"unknown case {name!r}; known: {sorted(CASES)}")
    timings = {}
    for name in names:
        t0 = time.perf_counter()
        from transformers import set_seed

        set_seed(SEED)
        if DEEPSPEED:
            # each case is its own run: accelerate keeps one DeepSpeed plugin per process, and the next
            # case's (other batch sizes / accumulation) may only be set on a fresh AcceleratorState
            from accelerate.state import AcceleratorState

            AcceleratorState._reset_state()
        CASES[name](work, out, name)
        timings[name] = round(time.perf_counter() - t0, 2)
        if is_main():
            print(f"[dp_cases] world={ENV['world']} case={name} done in {timings[name]} s", flush=True)
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
        (out / "timings.json").write_text(json.dumps(timings))
    return 0


if __name__ == "__main__":
    from segrl.commands._common import release_process_group

    try:
        code = main()
    finally:
        release_process_group()  # a live Gloo group can abort a finished rank at exit (pytorch#190489)
    sys.exit(code)
