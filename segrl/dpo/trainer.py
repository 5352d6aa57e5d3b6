"""ASR-DPO: TRL's DPOTrainer with the Adaptive Segment-level Reward mask (arXiv 2411.00809, docs/method.md#asr-mask, #dpo).

How the mask reaches TRL's loss (TRL 1.16): ``DPOTrainer._compute_loss`` sets
``labels = input_ids`` with ``-100`` wherever ``completion_mask == 0``, and its fused LM head returns
a log-prob of exactly 0 (and no gradient) at ``-100`` labels, for the policy and for the on-the-fly
reference alike. So the override below only ANDs the ASR keep mask into ``completion_mask`` and calls
``super()._compute_loss``: every loss type, ``ld_alpha``, WPO weights and the per-length
normalisations of ``ipo`` / ``sigmoid_norm`` / ``sft`` then see the masked tokens and their count,
and TRL's own metrics are computed over kept tokens.

With ``precompute_ref_log_probs=True`` TRL stores one reference *sum* per response, which cannot be
re-masked per batch (the batch-mean baseline changes with the batch). This trainer stores the
reference log-prob of every completion token instead (list columns ``ref_chosen_token_logps`` /
``ref_rejected_token_logps``) and forms the masked sums in ``_compute_loss``.
"""

from __future__ import annotations

import contextlib
import os
import textwrap

import torch
from accelerate.utils import broadcast_object_list, is_peft_model, tqdm
from datasets import Dataset, IterableDataset, concatenate_datasets
from datasets.fingerprint import Hasher
from torch.utils.data import DataLoader
from trl import DPOTrainer
from trl.models import prepare_deepspeed
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import get_config_model_id, use_adapter

from segrl._trl_compat import check_trl_compat
from segrl.checkpoints import CompleteCheckpointsMixin
from segrl import ops
from segrl._distributed import global_mask_options
from segrl.dpo.collator import PER_TOKEN_COLUMNS, DataCollatorForASRPreference
from segrl.dpo.config import ASRDPOConfig
from segrl.dpo.layout import from_input_layout, from_logp_layout, response_span, to_input_layout
from segrl.padding import pad_rows
from segrl.rewards.segment_rm import SegmentRMRewards
from segrl.token_rewards import (
    ImplicitTokenRewards,
    add_token_reward_columns,
    align_token_rewards,
    StepBoundaries,
)

check_trl_compat("dpo")  # fail at import if TRL changed what this module overrides or calls


__all__ = ["ASRDPOTrainer"]

#: Batch keys TRL's `_compute_loss` must never forward to the model (it forwards every other key).
_EXTRA_BATCH_KEYS = tuple(key for *_, key in PER_TOKEN_COLUMNS)
_TRL_NON_MODEL_KEYS = ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")
_REWARD_COLUMNS = ("chosen_token_rewards", "rejected_token_rewards")
_REF_TOKEN_COLUMNS = ("ref_chosen_token_logps", "ref_rejected_token_logps")
#: ``asr_delta="auto"`` is resolved once over a seeded sample of at most this many training tokens.
DELTA_SAMPLE_TOKENS = 100_000


