"""Dense-reward PPO with a critic, on accelerate (arXiv 2501.02790 §3; ASR-PPO from arXiv 2411.00809).

TRL 1.16 has no PPO trainer that accepts per-token rewards (``trl.experimental.ppo`` is gone and
only ever added a scalar at EOS), so this is a short loop in CleanRL's style: ``train()`` reads top
to bottom in the paper's order -- rollout, rewards, GAE, whitening, clipped updates -- and the
maths lives in :mod:`segrl.ops`. TRL/transformers utilities do the log-probs and entropies.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from trl.models import unwrap_model_for_generation
from trl.trainer.utils import disable_dropout_in_model, entropy_from_logits, selective_log_softmax

from segrl._trl_compat import check_trl_compat
from segrl import ops
from segrl._distributed import global_mask_options, sum_hook
from segrl.checkpoints import check_checkpoint, finalize_checkpoint, reading_checkpoint, resolve_checkpoint
from segrl.padding import pad_rows
from segrl.token_rewards import StepBoundaries

from .config import SegmentPPOConfig
from .engines import ModelUpdater, make_accelerator
from .rewards import SegmentRewardSource


check_trl_compat("ppo")  # fail at import if TRL changed what this module overrides or calls


def forward_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits (or per-position values) for left-padded prompts + right-padded responses."""
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False).logits


