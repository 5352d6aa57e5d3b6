"""``SegmentRewardTrainer``: TRL's ``RewardTrainer`` with segment-level Bradley-Terry (docs/method.md#segment-rm).

What changes relative to TRL, and nothing else:

- ``_prepare_dataset``: the same ids as TRL (prompt + completion tokenised jointly, EOS appended to
  plain-text completions, rows over ``max_length`` filtered), plus ``prompt_length`` and, for a
  dense RM, the reference model's entropy of every response token, computed **once** and stored as
  ``chosen_entropy`` / ``rejected_entropy`` dataset columns (so a training step never runs the
  reference model).
- the collator also pads the entropies and a response mask;
- ``compute_loss``: per-position values -> entropy segments -> value at each segment's last token ->
  sequence score = mean segment reward -> ``-logsigmoid(s_w - s_l [- margin])`` (+ TRL's
  ``center_rewards_coefficient`` term). With ``segment_threshold = inf`` the score is the value at
  EOS, i.e. exactly TRL's loss.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from datasets import IterableDataset
from trl import RewardConfig, RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference
from trl.trainer.utils import pad

from segrl._trl_compat import check_trl_compat
from segrl.checkpoints import CompleteCheckpointsMixin, ResumeArguments
from segrl.deprecation import RENAMED_FIELDS_HELP, apply_renamed_fields
from segrl.rm.data import tokenize_preference_dataset
from segrl.rm.entropy import (
    DEFAULT_SEGMENT_TARGET_LENGTH,
    add_entropy_columns,
    check_reference_vocab,
    load_reference_model,
    resolve_segment_threshold,
    warn_if_few_segments,
)
from segrl.rm.model import (
    CONFIG_KEY,
    SegmentRMSettings,
    _maybe_tokenizer,
    _unwrap,
    capture_per_position_values,
    parse_threshold,
    stored_reference,
)
from segrl.rm.scoring import (
    gather_response_values,
    parse_segment_loss,
    prefix_pairs_loss,
    segment_sequence_scores,
)

check_trl_compat("rm")  # fail at import if TRL changed what this module overrides or calls


__all__ = ["DataCollatorForSegmentPreference", "SegmentRewardConfig", "SegmentRewardTrainer"]


@dataclass
class SegmentRewardConfig(ResumeArguments, RewardConfig):
    """:class:`trl.RewardConfig` plus the segment reward model's options.

    Parameters:
        segment_threshold (`float` or `str`, defaults to `2.0`):
            Entropy threshold ``c`` in nats: a response token starts a new segment iff the reference
            model's entropy at it is ``> c``. ``0`` gives the token-level RM, ``inf`` the ordinary
            (bandit) RM read at EOS, which is exactly TRL's RewardTrainer. The paper uses 1.75-2.0.
            ``"auto"`` resolves it from the training data's reference entropies so that segments
            have mean length ``segment_target_length``; the saved RM stores the resolved number.
        segment_target_length (`float`, defaults to `4.0`):
            Mean segment length in tokens that ``segment_threshold="auto"`` aims for.
        ref_model_name_or_path (`str`, *optional*):
            Path or Hub id of the frozen reference (SFT) causal LM whose entropy cuts segments. Defaults
            to the model the RM is initialised from. Must share the RM's tokenizer. Deprecated name:
            `reference_model` (still accepted, with a `FutureWarning`); the saved RM's `config.json`
            keeps the key `reference_model`.
        entropy_batch_size (`int`, defaults to `8`):
            Rows per reference forward pass when the entropies are precomputed.
        reference_model_init_kwargs (`dict`, *optional*):
            Keyword arguments for ``AutoModelForCausalLM.from_pretrained`` of the reference model
            (defaults to fp32, as docs/method.md#segment-rm requires for the entropies).
        segment_loss (`str`, defaults to `"mean"`):
            ``"mean"``: Bradley-Terry on the mean segment reward (the paper's). ``"prefix_pairs"``:
            Bradley-Terry between every chosen and every rejected segment reward
            (:func:`segrl.rm.scoring.prefix_pairs_loss`), which trains each segment-end value as a value of
            its prefix; the same at ``c = inf``. See docs/method.md#segment-rm.
    """

    _VALID_DICT_FIELDS = RewardConfig._VALID_DICT_FIELDS + ["reference_model_init_kwargs"]

    # Typed `str` so the command line accepts "auto" and "inf"; __post_init__ turns it into a float or "auto".
    segment_threshold: str = field(
        default=2.0,
        metadata={
            "help": "Entropy threshold c (nats) for cutting segments: 0 = token-level RM, inf = ordinary bandit RM "
            "(exactly TRL's RewardTrainer), 'auto' = resolved from the training data's reference entropies for a "
            "mean segment length of `segment_target_length` tokens (the saved RM stores the number). The paper "
            "uses 1.75-2.0."
        },
    )
    segment_target_length: float = field(
        default=DEFAULT_SEGMENT_TARGET_LENGTH,
        metadata={"help": "Mean segment length (tokens) that segment_threshold='auto' aims for; >= 1."},
    )
    ref_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Path or Hub id of the frozen reference (SFT) causal LM whose next-token entropy cuts segments. "
            "Defaults to the model the RM is initialised from. Must use the same tokenizer."
        },
    )
    reference_model: str | None = field(
        default=None, metadata={"help": RENAMED_FIELDS_HELP.format(new="ref_model_name_or_path")}
    )
    entropy_batch_size: int = field(
        default=8, metadata={"help": "Rows per reference-model forward pass when precomputing entropies."}
    )
    reference_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments for AutoModelForCausalLM.from_pretrained of the reference model "
            "(default dtype float32)."
        },
    )

    segment_loss: str = field(
        default="mean",
        metadata={
            "help": "Training loss: 'mean' = Bradley-Terry on the mean segment reward (the paper's); 'prefix_pairs' = "
            "Bradley-Terry between every chosen and every rejected segment reward (trains every segment-end value as "
            "a value of its prefix; localises token credit better with reward_form='delta'). Same at c = inf."
        },
    )

    def __post_init__(self):
        apply_renamed_fields(self, {"reference_model": "ref_model_name_or_path"})
        parse_segment_loss(self.segment_loss, "segment_loss")
        self.segment_threshold = parse_threshold(self.segment_threshold, "segment_threshold", allow_auto=True)
        target = self.segment_target_length
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not (math.isfinite(target) and target >= 1):
            raise ValueError(f"`segment_target_length` must be a number >= 1 (tokens), got {target!r}")
        if self.entropy_batch_size < 1:
            raise ValueError(f"`entropy_batch_size` must be >= 1, got {self.entropy_batch_size}")
        from segrl.hardware import resolve_trl_defaults

        resolve_trl_defaults(self)  # before TRL's checks: bf16 only where the hardware has it, ...
        super().__post_init__()


@dataclass
class DataCollatorForSegmentPreference(DataCollatorForPreference):
    """TRL's preference collator plus the response layout of every row.

    On top of ``input_ids`` / ``attention_mask`` (rows ``[chosen x B; rejected x B]``, right-padded)
    and optional ``margin``, it returns:

    - ``prompt_length``: position of response token 0. Shape: (2B,).
    - ``response_mask``: valid response tokens. Shape: (2B, T).
    - ``response_entropy``: reference entropy per response token, 0-padded (only when the examples
      carry ``chosen_entropy`` / ``rejected_entropy``). Shape: (2B, T).
    """

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        output = super().torch_call(examples)
        plen = [int(ex["prompt_length"]) for ex in examples] * 2
        seqs = [ex["chosen_ids"] for ex in examples] + [ex["rejected_ids"] for ex in examples]
        lengths = [len(s) - p for s, p in zip(seqs, plen)]
        output["prompt_length"] = torch.tensor(plen, dtype=torch.long)
        output["response_mask"] = pad([torch.ones(n, dtype=torch.bool) for n in lengths], padding_value=False)
        if "chosen_entropy" in examples[0]:
            ents = [ex["chosen_entropy"] for ex in examples] + [ex["rejected_entropy"] for ex in examples]
            for ent, n in zip(ents, lengths):
                if len(ent) != n:
                    raise ValueError(
                        f"an entropy column has {len(ent)} values for a response of {n} tokens; recompute the "
                        "`chosen_entropy` / `rejected_entropy` columns with the same tokenizer"
                    )
            output["response_entropy"] = pad([torch.tensor(e, dtype=torch.float32) for e in ents], padding_value=0.0)
        return output


class SegmentRewardTrainer(CompleteCheckpointsMixin, RewardTrainer):
    """Segment-level reward model trainer (arXiv 2501.02790) on top of :class:`trl.RewardTrainer`.

    Args:
        model: as for ``RewardTrainer``: a model id / path (loaded as
            ``AutoModelForSequenceClassification(num_labels=1)``) or such a model.
        args: a :class:`SegmentRewardConfig`.
        ref_model: optional frozen reference causal LM (module, path or id); overrides
            ``args.ref_model_name_or_path``. Default: the RM's init model.
        **kwargs: everything else ``RewardTrainer`` takes (``train_dataset``, ``eval_dataset``,
            ``processing_class``, ``peft_config``, ``callbacks``, ...).

    Datasets: TRL preference format (``prompt`` optional, ``chosen``, ``rejected``; standard or
    conversational), or tokenised rows with ``chosen_ids``, ``rejected_ids``, ``prompt_length``
    and optionally precomputed ``chosen_entropy`` / ``rejected_entropy``.

    Logged metrics (train and eval): TRL's ``accuracy``, ``margin``, ``min/mean/max_reward`` (of
    sequence scores), plus ``rm/segments_per_response`` and ``rm/mean_segment_length``.
    """

    _tag_names = ["trl", "reward-trainer", "segrl", "segment-reward-model"]
    _name = "Segment Reward"

    def __init__(self, model, args: SegmentRewardConfig | None = None, data_collator=None, train_dataset=None,
                 eval_dataset=None, processing_class=None, *, ref_model=None, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model")
            args = SegmentRewardConfig(f"{os.path.basename(str(name).rstrip('/')) or 'model'}-SegmentReward")
        elif not isinstance(args, SegmentRewardConfig):
            raise ValueError(f"`args` must be a SegmentRewardConfig, got {type(args).__name__}")
        self.segment_threshold = args.segment_threshold
        # The reference is only needed to precompute entropies (inside super().__init__ ->
        # _prepare_dataset); it is loaded lazily and dropped afterwards unless the caller owns it.
        reference = ref_model if ref_model is not None else args.ref_model_name_or_path
        if reference is None:
            reference = model if isinstance(model, str) else (getattr(model.config, "_name_or_path", "") or None)
        if isinstance(reference, (str, os.PathLike)):
            reference = os.fspath(reference)  # stored as given (see segrl.rm.model.stored_reference)
        self._reference = reference
        self._reference_module = reference if isinstance(reference, nn.Module) else None
        self._rm_vocab_rows = _vocab_rows(model, args)
        self._user_collator = data_collator is not None
        self._threshold_info: dict = {}
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)
        if not self._user_collator:
            self.data_collator = DataCollatorForSegmentPreference(
                pad_token_id=self.processing_class.pad_token_id, pad_to_multiple_of=self.args.pad_to_multiple_of
            )
        if self.segment_threshold == "auto":
            raise ValueError(
                "segment_threshold='auto' is resolved from the training dataset's reference entropies: pass a "
                "`train_dataset`"
            )
        self.segment_settings = SegmentRMSettings(threshold=self.segment_threshold,
                                                  reference_model=self.reference_model, extra=self._threshold_info)
        # Written into config.json by save_model(), so the saved RM knows how to segment.
        stored = self.segment_settings.to_dict()
        stored["reference_model"] = stored_reference(self.reference_model, self.args.output_dir)
        setattr(_unwrap(self.model).config, CONFIG_KEY, stored)
        tok = self.processing_class
        if tok.pad_token_id is not None and tok.pad_token_id == tok.eos_token_id:
            # HF pooling takes the last token that is not the pad id, i.e. it skips an EOS equal to pad,
            # while segrl reads through the attention mask at the EOS itself (docs/method.md#segment-rm).
            import warnings

            warnings.warn(
                "pad_token == eos_token: the model's own pooled logits (and TRL's RewardTrainer) read the token "
                "before EOS, the segment RM reads the EOS itself; set a distinct pad token to make them agree",
                stacklevel=2,
            )

    @property
    def reference_model(self) -> str | None:
        """Path / Hub id of the reference model (stored with the saved RM)."""
        if isinstance(self._reference, nn.Module):
            return getattr(self._reference.config, "_name_or_path", None) or None
        return self._reference

    # ---------------------------------------------------------------- data

    def _get_reference_module(self, processing_class):
        if self._reference_module is None:
            if self._reference is None:
                raise ValueError(
                    "`ref_model_name_or_path` is not set and the model has no `_name_or_path`: pass ref_model=... or "
                    "SegmentRewardConfig(ref_model_name_or_path=...)"
                )
            init_kwargs = dict(self._init_args.reference_model_init_kwargs or {})
            ref = load_reference_model(self._reference, device=self._init_args.device, **init_kwargs)
            ref_tok = _maybe_tokenizer(self._reference) if isinstance(self._reference, str) else None
            check_reference_vocab(processing_class, ref, reward_model=self._rm_vocab_rows, reference_tokenizer=ref_tok)
            self._reference_module = ref
        else:
            check_reference_vocab(processing_class, self._reference_module, reward_model=self._rm_vocab_rows)
            self._reference_module = load_reference_model(self._reference_module, device=self._init_args.device)
        return self._reference_module

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        from trl.trainer.utils import global_then_local_main_first

        self._init_args = args
        column_names = dataset.column_names or list(next(iter(dataset)).keys())
        with global_then_local_main_first():
            dataset = tokenize_preference_dataset(dataset, processing_class, max_length=args.max_length,
                                                  num_proc=args.dataset_num_proc, name=f"{dataset_name} dataset")
            has_entropy = {"chosen_entropy", "rejected_entropy"} <= set(column_names)
            dense = args.segment_threshold == "auto" or not math.isinf(args.segment_threshold)
            if not has_entropy and dense:
                ref = self._get_reference_module(processing_class)
                pad_id = processing_class.pad_token_id if processing_class.pad_token_id is not None else 0
                dataset = add_entropy_columns(dataset, ref, batch_size=args.entropy_batch_size, pad_token_id=pad_id,
                                              name=f"{dataset_name} dataset")
                if not isinstance(self._reference, nn.Module):
                    self._reference_module = None  # free the weights we loaded: training never runs the reference
        if dataset_name == "train" and dense:
            self._check_threshold(dataset, args)
        return dataset

    def _check_threshold(self, dataset, args) -> None:
        """Resolve ``segment_threshold="auto"`` on the training entropies; warn on ~1 segment per response."""
        if not hasattr(dataset, "column_names") or isinstance(dataset, IterableDataset):
            if args.segment_threshold == "auto":
                raise ValueError("segment_threshold='auto' needs a map-style (not streaming) training dataset")
            return
        entropies = list(dataset["chosen_entropy"]) + list(dataset["rejected_entropy"])
        if not all(math.isfinite(h) for row in entropies for h in row):
            if args.segment_threshold == "auto":
                raise ValueError("the `chosen_entropy` / `rejected_entropy` columns contain NaN or inf: cannot "
                                 "resolve segment_threshold='auto'")
            return  # the loss reports it, on the batch that has it
        if args.segment_threshold == "auto":
            threshold = resolve_segment_threshold(entropies, args.segment_target_length)
            args.segment_threshold = self.segment_threshold = threshold
            self._threshold_info = {"threshold_auto": {"segment_target_length": float(args.segment_target_length)}}
        warn_if_few_segments(entropies, args.segment_threshold, target_length=args.segment_target_length)

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = [
                "chosen_ids", "rejected_ids", "margin", "prompt_length", "chosen_entropy", "rejected_entropy",
            ]

    # ---------------------------------------------------------------- loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        prompt_length = inputs.pop("prompt_length")
        response_mask = inputs.pop("response_mask")
        entropy = inputs.pop("response_entropy", None)
        margin = inputs.pop("margin", None)
        if entropy is None and not math.isinf(self.segment_threshold):
            raise ValueError(
                "the batch has no `response_entropy`: a dense segment RM needs the reference entropies (use "
                "SegmentRewardTrainer's dataset preparation and DataCollatorForSegmentPreference)"
            )

        inputs["use_cache"] = False
        with capture_per_position_values(model) as captured:
            outputs = model(**inputs)
        values = gather_response_values(captured.values, prompt_length, response_mask.shape[1])
        seg = segment_sequence_scores(values, entropy, response_mask, self.segment_threshold)
        rewards_chosen, rewards_rejected = torch.chunk(seg.scores, chunks=2)

        if self.args.segment_loss == "prefix_pairs":
            loss = prefix_pairs_loss(seg, margin)
        elif margin is not None:
            loss = -nn.functional.logsigmoid(rewards_chosen - rewards_rejected - margin).mean()
        else:
            loss = -nn.functional.logsigmoid(rewards_chosen - rewards_rejected).mean()
        if self.args.center_rewards_coefficient is not None:
            loss += self.args.center_rewards_coefficient * torch.mean((rewards_chosen + rewards_rejected) ** 2)

        if mode == "train":
            num_tokens_in_batch = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += num_tokens_in_batch // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        with torch.no_grad():
            self._log_metrics(mode, seg, rewards_chosen, rewards_rejected)

        # Eval predictions are the sequence scores (for c = inf, the pooled logits themselves).
        outputs["logits"] = seg.scores.detach().unsqueeze(-1)
        return (loss, outputs) if return_outputs else loss

    def _log_metrics(self, mode, seg, rewards_chosen, rewards_rejected) -> None:
        gather = self.accelerator.gather_for_metrics
        all_rewards = gather(seg.scores)
        metrics = self._metrics[mode]
        metrics["min_reward"].append(all_rewards.min().item())
        metrics["mean_reward"].append(all_rewards.mean().item())
        metrics["max_reward"].append(all_rewards.max().item())
        metrics["accuracy"].append(gather((rewards_chosen > rewards_rejected).float().mean()).mean().item())
        metrics["margin"].append(gather((rewards_chosen - rewards_rejected).mean()).mean().item())
        # Segment statistics from global sums, so every process logs the same numbers.
        counts = seg.num_segments.float()
        seg_tokens = (seg.segment_ids >= 0).sum().float()
        n_rows = torch.tensor(float(counts.numel()), device=counts.device)
        totals = gather(torch.stack([counts.sum(), seg_tokens, n_rows]).unsqueeze(0)).sum(0)
        metrics["rm/segments_per_response"].append((totals[0] / totals[2]).item())
        metrics["rm/mean_segment_length"].append((totals[1] / totals[0].clamp(min=1)).item())


def _vocab_rows(model, args) -> int | None:
    """Embedding rows of the RM, without loading weights when ``model`` is a path / id."""
    if isinstance(model, nn.Module):
        from segrl._deepspeed import embedding_rows

        emb = model.get_input_embeddings()
        return embedding_rows(emb.weight) if emb is not None else None
    from transformers import AutoConfig

    kwargs = {k: v for k, v in (args.model_init_kwargs or {}).items() if k in {"revision", "trust_remote_code"}}
    return int(AutoConfig.from_pretrained(model, **kwargs).get_text_config().vocab_size)