class ASRDPOTrainer(CompleteCheckpointsMixin, DPOTrainer):
    """TRL's [`~trl.DPOTrainer`] with segment-level credit assignment (ASR, arXiv 2411.00809).

    Drop-in: change the import and pass an [`ASRDPOConfig`]. For every pair, the chosen response
    keeps the tokens of its above-baseline segments and the rejected response those of its
    below-baseline segments; policy and reference log-probs are summed over the same kept tokens
    and the usual DPO loss (any `loss_type`) is applied. `mask_type="none"` is exactly `DPOTrainer`.

    Token rewards come from `args.token_reward_source`: dataset columns `chosen_token_rewards` /
    `rejected_token_rewards` (one float per completion token as TRL tokenises it, see
    [`segrl.token_rewards.align_token_rewards`]), a segment reward model, or the implicit reward of a
    model pair; the model sources are run once, at dataset preparation, on TRL's own token ids.

    Args:
        model, ref_model, args, data_collator, train_dataset, eval_dataset, processing_class,
        compute_metrics, callbacks, optimizers, quantization_config, peft_config:
            As for [`~trl.DPOTrainer`]; `args` must be an [`ASRDPOConfig`]. A custom `data_collator`
            must emit TRL's preference layout; it is wrapped to add the per-token columns.
        token_reward_model (*optional*):
            An already-loaded segment reward model (anything with `score_token_ids(prompt_ids,
            response_ids, mode=, normalize=, batch_size=)` and a `tokenizer`); overrides
            `args.reward_model_path`.
        implicit_models (`tuple`, *optional*):
            `(policy, ref_model)` modules (or paths) for `token_reward_source="implicit"`; override
            `args.implicit_policy` / `args.implicit_ref`.

    Logged metrics (besides TRL's; TRL's `logits/*`, `entropy`, `mean_token_accuracy` are over kept
    tokens): `asr/kept_token_fraction_chosen`, `asr/kept_token_fraction_rejected`,
    `asr/segments_per_response`, `asr/mean_segment_length` (not for `"tokenwise"`, which has no
    segments), `asr/fallbacks` (responses per step whose mask was empty), `asr/baseline` and, for
    `mask_type="asr"`, `asr/delta` (the half-width, resolved once before training when `"auto"`).
    """

    _tag_names = ["trl", "dpo", "segrl", "asr-dpo"]
    _name = "ASR-DPO"
    _paper = {
        "title": "Adaptive Segment-level Reward: Bridging the Gap Between Action and Reward Space in Alignment",
        "id": "2411.00809",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{li2024adaptive,
                title        = {{Adaptive Segment-level Reward: Bridging the Gap Between Action and Reward
                                 Space in Alignment}},
                author       = {Yanshi Li and Shaopan Xiong and others},
                year         = 2024,
                eprint       = {arXiv:2411.00809},
            }"""),
    }

    def __init__(self, model, ref_model=None, args: ASRDPOConfig | None = None, data_collator=None,
                 train_dataset=None, eval_dataset=None, processing_class=None, compute_metrics=None, callbacks=None,
                 optimizers=(None, None), quantization_config=None, peft_config=None, *, token_reward_model=None,
                 implicit_models=None):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = ASRDPOConfig(f"{model_name.split('/')[-1]}-ASR-DPO")
        elif not isinstance(args, ASRDPOConfig):
            raise TypeError(f"`args` must be an ASRDPOConfig (it carries the mask options), got {type(args).__name__}")
        # Set before super().__init__, which calls the overridden _prepare_dataset / _precompute_ref_logps.
        # The keyword arguments of segrl.ops.keep_mask; an "auto" delta is replaced by its value below.
        self._mask_options = args.mask_kwargs()
        self._needs_rewards = args.needs_token_rewards
        self._token_reward_model_arg = token_reward_model
        self._implicit_models_arg = implicit_models
        self._reward_source = None
        if implicit_models is not None and len(implicit_models) != 2:
            raise ValueError("`implicit_models` must be a (policy, ref_model) pair")
        if self._needs_rewards and isinstance(train_dataset, (Dataset, IterableDataset)):
            first = next(iter(train_dataset))
            if "image" in first or "images" in first:
                raise ValueError("ASR-DPO does not support vision-language preference data; use mask_type='none'")

        super().__init__(
            model, ref_model=ref_model, args=args, data_collator=data_collator, train_dataset=train_dataset,
            eval_dataset=eval_dataset, processing_class=processing_class, compute_metrics=compute_metrics,
            callbacks=callbacks, optimizers=optimizers, quantization_config=quantization_config,
            peft_config=peft_config,
        )
        self._asr_collator()
        self._step_boundaries = None
        if self._mask_options["kind"] == "stepwise":
            self._step_boundaries = StepBoundaries(self._tokenizer, args.step_boundary_chars)
        # TRL's `sft` term would see the masked completion_mask (the kept chosen tokens only); with a mask
        # it is taken out of TRL's loss list and added in `_compute_loss` over the full chosen response
        # (an NLL anchor on what the policy should produce, as in RPO; docs/method.md#dpo).
        self._sft_weight = 0.0
        if self._needs_rewards and "sft" in self.loss_types:
            pairs = list(zip(self.loss_types, self.loss_weights, strict=True))
            self._sft_weight = sum(w for t, w in pairs if t == "sft")
            self.loss_types = [t for t, _ in pairs if t != "sft"]
            self.loss_weights = [w for t, w in pairs if t != "sft"]
        #: The resolved hysteresis half-width (``None`` when the mask has no hysteresis), logged as `asr/delta`.
        self.asr_delta = None
        if self._mask_options["kind"] == "asr":
            self.asr_delta = self._resolve_asr_delta(train_dataset is not None)
            self._mask_options["delta"] = self.asr_delta
        if not args.token_reward_on_the_fly:
            # The model sources were only needed to write the columns; free them (rebuilt lazily
            # if `evaluate` is later handed a new dataset).
            self._reward_source = None

    # ------------------------------------------------------------------ data

    def _asr_collator(self) -> DataCollatorForASRPreference:
        """Wrap the preference collator (once) so batches carry the per-token columns."""
        if self._needs_rewards and not isinstance(self.data_collator, DataCollatorForASRPreference):
            self.data_collator = DataCollatorForASRPreference(self.data_collator, self.args.truncation_mode)
        return self.data_collator

    def _get_reward_source(self, args: ASRDPOConfig):
        """The model-based token-reward source, built on first use; ``None`` for dataset columns."""
        if self._reward_source is not None or args.token_reward_source == "columns":
            return self._reward_source
        if args.token_reward_source == "segment_rm":
            model = self._token_reward_model_arg
            model = args.reward_model_path if model is None else model
            if model is None:
                raise ValueError("token_reward_source='segment_rm' needs `reward_model_path` (a path in the config, "
                                 "or a SegmentRewardModel passed to the trainer as `token_reward_model=`)")
            self._reward_source = SegmentRMRewards(
                model, policy_tokenizer=self._tokenizer, mode=args.token_reward_mode,
                normalize=args.token_reward_normalize, batch_size=args.token_reward_batch_size, device=args.device,
            )
        else:
            pair = self._implicit_models_arg or (args.implicit_policy, args.implicit_ref)
            if any(m is None for m in pair):
                raise ValueError("token_reward_source='implicit' needs `implicit_policy` and `implicit_ref` (paths in "
                                 "the config, or `implicit_models=(policy, ref)` passed to the trainer)")
            self._reward_source = ImplicitTokenRewards(
                *pair, beta=args.implicit_beta, policy_tokenizer=self._tokenizer,
                batch_size=args.token_reward_batch_size, device=args.device,
            )
        return self._reward_source

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        # TRL tokenises first; token rewards are aligned to (or computed on) exactly its ids.
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if not self._needs_rewards:
            return dataset
        source = self._get_reward_source(args)
        if args.token_reward_source == "columns":
            return self._align_reward_columns(dataset, args, dataset_name)
        if args.token_reward_on_the_fly:
            return dataset
        return add_token_reward_columns(dataset, source, batch_size=max(64, args.token_reward_batch_size),
                                        name=dataset_name)

    def _align_reward_columns(self, dataset, args, dataset_name):
        first = next(iter(dataset))
        for column in _REWARD_COLUMNS:
            if column not in first:
                raise ValueError(
                    f"token_reward_source='columns' needs a `{column}` column in the {dataset_name} dataset (one float "
                    f"per completion token); it has {sorted(first)}"
                )
        eos = self._tokenizer.eos_token_id

        def align(example, index):
            return {
                f"{side}_token_rewards": align_token_rewards(
                    example[f"{side}_token_rewards"], example[f"{side}_ids"], eos_token_id=eos,
                    column=f"{side}_token_rewards", row=index,
                )
                for side in ("chosen", "rejected")
            }

        map_kwargs = {}
        if isinstance(dataset, Dataset):
            map_kwargs = {"num_proc": args.dataset_num_proc,
                          "desc": f"Aligning token rewards of {dataset_name} dataset"}
        return dataset.map(align, with_indices=True, **map_kwargs)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self._needs_rewards:
            extra = [c for c in _REWARD_COLUMNS + _REF_TOKEN_COLUMNS if c not in self._signature_columns]
            self._signature_columns = list(self._signature_columns) + extra

    # ------------------------------------------------------------------ reference log-probs

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        """Store the reference log-prob of every completion token (not TRL's per-response sum).

        Adds list columns ``ref_chosen_token_logps`` / ``ref_rejected_token_logps`` with one value per
        completion token kept by the collator's truncation. Cached like TRL's sums, keyed on the dataset
        and reference-model fingerprints.
        """
        if not self._needs_rewards:
            return super()._precompute_ref_logps(dataset, name, batch_size)
        if isinstance(dataset, IterableDataset):
            raise ValueError("`precompute_ref_log_probs=True` is not supported with IterableDataset. Use a map-style "
                             "Dataset or set `precompute_ref_log_probs=False`.")
        # The stored lists hold the tokens the collator keeps, so its truncation is part of the key.
        key = (dataset._fingerprint, self._precompute_model_hash, self.args.max_length, self.args.truncation_mode,
               "segrl-ref-token-logps-v1")
        fingerprint = [Hasher.hash(key)]
        broadcast_object_list(fingerprint, from_process=0)
        fingerprint = fingerprint[0]
        # An in-memory dataset would cache into a per-process temporary directory that other ranks
        # cannot read, so its columns are built in memory on every rank instead (each rank holds them all).
        file_backed = bool(dataset.cache_files)
        cache_file = dataset._get_cache_file_path(fingerprint) if file_backed else None
        if file_backed and os.path.exists(cache_file):
            return concatenate_datasets([dataset, Dataset.from_file(cache_file)], axis=1)

        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=self._asr_collator(),
                            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory,
                            shuffle=False)
        loader = self.accelerator.prepare(loader)
        if self.ref_model is None and self.is_deepspeed_enabled:
            # As in TRL: before `train`, DeepSpeed parameters need an inference engine to be placed / gathered.
            if self._precompute_engine is None:
                self._precompute_engine = prepare_deepspeed(self.model, self.accelerator)
            model = self._precompute_engine
        else:
            model = self.ref_model or self.model

        per_side = {"chosen": [], "rejected": []}
        for batch in tqdm(iterable=loader, desc=f"Computing reference token log probs for {name} dataset",
                          disable=bool(os.environ.get("TQDM_DISABLE", ""))):
            span = response_span(batch["completion_mask"])
            token_logps = from_logp_layout(self._reference_token_logps(model, batch), span)  # (2B, R)
            token_logps = self.accelerator.pad_across_processes(token_logps, dim=1)
            for side, values, lengths in zip(("chosen", "rejected"), token_logps.chunk(2), span.length.chunk(2)):
                values, lengths = self.accelerator.gather_for_metrics((values, lengths))
                per_side[side] += [v[:n].tolist() for v, n in zip(values.cpu(), lengths.tolist())]

        if not file_backed:
            columns = {f"ref_{side}_token_logps": per_side[side] for side in per_side}
            return concatenate_datasets([dataset, Dataset.from_dict(columns)], axis=1)
        if self.accelerator.is_main_process:
            def add_columns(_batch, indices):
                return {f"ref_{side}_token_logps": [per_side[side][i] for i in indices] for side in per_side}

            dataset.map(add_columns, with_indices=True, batched=True, remove_columns=dataset.column_names,
                        new_fingerprint=fingerprint, cache_file_name=cache_file,
                        desc=f"Caching reference token log probs for {name} dataset")
        self.accelerator.wait_for_everyone()
        return concatenate_datasets([dataset, Dataset.from_file(cache_file)], axis=1)

    def _reference_token_logps(self, model, inputs) -> torch.Tensor:
        """Reference log-probs of every completion token, in TRL's log-prob layout. Shape: (2B, L - 1).

        The same forward as TRL's `compute_ref_log_probs` (adapter-disabled PEFT model, no grad, fused
        LM head, 0 outside the completion), without the per-response sum.
        """
        skip = _TRL_NON_MODEL_KEYS + _EXTRA_BATCH_KEYS
        model_kwargs = {k: v for k, v in inputs.items() if k not in skip}
        model_kwargs["use_cache"] = False
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        adapter_context = contextlib.nullcontext()
        if self.ref_model is None and is_peft_model(self.model):
            unwrapped = self.accelerator.unwrap_model(self.model)
            adapter_context = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        with (torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
              adapter_context, self.accelerator.autocast()):
            log_probs = model(**model_kwargs, labels=labels, fused_lm_head=True).log_probs
        # Prompt-learning PEFT prepends virtual tokens; keep the positions of the real tokens.
        return log_probs[:, -(inputs["completion_mask"].shape[1] - 1):]

    def _masked_ref_sums(self, ref_token_logps: torch.Tensor, keep: torch.Tensor):
        """Per-response reference sums over kept tokens, as TRL's on-the-fly path forms them.

        Args:
            ref_token_logps: reference log-probs in the response layout. Shape: (2B, R).
            keep: the keep mask. Shape: (2B, R).

        Returns:
            ``(ref_chosen_logps, ref_rejected_logps)``, each of shape (B,).
        """
        ref = ref_token_logps.to(keep.device, torch.float32) * keep
        if self.ld_alpha is None:
            sums = ref.sum(dim=1)
        else:
            # LD-DPO over kept tokens: the first `shared` kept tokens count fully, the rest by ld_alpha
            # (mirrors TRL's positions over its masked shift_completion_mask).
            position = keep.long().cumsum(dim=1)
            chosen_len, rejected_len = keep.sum(dim=1).chunk(2)
            shared = torch.minimum(chosen_len, rejected_len).repeat(2)[:, None]
            shared_mask = (position > 0) & (position <= shared)
            sums = (ref * shared_mask).sum(dim=1) + self.ld_alpha * (ref * (position > shared)).sum(dim=1)
        return sums.chunk(2)

    # ------------------------------------------------------------------ loss

    def _resolve_asr_delta(self, from_train: bool) -> float:
        """``asr_delta`` as a number: ``"auto"`` is resolved ONCE, before the first step, over token rewards.

        Never per micro-batch (the mask would then depend on the number of processes and on gradient
        accumulation): over a seeded sample (``args.seed``) of whole training pairs holding at most
        :data:`DELTA_SAMPLE_TOKENS` completion tokens, laid out by the trainer's own collator
        (truncation included) and scored on the fly when ``token_reward_on_the_fly``; the baseline is
        ``asr_baseline`` over that sample. Every rank uses the main process's value.
        """
        options = self._mask_options
        if options["delta"] != "auto":
            return float(options["delta"])
        dataset = self.train_dataset if from_train else self.eval_dataset
        if isinstance(dataset, dict):
            dataset = next(iter(dataset.values()), None)
        if dataset is None:
            raise ValueError("asr_delta='auto' is resolved over the training set's token rewards before the first "
                             "step; pass a `train_dataset` (or an `eval_dataset`), or set a number for `asr_delta`")
        rewards, mask = self._sample_token_rewards(dataset)
        delta = ops.resolve_delta(rewards, mask, options["baseline"], "auto", options["delta_quantile"])
        value = [delta]
        broadcast_object_list(value, from_process=0)
        return float(value[0])

    def _sample_token_rewards(self, dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """Token rewards of a seeded sample of pairs, response layout. Shapes: (2P, R), (2P, R)."""
        if isinstance(dataset, IterableDataset):
            examples = iter(dataset)
        else:
            order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.args.seed)).tolist()
            examples = (dataset[i] for i in order)
        picked, tokens = [], 0
        for example in examples:
            n = len(example["chosen_ids"]) + len(example["rejected_ids"])
            if picked and tokens + n > DELTA_SAMPLE_TOKENS:
                break
            picked.append(example)
            tokens += n
        collator, rows = self._asr_collator(), []
        for lo in range(0, len(picked), 64):
            batch = collator(picked[lo: lo + 64])
            span = response_span(batch["completion_mask"])
            if self.args.token_reward_on_the_fly:
                rewards = self._on_the_fly_rewards(batch["input_ids"], span).cpu()
            else:
                rewards = batch["token_rewards"]
            rows += [rewards[i, :n] for i, n in enumerate(span.length.tolist())]
        padded, attention = pad_rows(rows, dtype=torch.float32)
        return padded, attention.bool()

    def _global_mask_options(self, token_rewards: torch.Tensor, mask: torch.Tensor) -> dict:
        """The keep-mask options with a batch baseline resolved over the batch of *every* process."""
        return global_mask_options(self.accelerator, self._mask_options, token_rewards, mask)

    def _compute_loss(self, model, inputs, return_outputs):
        if not self._needs_rewards:
            return super()._compute_loss(model, inputs, return_outputs)
        inputs = dict(inputs)  # never mutate the caller's batch
        token_rewards = inputs.pop("token_rewards", None)
        ref_token_logps = inputs.pop("ref_token_logps", None)
        completion_mask = inputs["completion_mask"]
        span = response_span(completion_mask)
        n_pairs = completion_mask.shape[0] // 2

        if self.args.token_reward_on_the_fly:
            token_rewards = self._on_the_fly_rewards(inputs["input_ids"], span)
        if token_rewards is None:
            raise ValueError(
                "the batch has no `token_rewards`: the dataset lost its `chosen_token_rewards` / "
                "`rejected_token_rewards` columns, or a custom collator dropped them"
            )
        if tuple(token_rewards.shape) != tuple(span.mask.shape):
            raise ValueError(f"`token_rewards` has shape {tuple(token_rewards.shape)} but the batch's completions "
                             f"need {tuple(span.mask.shape)} (2B rows x longest completion)")
        is_boundary = None
        if self._step_boundaries is not None:
            is_boundary = self._step_boundaries(from_input_layout(inputs["input_ids"], span), span.mask)
        seq_sign = ops.preference_sign(n_pairs, device=completion_mask.device)  # rows are [chosen x B; rejected x B]
        token_rewards = token_rewards.to(completion_mask.device)
        kept = ops.keep_mask(token_rewards, span.mask, seq_sign, is_boundary=is_boundary,
                             **self._global_mask_options(token_rewards, span.mask))

        # The one line that applies ASR: TRL turns completion_mask == 0 into label -100, which the
        # fused LM head scores as log-prob 0 (no gradient) for the policy and the reference alike.
        inputs["completion_mask"] = completion_mask * to_input_layout(kept.keep, span).to(completion_mask.dtype)
        if self.precompute_ref_logps:
            if ref_token_logps is None:
                raise ValueError("`precompute_ref_log_probs=True` but the batch has no `ref_token_logps`; the dataset "
                                 "lost its `ref_chosen_token_logps` / `ref_rejected_token_logps` columns")
            inputs["ref_chosen_logps"], inputs["ref_rejected_logps"] = self._masked_ref_sums(ref_token_logps,
                                                                                            kept.keep)
        self._log_mask_metrics(kept, span.mask, n_pairs)
        result = super()._compute_loss(model, inputs, return_outputs)
        if not self._sft_weight:
            return result
        sft = self._sft_weight * self._chosen_nll(model, inputs, completion_mask)
        return (result[0] + sft, result[1]) if return_outputs else result + sft

    def _chosen_nll(self, model, inputs, completion_mask: torch.Tensor) -> torch.Tensor:
        """TRL's `sft` term over every token of the chosen responses, whatever the keep mask: the mean
        negative log-likelihood of the batch's chosen completion tokens (one extra forward on the B
        chosen rows). Logged as `asr/sft_loss`.

        Args:
            completion_mask: the unmasked completion mask of the batch. Shape: (2B, L).
        """
        n = completion_mask.shape[0] // 2
        kwargs = {k: v[:n] for k, v in inputs.items() if k not in _TRL_NON_MODEL_KEYS and torch.is_tensor(v)}
        labels = kwargs["input_ids"].masked_fill(completion_mask[:n] == 0, -100)
        outputs = model(**kwargs, labels=labels, use_cache=False, fused_lm_head=True)
        mask = completion_mask[:n, 1:].bool()
        nll = -outputs.log_probs[:, -mask.shape[1]:][mask].mean()
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["asr/sft_loss"].append(self.accelerator.gather(nll.detach()).mean().item())
        return nll

    def _on_the_fly_rewards(self, input_ids: torch.Tensor, span) -> torch.Tensor:
        """Score the batch's own (truncated) completions with the segment RM. Shape: (2B, R)."""
        source = self._get_reward_source(self.args)
        ids, starts, lengths = input_ids.tolist(), span.start.tolist(), span.length.tolist()
        prompts = [row[:s] for row, s in zip(ids, starts)]
        completions = [row[s:s + n] for row, s, n in zip(ids, starts, lengths)]
        rewards, _ = source.token_rewards(prompts, completions)
        out = torch.zeros(span.mask.shape, dtype=torch.float32)
        out[:, : rewards.shape[1]] = rewards[:, : span.width]
        return out.to(input_ids.device)

    def _log_mask_metrics(self, kept: ops.KeepMaskResult, mask: torch.Tensor, n_pairs: int) -> None:
        mode = "train" if self.model.training else "eval"
        local = torch.cat([
            torch.stack([kept.keep[:n_pairs].sum(), mask[:n_pairs].sum()]).double(),
            kept.counts(mask),
        ])
        # One gather and one host sync per step for all counts.
        (kept_c, tok_c, kept_all, tok_all, segments, in_segments, fallbacks, rows, baseline_sum) = (
            self.accelerator.gather(local[None]).sum(dim=0).tolist()
        )
        kept_r, tok_r = kept_all - kept_c, tok_all - tok_c
        metrics = self._metrics[mode]
        metrics["asr/kept_token_fraction_chosen"].append(kept_c / tok_c if tok_c else 0.0)
        metrics["asr/kept_token_fraction_rejected"].append(kept_r / tok_r if tok_r else 0.0)
        if kept.segment_ids is not None:
            metrics["asr/segments_per_response"].append(segments / rows if rows else 0.0)
            metrics["asr/mean_segment_length"].append(in_segments / segments if segments else 0.0)
        metrics["asr/fallbacks"].append(fallbacks)
        metrics["asr/baseline"].append(baseline_sum / (2 * n_pairs * self.accelerator.num_processes))
        if self.asr_delta is not None:
            metrics["asr/delta"].append(self.asr_delta)