def response_mask_from(responses: torch.Tensor, eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid response tokens: up to and including the first EOS; no EOS means truncated.

    Returns ``(mask (B, T) bool, truncated (B,) bool)``. A truncated row keeps all its tokens and its
    last one plays the EOS role in segmentation (docs/method.md#segment-rm), as upstream OpenRLHF does.
    """
    is_eos = responses == eos_token_id
    after_eos = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
    # generate() pads rows after their EOS; a pad id sampled before EOS is an ordinary token
    return ~after_eos, ~is_eos.any(dim=1)


def eval_batches(n_prompts: int, world: int, rank: int, batch_size: int) -> list[list[int]]:
    """This process's held-out prompt indices (every ``world``-th from ``rank``), in batches of ``batch_size``.

    Every process gets the same number of batches -- a process with fewer prompts gets empty ones
    at the end -- because under DeepSpeed ZeRO-3 each generation and each forward of a partitioned
    model is a collective that every rank must join.
    """
    mine = list(range(rank, n_prompts, world))
    per_rank = math.ceil(n_prompts / world)
    return [mine[start : start + batch_size] for start in range(0, max(per_rank, 1), batch_size)]


class PPOCallback:
    """Hooks into :meth:`SegmentPPOTrainer.train` (subclass and override what you need).

    ``on_iteration_end(trainer, metrics)`` runs after every rollout-and-update iteration, with
    ``trainer.iteration`` already advanced and the iteration's metrics (logged or not).
    """

    def on_iteration_end(self, trainer: "SegmentPPOTrainer", metrics: dict[str, float]) -> None:
        pass

    def on_evaluate(self, trainer: "SegmentPPOTrainer", metrics: dict[str, float]) -> None:
        """After each evaluation on the held-out prompts (``eval_steps``), with its ``eval_*`` metrics."""


class SegmentPPOTrainer:
    """PPO over dense segment rewards: bandit / token / segment arms from one code path, optional ASR mask.

    Args:
        args: :class:`SegmentPPOConfig`.
        policy: causal LM to train.
        ref_model: frozen reference causal LM (KL term and entropy segmentation); ``None`` when
            ``policy`` is a PEFT model: the reference is then the adapter-disabled policy (as in TRL).
        critic: a model whose ``.logits`` has shape (B, L, 1), e.g. ``AutoModelForTokenClassification(num_labels=1)``.
        reward_source: :class:`SegmentRewardSource` (per-position scorer + threshold + normaliser).
        tokenizer: shared by all models.
        prompts: prompt strings, or conversations (lists of messages) rendered with the chat template.
        callbacks: :class:`PPOCallback` objects; each hook is called on every process.
        eval_prompts: held-out prompts (same forms as ``prompts``) evaluated every ``args.eval_steps``
            iterations with greedy decoding.
    """

    def __init__(self, args: SegmentPPOConfig, *, policy, ref_model, critic, reward_source: SegmentRewardSource,
                 tokenizer, prompts, accelerator: Accelerator | None = None, callbacks=None, eval_prompts=None):
        self.args = args
        self.callbacks = list(callbacks or [])
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            raise ValueError("`tokenizer` has no pad token; set tokenizer.pad_token before training")
        vocab = len(tokenizer)
        self.is_peft = hasattr(policy, "disable_adapter") and hasattr(policy, "peft_config")
        if ref_model is None and not self.is_peft:
            raise ValueError("`ref_model` is required unless `policy` is a PEFT model (whose adapter-disabled base "
                             "is then the reference)")
        for name, model in (("policy", policy), ("ref_model", ref_model)):
            if model is not None and model.get_input_embeddings().num_embeddings < vocab:
                raise ValueError(f"`{name}` has fewer embeddings than the tokenizer has tokens ({vocab}): tokenizer mismatch")
        self.accelerator = accelerator or make_accelerator(args)
        set_seed(args.seed)
        self.prompt_ids = self._tokenize_prompts(prompts)
        self.eval_prompt_ids = self._tokenize_prompts(eval_prompts, "eval_prompts") if eval_prompts is not None else None
        if args.eval_steps and self.eval_prompt_ids is None:
            raise ValueError("`eval_steps` is set but there are no held-out prompts: pass `eval_prompts` "
                             "(CLI: `eval_dataset_name` or `eval_split`)")
        #: Rollout-and-update iterations of :meth:`train` (``num_iterations``, else from ``total_episodes`` /
        #: ``num_train_epochs`` as TRL counts them: prompts over all processes).
        self.num_iterations = self._count_iterations(len(self.prompt_ids))
        # Dropout would make the PPO ratio compare two different networks (TRL and OpenRLHF disable it too);
        # transformers' token-classification heads default to dropout 0.1.
        for model in (policy, ref_model, critic):
            if model is not None:
                disable_dropout_in_model(model)
        if args.gradient_checkpointing:
            for model in (policy, critic):
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        trainable_p = [p for p in policy.parameters() if p.requires_grad]
        opt_p = torch.optim.AdamW(trainable_p, lr=args.learning_rate, betas=args.adam_betas, weight_decay=0.0)
        opt_c = torch.optim.AdamW(critic.parameters(), lr=args.critic_learning_rate, betas=args.adam_betas, weight_decay=0.0)
        # one prepare per trained model: under DeepSpeed each becomes its own engine (segrl.ppo.engines)
        self.policy, self.opt_policy = self.accelerator.prepare(policy, opt_p)
        self.critic, self.opt_critic = self.accelerator.prepare(critic, opt_c)
        self.ref_model = None if ref_model is None else ref_model.to(self.accelerator.device).eval().requires_grad_(False)
        self.scheduler_policy, self.scheduler_critic = self._make_schedulers(opt_p, opt_c)
        self.policy_updater = ModelUpdater(self.accelerator, self.policy, self.opt_policy, self.scheduler_policy,
                                           args.max_grad_norm)
        self.critic_updater = ModelUpdater(self.accelerator, self.critic, self.opt_critic, self.scheduler_critic,
                                           args.max_grad_norm)
        for scheduler in (self.scheduler_policy, self.scheduler_critic):
            # saved and restored by save_state / load_state; not prepared, because accelerate's wrapper steps a
            # scheduler once per process per call, which would make the schedule depend on the world size
            self.accelerator.register_for_checkpointing(scheduler)
        #: Seconds of the last iteration's phases: generation, scoring forwards (policy, reference, critic, RM)
        #: and the PPO update; logged as ``time_rollout_s``, ``time_scoring_s``, ``time_update_s``.
        self.timings: dict[str, float] = {}
        self.reward_source = reward_source
        self.step_boundaries = StepBoundaries(tokenizer, args.step_boundary_chars)  # mask_type="stepwise"
        self.iteration = 0
        self.history: list[dict] = []
        #: The hysteresis half-width of the last rollout's ASR mask (``asr_delta`` resolved), logged as `asr/delta`.
        self.asr_delta: float | None = None

    # ------------------------------------------------------------------ set-up
    def _count_iterations(self, n_prompts: int) -> int:
        args = self.args
        if args.num_iterations is not None:
            return args.num_iterations
        per_iteration = args.rollout_batch_size * self.accelerator.num_processes
        episodes = args.total_episodes if args.total_episodes is not None else math.ceil(args.num_train_epochs * n_prompts)
        return max(1, math.ceil(episodes / per_iteration))

    @property
    def optimizer_steps_per_iteration(self) -> int:
        return self.args.ppo_epochs * (self.args.rollout_batch_size // self.args.mini_batch_size)

    def _make_schedulers(self, *optimizers):
        from transformers import get_scheduler

        args = self.args
        total = self.num_iterations * self.optimizer_steps_per_iteration
        warmup = args.warmup_steps if args.warmup_steps > 0 else math.ceil(args.warmup_ratio * total)
        return tuple(get_scheduler(args.lr_scheduler_type, optimizer=opt, num_warmup_steps=warmup,
                                   num_training_steps=total)
                     for opt in optimizers)

    @contextmanager
    def _reference(self):
        """The reference model: ``ref_model``, or the PEFT policy with its adapter disabled."""
        if self.ref_model is not None:
            yield self.ref_model
            return
        policy = self.accelerator.unwrap_model(self.policy)
        with policy.disable_adapter():
            yield policy

    # ------------------------------------------------------------------ data
    def _tokenize_prompts(self, prompts, name: str = "prompts") -> list[list[int]]:
        if len(prompts) == 0:
            raise ValueError(f"`{name}` is empty")
        ids = []
        for i, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                row = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            else:
                if getattr(self.tokenizer, "chat_template", None) is None:
                    raise ValueError(f"`{name}[{i}]` is a conversation but the tokenizer has no chat template")
                # transformers 5 returns a BatchEncoding (a Mapping, not a dict) for tokenize=True
                row = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                         return_dict=True)["input_ids"]
                row = [int(t) for t in row]
            if not row:
                raise ValueError(f"`{name}[{i}]` is empty after tokenisation")
            ids.append(row[-self.args.max_prompt_length:])
        return ids

    def _prompt_batch(self, iteration: int) -> list[list[int]]:
        """Prompts for an iteration: a function of (seed, iteration, rank) only, so a resumed run sees the same ones."""
        per_step = self.args.rollout_batch_size * self.accelerator.num_processes
        n = len(self.prompt_ids)
        start = iteration * per_step + self.accelerator.process_index * self.args.rollout_batch_size
        out = []
        for k in range(start, start + self.args.rollout_batch_size):
            epoch, pos = divmod(k, n)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.args.seed + epoch))
            out.append(self.prompt_ids[int(order[pos])])
        return out

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_rows(rows, self.tokenizer.pad_token_id, side="left", device=self.accelerator.device)

    # ------------------------------------------------------------------ rollout
    def _logprobs(self, model, query_responses, attention_mask, context_length, responses, *, with_entropy=False):
        logits = forward_logits(model, query_responses, attention_mask)[:, context_length - 1 : -1].float()
        logprobs = selective_log_softmax(logits / self.args.temperature, responses)
        # segmentation entropy is the reference's own distribution (temperature 1), in fp32 over the full vocab
        return (logprobs, entropy_from_logits(logits)) if with_entropy else logprobs

    def _generate(self, prompt_rows: list[list[int]], *, greedy: bool = False):
        """Batched generation with the KV cache. Returns ``(prompts, prompt_mask, responses, response_mask,
        truncated, logprobs)``: the policy's log-probs of the sampled tokens, read from the logits
        generate computed anyway (as TRL's PPO does), so the rollout needs no second policy forward.
        Shapes: prompts (B, P); responses, response_mask, logprobs (B, T); truncated (B,)."""
        args, tok = self.args, self.tokenizer
        prompts, prompt_mask = self._left_pad(prompt_rows)
        context_length = prompts.shape[1]
        sampling = {"do_sample": False} if greedy else {
            "do_sample": True, "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
        # ZeRO-3: the policy's weights are gathered once for the whole generation, so no rank waits in a
        # per-token all-gather for another that has already stopped
        with unwrap_model_for_generation(self.policy, self.accelerator) as policy, self.accelerator.autocast():
            out = policy.generate(
                input_ids=prompts, attention_mask=prompt_mask, max_new_tokens=args.max_new_tokens,
                min_new_tokens=args.min_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                use_cache=True, return_dict_in_generate=True, output_logits=True, **sampling,
            )
        sequences = out.sequences if hasattr(out, "sequences") else out  # a replaced generate may return ids only
        responses = sequences[:, context_length:]
        response_mask, truncated = response_mask_from(responses, tok.eos_token_id)
        if responses.shape[1] == 0 or not bool(response_mask.any()):
            raise RuntimeError("generation produced no response tokens; check max_new_tokens and the EOS token")
        width = int(response_mask.sum(dim=1).max())
        responses, response_mask = responses[:, :width], response_mask[:, :width]
        responses = responses.masked_fill(~response_mask, tok.pad_token_id)
        if getattr(out, "logits", None) is not None:
            logits = torch.stack(out.logits[:width], dim=1).float()  # raw logits, before any sampling processor
            logprobs = selective_log_softmax(logits / args.temperature, responses)
        else:  # no logits came back: one policy forward
            with self.accelerator.autocast():
                logprobs = self._logprobs(self.policy, torch.cat([prompts, responses], dim=1),
                                          torch.cat([prompt_mask.bool(), response_mask], dim=1).long(),
                                          context_length, responses)
        return prompts, prompt_mask, responses, response_mask, truncated, logprobs

    @torch.no_grad()
    def rollout(self, prompt_rows: list[list[int]]) -> dict[str, torch.Tensor]:
        """Generate, score and compute everything the update needs. All (B, T) over response tokens."""
        args = self.args
        self.policy.eval()
        self.critic.eval()
        start = time.perf_counter()
        prompts, prompt_mask, responses, response_mask, truncated, logprobs = self._generate(prompt_rows)
        context_length = prompts.shape[1]
        query_responses = torch.cat([prompts, responses], dim=1)
        attention_mask = torch.cat([prompt_mask.bool(), response_mask], dim=1).long()
        scoring = time.perf_counter()
        self.timings["rollout"] = scoring - start

        with self.accelerator.autocast():
            with self._reference() as reference:
                ref_logprobs, ref_entropy = self._logprobs(
                    reference, query_responses, attention_mask, context_length, responses, with_entropy=True
                )
            values = forward_logits(self.critic, query_responses, attention_mask)[:, context_length - 1 : -1, 0].float()
            dense = self.reward_source(query_responses, attention_mask, context_length, response_mask, ref_entropy)
        logprobs = logprobs.masked_fill(~response_mask, 0.0)

        token_rewards = dense.token_rewards
        if args.missing_eos_penalty is not None:
            last = (response_mask.sum(dim=1) - 1).clamp(min=0)
            penalty = torch.zeros_like(token_rewards).scatter_(
                1, last.unsqueeze(1), (truncated.float() * args.missing_eos_penalty).unsqueeze(1)
            )
            token_rewards = token_rewards - penalty
        rewards, kl = ops.shaped_rewards(
            token_rewards, logprobs, ref_logprobs, response_mask, kl_coef=args.kl_coef, clamp=args.reward_clamp
        )
        advantages, returns = ops.gae_advantages(rewards, values, response_mask, gamma=args.gamma, lam=args.lam)
        advantages = self._global_whiten(advantages, response_mask)

        loss_mask, fallbacks = response_mask, torch.zeros((), device=rewards.device)
        if args.mask_type != "none":
            signal = token_rewards if args.asr_signal == "token_rewards" else values
            kept = self.keep_mask(dense.seq_rewards, signal, response_mask, responses)
            loss_mask, fallbacks = kept.keep, kept.fallback.sum().float()
            self.asr_delta = kept.delta  # the same on every process; logged as asr/delta
        self.timings["scoring"] = time.perf_counter() - scoring
        return {
            "query_responses": query_responses, "attention_mask": attention_mask, "responses": responses,
            "context_length": torch.tensor(context_length), "response_mask": response_mask, "loss_mask": loss_mask,
            "logprobs": logprobs, "ref_logprobs": ref_logprobs, "values": values, "advantages": advantages,
            "returns": returns, "rewards": rewards, "kl": kl, "seq_rewards": dense.seq_rewards,
            "segment_ids": dense.segment_ids, "token_rewards": token_rewards, "truncated": truncated,
            "fallbacks": fallbacks,
        }

    def keep_mask(self, seq_rewards: torch.Tensor, signal: torch.Tensor, response_mask: torch.Tensor,
                  responses: torch.Tensor) -> ops.KeepMaskResult:
        """The policy-loss keep mask of a rollout batch (``mask_type``; docs/method.md#asr-mask).

        Sequence sign ``+1`` where the sequence reward is at least the batch mean of the rollout of
        *every* process (ties ``+1``, docs/method.md#sequence-sign); batch-wide baselines are
        resolved over every process too, and ``asr_delta="auto"`` over the valid tokens of the whole
        rollout batch of all processes (:func:`segrl._distributed.global_auto_delta`), before any update, so the mask
        depends neither on the number of processes nor on ``mini_batch_size``.

        Shapes: ``seq_rewards`` (B,); ``signal``, ``response_mask``, ``responses`` (B, T).
        """
        args = self.args
        seq_sign = ops.sequence_sign(seq_rewards, self._global_mean(seq_rewards))
        options = global_mask_options(self.accelerator, args.mask_kwargs(), signal, response_mask)
        is_boundary = None
        if options["kind"] == "stepwise":
            is_boundary = self.step_boundaries(responses, response_mask)
        return ops.keep_mask(signal, response_mask, seq_sign, is_boundary=is_boundary, **options)

    def _global_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of every entry of ``x`` over the batches of all processes (the moments hook). Shape: any -> ()."""
        return ops.masked_mean(x, all_reduce=sum_hook(self.accelerator))

    def _global_whiten(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Whiten over the valid tokens of the whole rollout batch, across all processes. Shape: (B, T)."""
        return ops.masked_whiten(x, mask, all_reduce=sum_hook(self.accelerator))

    # ------------------------------------------------------------------ update
    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """PPO epochs over the rollout in mini-batches: clipped surrogate + clipped value loss."""
        args, acc = self.args, self.accelerator
        context_length = int(batch["context_length"])
        self.policy.train()
        self.critic.train()
        stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "clipfrac": [], "approx_kl": [],
                                         "policy_grad_norm": [], "critic_grad_norm": []}
        n = batch["responses"].shape[0]
        for epoch in range(args.ppo_epochs):
            order = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed * 1000 + self.iteration * 10 + epoch))
            for start in range(0, n, args.mini_batch_size):
                idx = order[start : start + args.mini_batch_size].to(acc.device)
                mb = {k: v[idx] for k, v in batch.items() if v.dim() > 0 and v.shape[0] == n}
                # Token means over the *global* mini-batch: DDP averages gradients over ranks, so each rank
                # divides its token sum by (global token count / world size). Micro-batches (gradient
                # accumulation) share the mini-batch's denominator, so their losses sum to its loss.
                policy_den, value_den = self._per_rank_denominators(mb["loss_mask"], mb["response_mask"])
                micro = args.mini_batch_size // args.gradient_accumulation_steps
                parts = [{k: v[i : i + micro] for k, v in mb.items()} for i in range(0, len(idx), micro)]
                policy_loss, value_loss = torch.zeros((), device=acc.device), torch.zeros((), device=acc.device)
                kept = mb["loss_mask"].sum().clamp(min=1).float()
                clipfrac, approx_kl = torch.zeros((), device=acc.device), torch.zeros((), device=acc.device)
                self.policy_updater.zero_grad()
                for j, part in enumerate(parts):
                    last = j == len(parts) - 1
                    with self.policy_updater.accumulating(last), acc.autocast():
                        logprobs = self._logprobs(self.policy, part["query_responses"], part["attention_mask"],
                                                  context_length, part["responses"])
                        loss, pstats = ops.ppo_policy_loss(
                            logprobs, part["logprobs"], part["advantages"], part["loss_mask"], clip=args.cliprange,
                            denominator=policy_den,
                        )
                        self.policy_updater.backward(loss, last=last)
                    policy_loss += loss.detach()
                    weight = part["loss_mask"].sum().float() / kept  # the micro-batch's share of the kept tokens
                    clipfrac += pstats["clipfrac"] * weight
                    approx_kl += pstats["approx_kl"] * weight
                stats["policy_grad_norm"].append(self.policy_updater.step())

                self.critic_updater.zero_grad()
                for j, part in enumerate(parts):
                    last = j == len(parts) - 1
                    with self.critic_updater.accumulating(last), acc.autocast():
                        values = forward_logits(self.critic, part["query_responses"], part["attention_mask"])
                        values = values[:, context_length - 1 : -1, 0].float()
                        loss = ops.ppo_value_loss(
                            values, part["values"], part["returns"], part["response_mask"], clip=args.cliprange_value,
                            denominator=value_den,
                        )
                        self.critic_updater.backward(args.vf_coef * loss, last=last)
                    value_loss += loss.detach()
                stats["critic_grad_norm"].append(self.critic_updater.step())

                # Each rank's loss is its share of the global token mean: the logged value is their mean.
                logged = acc.reduce(torch.stack([policy_loss, value_loss, clipfrac, approx_kl]).float(), "mean")
                for key, value in zip(("policy_loss", "value_loss", "clipfrac", "approx_kl"), logged.tolist()):
                    stats[key].append(value)
        return {k: sum(v) / len(v) for k, v in stats.items()}

    def _per_rank_denominators(self, loss_mask: torch.Tensor, response_mask: torch.Tensor):
        counts = torch.stack([loss_mask.sum(), response_mask.sum()]).float()
        world = self.accelerator.num_processes
        counts = self.accelerator.reduce(counts, "sum") / world
        return counts[0].clamp(min=1.0 / world), counts[1].clamp(min=1.0 / world)

    # ------------------------------------------------------------------ metrics
    def _rollout_metrics(self, b: dict[str, torch.Tensor]) -> dict[str, float]:
        """Rollout statistics over the global batch: sums are reduced across ranks, then divided."""
        mask, seg = b["response_mask"], b["segment_ids"]
        n_seg = ops.segment_counts(seg).float()
        sums = {
            "reward": b["seq_rewards"].sum(),
            "token_reward_sum": b["token_rewards"].sum(),
            "kl": b["kl"].sum(),
            "response_length": mask.sum(),
            "truncated_fraction": b["truncated"].sum(),
            "segments_per_response": n_seg.sum(),
            "segment_tokens": (seg >= 0).sum(),
            "kept_tokens": b["loss_mask"].sum(),
            "asr_fallbacks": b["fallbacks"],
            "rows": torch.tensor(mask.shape[0], device=mask.device),
        }
        t = dict(zip(sums, self.accelerator.reduce(torch.stack([v.float() for v in sums.values()]), "sum").tolist()))
        rows, tokens = max(t["rows"], 1.0), max(t["response_length"], 1.0)
        return {
            "reward": t["reward"] / rows,
            "token_reward_sum": t["token_reward_sum"] / rows,
            "kl": t["kl"] / rows,
            "response_length": t["response_length"] / rows,
            "truncated_fraction": t["truncated_fraction"] / rows,
            # the segment RM's segments (README "Logged metrics": rm/* and asr/* as in every trainer)
            "rm/segments_per_response": t["segments_per_response"] / rows,
            "rm/mean_segment_length": t["segment_tokens"] / max(t["segments_per_response"], 1.0),
            "asr/kept_token_fraction": t["kept_tokens"] / tokens,
            "asr/fallbacks": t["asr_fallbacks"],
            **({"asr/delta": self.asr_delta} if self.args.mask_type == "asr" else {}),
        }

    # ------------------------------------------------------------------ loop
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Greedy responses to the held-out prompts: mean sequence reward, KL to the reference (summed
        over each response's tokens) and response length, over the prompts of every process (each
        process takes every ``num_processes``-th prompt). Keys ``eval_reward``, ``eval_kl``,
        ``eval_response_length``."""
        if self.eval_prompt_ids is None:
            raise ValueError("no held-out prompts: pass `eval_prompts` to the trainer")
        acc, args = self.accelerator, self.args
        was_training = self.policy.training
        self.policy.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=acc.device)  # reward, kl, length, rows
        for batch in eval_batches(len(self.eval_prompt_ids), acc.num_processes, acc.process_index,
                                  args.rollout_batch_size):
            # an empty batch still runs (on the first prompt, weight 0) so ZeRO-3's collectives stay in step
            weight = 1.0 if batch else 0.0
            prompts, prompt_mask, responses, mask, _, logprobs = self._generate(
                [self.eval_prompt_ids[i] for i in batch or [0]], greedy=True)
            ctx = prompts.shape[1]
            query_responses = torch.cat([prompts, responses], dim=1)
            attention_mask = torch.cat([prompt_mask.bool(), mask], dim=1).long()
            with acc.autocast(), self._reference() as reference:
                ref_logprobs, ref_entropy = self._logprobs(reference, query_responses, attention_mask, ctx, responses,
                                                           with_entropy=True)
            with acc.autocast():
                dense = self.reward_source(query_responses, attention_mask, ctx, mask, ref_entropy)
            kl = torch.where(mask, logprobs - ref_logprobs, 0.0).sum(dim=1)
            sums += weight * torch.stack([dense.seq_rewards.sum(), kl.sum(), mask.sum(), torch.tensor(mask.shape[0])]
                                         ).to(sums)
        sums = acc.reduce(sums, "sum")
        n = max(float(sums[3]), 1.0)
        self.policy.train(was_training)
        return {"eval_reward": float(sums[0]) / n, "eval_kl": float(sums[1]) / n,
                "eval_response_length": float(sums[2]) / n}

    def train(self) -> list[dict]:
        """Run :attr:`num_iterations` rollout-and-update iterations, resuming first if asked."""
        args, acc = self.args, self.accelerator
        if args.resume_from_checkpoint:
            self.load_checkpoint(args.resume_from_checkpoint)
        if args.report_to != "none":
            acc.init_trackers("segrl-ppo", config={k: str(v) for k, v in vars(args).items()})
        columns = (TextColumn("[bold]PPO"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, disable=not acc.is_main_process) as progress:
            task = progress.add_task("", total=self.num_iterations, completed=self.iteration)
            while self.iteration < self.num_iterations:
                batch = self.rollout(self._prompt_batch(self.iteration))
                metrics = self._rollout_metrics(batch)
                metrics["learning_rate"] = self.scheduler_policy.get_last_lr()[0]
                start = time.perf_counter()
                metrics.update(self.update(batch))
                self.timings["update"] = time.perf_counter() - start
                metrics.update({f"time_{k}_s": self.timings[k] for k in ("rollout", "scoring", "update")})
                self.iteration += 1
                metrics["iteration"] = self.iteration
                metrics["episode"] = self.iteration * args.rollout_batch_size * acc.num_processes
                if args.eval_steps and self.iteration % args.eval_steps == 0:
                    start = time.perf_counter()
                    eval_metrics = self.evaluate()
                    metrics.update(eval_metrics)
                    metrics["time_eval_s"] = self.timings["eval"] = time.perf_counter() - start
                    for callback in self.callbacks:
                        callback.on_evaluate(self, eval_metrics)
                self.history.append(metrics)
                if self.iteration % args.logging_steps == 0:
                    self._log(metrics)
                for callback in self.callbacks:
                    callback.on_iteration_end(self, metrics)
                progress.update(task, advance=1, description=f"reward {metrics['reward']:+.3f} kl {metrics['kl']:.3f}")
                if args.save_steps and self.iteration % args.save_steps == 0:
                    self.save_checkpoint()
        self.save_model(args.output_dir)
        if args.report_to != "none":
            acc.end_training()
        return self.history

    def _log(self, metrics: dict[str, float]) -> None:
        if self.args.report_to != "none":
            self.accelerator.log(metrics, step=self.iteration)
        if self.accelerator.is_main_process:
            Path(self.args.output_dir).mkdir(parents=True, exist_ok=True)
            with open(Path(self.args.output_dir) / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Models, optimisers and RNG states via accelerate, plus the iteration; written atomically."""
        final = Path(self.args.output_dir) / f"checkpoint-{self.iteration}"
        tmp = final.with_name(final.name + ".tmp")
        self.accelerator.save_state(str(tmp))
        self.accelerator.wait_for_everyone()  # every rank's RNG state is written
        if self.accelerator.is_main_process:
            (tmp / "segrl_state.json").write_text(json.dumps({"iteration": self.iteration, "history": self.history}))
            finalize_checkpoint(tmp, final)  # marked complete, then renamed: a kill mid-save leaves only a .tmp
        self.accelerator.wait_for_everyone()
        return final

    def load_checkpoint(self, path: str) -> None:
        """Resume from ``path`` (``latest``: the newest complete checkpoint) after
        :func:`~segrl.checkpoints.check_checkpoint`."""
        path = resolve_checkpoint(path, self.args.output_dir)
        check_checkpoint(path, layout="accelerate", resume_partial=self.args.resume_partial,
                         world_size=self.accelerator.num_processes, process_index=self.accelerator.process_index)
        state_file = Path(path) / "segrl_state.json"
        with reading_checkpoint(path, "models, optimizer or RNG state (accelerate save_state files)"):
            self.accelerator.load_state(path)
        state = json.loads(state_file.read_text())
        self.iteration, self.history = state["iteration"], state["history"]

    def save_model(self, output_dir: str) -> None:
        self.accelerator.wait_for_everyone()
        acc = self.accelerator
        # every process takes part: under ZeRO-3 this gathers the partitioned weights
        policy_state, critic_state = acc.get_state_dict(self.policy), acc.get_state_dict(self.critic)
        if acc.is_main_process:
            acc.unwrap_model(self.policy).save_pretrained(output_dir, state_dict=policy_state)
            self.tokenizer.save_pretrained(output_dir)
            acc.unwrap_model(self.critic).save_pretrained(Path(output_dir) / "critic", state_dict=critic_state)
