"""GRPO with dense segment advantages (critic-free), as a thin subclass of TRL's ``GRPOTrainer``.

Advantages follow GRPO's *process supervision* rule (DeepSeekMath, arXiv 2402.03300 §4.1.3) with a
segment RM's segments as the steps: every segment reward of a group is normalised by the mean and
std of all segment rewards in that group, and token ``t``'s advantage is the sum of the
normalised rewards of the segments ending at or after ``t``. With the bandit RM (one segment per
response) this is exactly GRPO's outcome advantage. TRL 1.16's ``_compute_loss`` accepts (B, T)
advantages as they are.

The ASR mask goes into ``tool_mask``, TRL's loss-only mask, and not into ``completion_mask``, which
TRL also uses as the attention mask (masking it would change the log-probs of the kept tokens).
The token count ``num_items_in_batch`` is recomputed from the new mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from trl import GRPOConfig, GRPOTrainer

from segrl import ops
from segrl._distributed import global_mask_options
from segrl._trl_compat import check_trl_compat
from segrl.asr_options import ASRArguments
from segrl.checkpoints import CompleteCheckpointsMixin, ResumeArguments
from segrl.deprecation import RENAMED_FIELDS_HELP, apply_renamed_fields
from segrl.ppo.config import apply_asr_alias
from segrl.ppo.trainer import response_mask_from


check_trl_compat("grpo")  # fail at import if TRL changed what this module overrides or calls


@dataclass
class SegmentGRPOConfig(ASRArguments, ResumeArguments, GRPOConfig):
    """:class:`trl.GRPOConfig` plus the segment-reward options and the keep mask of the policy loss
    (:class:`segrl.asr_options.ASRArguments`, checked at construction; ``mask_type`` defaults to ``"none"``)."""

    mask_type: str = field(
        default="none",
        metadata={"help": "Which tokens enter the policy loss (through TRL's tool_mask): 'none' (every completion "
                          "token: plain dense GRPO, the default), 'asr' (segments agreeing with the sign of the "
                          "response's score against its group mean), 'tokenwise' or 'stepwise'.",
                  "choices": ["none", "asr", "tokenwise", "stepwise"]},
    )

    reward_model_path: str | None = field(
        default=None, metadata={"help": "Segment RM (segrl train-rm + fit-norm) giving the dense rewards: path or hub id."}
    )
    segment_reward_model: str | None = field(
        default=None, metadata={"help": RENAMED_FIELDS_HELP.format(new="reward_model_path")}
    )
    segment_threshold: float | None = field(
        default=None, metadata={"help": "Entropy threshold override: inf bandit, 0 token, else segment (default: the RM's)."}
    )
    asr: bool | None = field(
        default=None, metadata={"help": "Deprecated: `mask_type` ('asr' for true, 'none' for false)."}
    )

    def __post_init__(self):
        apply_renamed_fields(self, {"segment_reward_model": "reward_model_path"})
        apply_asr_alias(self)
        super().__post_init__()  # the ASR fields, then TRL's GRPOConfig checks


def dense_group_advantages(seg_rewards: torch.Tensor, seg_valid: torch.Tensor, segment_ids: torch.Tensor,
                           group_mean: torch.Tensor, group_std: torch.Tensor | None) -> torch.Tensor:
    """Process-supervision advantages from segment rewards.

    Args:
        seg_rewards: (location-normalised) segment rewards. Shape: (B, K).
        seg_valid: real segment slots. Shape: (B, K).
        segment_ids: Shape: (B, T).
        group_mean, group_std: statistics of the row's group over all its segments. Shape: (B,).
            ``group_std=None`` skips the scaling (``scale_rewards="none"``).

    Returns:
        (B, T): sum of the normalised rewards of the segments ending at or after each token.
    """
    normed = seg_rewards - group_mean.unsqueeze(1)
    if group_std is not None:
        normed = normed / (group_std.unsqueeze(1) + 1e-4)  # GRPO's epsilon
    normed = torch.where(seg_valid, normed, torch.zeros_like(normed))
    at_end = ops.spread_segment_rewards(normed, segment_ids, mode="end")
    return at_end.flip(1).cumsum(1).flip(1) * (segment_ids >= 0)


class SegmentGRPOTrainer(CompleteCheckpointsMixin, GRPOTrainer):
    """``GRPOTrainer`` whose advantages are dense (B, T) segment advantages from a segment RM.

    Pass ``segment_reward_model`` (a loaded :class:`segrl.rm.SegmentRewardModel`) or set
    ``args.reward_model_path``. When ``reward_funcs`` is omitted, the RM's own sequence
    classifier is the reward function, so TRL's logged ``reward`` is the RM's ordinary score.
    """

    def __init__(self, model, reward_funcs=None, args: SegmentGRPOConfig | None = None, *,
                 segment_reward_model=None, **kwargs):
        from segrl.rm.model import SegmentRewardModel

        if segment_reward_model is None:
            if args is None or not args.reward_model_path:
                raise ValueError("`args.reward_model_path` (or a loaded `segment_reward_model=`) is required")
            segment_reward_model = SegmentRewardModel.from_pretrained(args.reward_model_path)
        if args is not None and args.segment_threshold is not None:
            segment_reward_model.threshold = float(args.segment_threshold)
        if segment_reward_model.normalizer is None:
            raise ValueError("the segment RM has no fitted normaliser; run `segrl fit-norm` first")
        self.segment_rm = segment_reward_model
        if reward_funcs is None:
            reward_funcs = [segment_reward_model.model]
            kwargs.setdefault("reward_processing_classes", [segment_reward_model.tokenizer])
        super().__init__(model=model, reward_funcs=reward_funcs, args=args, **kwargs)
        if self.segment_rm.tokenizer.get_vocab() != self.processing_class.get_vocab():
            raise ValueError("`segment_reward_model` and the policy use different tokenizers")

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        device = out["completion_ids"].device
        response_mask, _ = response_mask_from(out["completion_ids"], self.processing_class.eos_token_id)
        prompt_ids = [row[m.bool()].tolist() for row, m in zip(out["prompt_ids"], out["prompt_mask"])]
        completion_ids = [row[m].tolist() for row, m in zip(out["completion_ids"], response_mask)]
        self.segment_rm.model.to(device)
        seg = self.segment_rm.segment_token_ids(prompt_ids, completion_ids)
        seg_norm = self.segment_rm.normalized_segment_rewards(seg).to(device)
        seg_valid, segment_ids = seg.seg_valid.to(device), seg.segment_ids.to(device)

        mean, std = self._group_segment_stats(seg_norm, seg_valid)
        width = out["completion_ids"].shape[1]
        advantages = torch.zeros(segment_ids.shape[0], width, device=device)
        dense = dense_group_advantages(seg_norm, seg_valid, segment_ids, mean,
                                       None if self.scale_rewards == "none" else std)
        advantages[:, : dense.shape[1]] = dense
        out["advantages"] = advantages

        n_seg = seg_valid.sum(1).float()
        self._metrics[mode]["rm/segments_per_response"].append(self.accelerator.gather(n_seg).mean().item())
        if self.args.mask_type != "none":
            token_rewards = ops.spread_segment_rewards(seg_norm, segment_ids, mode="even")
            padded = torch.zeros_like(advantages)
            padded[:, : token_rewards.shape[1]] = token_rewards
            seq = seg.scores.to(device)
            seq_sign = ops.sequence_sign(seq, self._group_mean_of(seq))  # ties +1 (docs/method.md#sequence-sign)
            res = self.keep_mask(padded, response_mask, seq_sign, out["completion_ids"])
            tool_mask = out.get("tool_mask")
            keep = res.keep.int() if tool_mask is None else res.keep.int() * tool_mask
            out["tool_mask"] = keep
            out["num_items_in_batch"] = self.accelerator.gather((out["completion_mask"] * keep).sum()).sum()
            counts = self.accelerator.reduce(
                torch.stack([(out["completion_mask"] * keep).sum(), out["completion_mask"].sum()]).float(), "sum"
            )
            self._metrics[mode]["asr/kept_token_fraction"].append((counts[0] / counts[1].clamp(min=1)).item())
            self._metrics[mode]["asr/fallbacks"].append(self.accelerator.gather(res.fallback.sum()).sum().item())
            if self.args.mask_type == "asr":
                self._metrics[mode]["asr/delta"].append(res.delta)
        return out

    def keep_mask(self, token_rewards: torch.Tensor, response_mask: torch.Tensor, seq_sign: torch.Tensor,
                  completion_ids: torch.Tensor) -> ops.KeepMaskResult:
        """The keep mask of one generation batch (``mask_type``; docs/method.md#asr-mask).

        Batch-wide baselines and ``asr_delta="auto"`` are resolved over the whole generation batch of
        *every* process, before its updates (never per micro-batch: the mask then depends neither on
        the number of processes nor on gradient accumulation).

        Shapes: ``token_rewards``, ``response_mask``, ``completion_ids`` (B, T); ``seq_sign`` (B,).
        """
        options = global_mask_options(self.accelerator, self.args.mask_kwargs(), token_rewards, response_mask)
        is_boundary = None
        if options["kind"] == "stepwise":
            if getattr(self, "_step_boundaries", None) is None:
                from segrl.token_rewards import StepBoundaries

                self._step_boundaries = StepBoundaries(self.processing_class, self.args.step_boundary_chars)
            is_boundary = self._step_boundaries(completion_ids, response_mask)
        return ops.keep_mask(token_rewards, response_mask, seq_sign, is_boundary=is_boundary, **options)

    def _gathered_groups(self, local: torch.Tensor) -> tuple[torch.Tensor, slice]:
        """Gather per-row statistics from all processes, grouped by prompt; and this process's slice."""
        rows = self.accelerator.gather(local)
        g = self.num_generations if self.model.training else self.num_generations_eval
        n = local.shape[0]
        start = self.accelerator.process_index * n
        return rows.view(-1, g, *local.shape[1:]), slice(start, start + n)

    def _group_mean_of(self, seq: torch.Tensor) -> torch.Tensor:
        grouped, local = self._gathered_groups(seq)
        g = grouped.shape[1]
        return grouped.mean(dim=1).repeat_interleave(g)[local]

    def _group_segment_stats(self, seg_norm: torch.Tensor, seg_valid: torch.Tensor):
        """Mean and (unbiased, as TRL) std of all segment rewards of each row's group, or of the batch.

        Each row's :func:`segrl.ops.masked_moments` are gathered from every process and summed per
        group (``scale_rewards="batch"``: over the whole batch), then :func:`segrl.ops.moments_mean_std`.
        Shapes: ``seg_norm``, ``seg_valid`` (B, K) -> mean (B,), std (B,), float32.
        """
        per_row = ops.masked_moments(seg_norm, seg_valid, dim=1).T  # (B, 3)
        grouped, local = self._gathered_groups(per_row)
        g = grouped.shape[1]
        if self.scale_rewards == "batch":
            totals = grouped.sum(dim=(0, 1)).expand(grouped.shape[0], 3)
        else:
            totals = grouped.sum(dim=1)
        mean, std = ops.moments_mean_std(totals.T, unbiased=True)
        return mean.float().repeat_interleave(g)[local], std.float().repeat_interleave(g)[local]
