"""The one segment-RM reward source: token rewards and the training sequence score.

ASR-DPO, ASR rejection sampling, PPO and the verl plugin all get their segment-RM rewards from
:class:`SegmentRMRewards` (through thin adapters only), and it computes them with
:mod:`segrl.rm.scoring`, the code the RM trainer's loss uses, so training and every consumer
cannot drift apart (docs/method.md#segment-rm, #reward-form, #location-normalizer, #spreading).

Two input layouts:

- token-id lists (``score``, ``token_rewards``, ``__call__``, ``sequence_scores``): prompts and
  responses as the consumer tokenised them (TRL's ids for DPO, sampled ids for rejection sampling,
  verl's ids); the RM runs its own reference model for the entropies;
- a padded rollout batch (``score_rollout``): ``[left-padded prompts | right-padded responses]``
  with the reference entropies the PPO trainer already computed for its KL term, scored by any
  per-position scorer (the RM's head, or a rule in tests).

Nothing here imports transformers at module import time.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import torch

from segrl.rm.scoring import (
    SegmentTokenRewards,
    parse_reward_form,
    segment_sequence_scores,
    segment_token_rewards,
)

__all__ = ["ScoreFn", "SegmentRMRewards", "reward_model_score_fn"]

SPREAD_MODES = ("even", "end", "repeat")

# (query_response_ids (B, L), attention_mask (B, L), context_length) -> per-position scores (B, L)
ScoreFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def reward_model_score_fn(rm_model) -> ScoreFn:
    """Per-position scores of a segment RM network (a ``*ForSequenceClassification``, ``num_labels=1``).

    Positions are passed explicitly so left-padded prompts score exactly like the right-padded
    batches the RM was trained on.
    """
    from segrl.rm.model import per_position_values

    def score(query_responses: torch.Tensor, attention_mask: torch.Tensor, context_length: int) -> torch.Tensor:
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        values, _ = per_position_values(rm_model, query_responses, attention_mask, position_ids=position_ids)
        return values

    return score


class SegmentRMRewards:
    """Token rewards and sequence scores from a segment reward model, for every consumer.

    Args:
        model: a :class:`segrl.rm.SegmentRewardModel` (or an object with its scoring interface:
            ``score_token_ids(prompt_ids, response_ids, *, mode, normalize, reward_form, batch_size)``
            and ``sequence_scores``, plus a ``tokenizer``), or the path of a saved one.
        policy_tokenizer: the policy's tokenizer; a different vocabulary raises ``ValueError``.
        mode: spreading of a segment reward over its tokens: ``"even"`` | ``"end"`` | ``"repeat"``.
        normalize: apply the RM's location-aware normaliser (a missing fit is an error).
        reward_form: ``"value"`` | ``"delta"``; ``None`` uses the RM's (the form its normaliser was
            fitted on). Another form than the normaliser's with ``normalize=True`` is an error.
        batch_size: rows per RM forward pass.
        device: where to load an RM given by path (default: CPU); a loaded RM stays where it is.
        reference_model: override the reference model stored with an RM given by path.
        name: the argument name used in error messages.
    """

    def __init__(self, model, *, policy_tokenizer=None, mode: str = "even", normalize: bool = True,
                 reward_form: str | None = None, batch_size: int = 8, device=None, reference_model=None,
                 name: str = "token_reward_model"):
        from segrl.token_rewards import _cache_key, check_same_tokenizer

        if mode not in SPREAD_MODES:
            raise ValueError(f"`mode` must be one of {SPREAD_MODES}, got {mode!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an int >= 1, got {batch_size!r}")
        if reward_form is not None:
            parse_reward_form(reward_form)
        self._key = _cache_key("segment_rm", model if isinstance(model, (str, os.PathLike)) else object(), mode,
                               normalize, reward_form)
        if isinstance(model, (str, os.PathLike)):
            from segrl.rm.model import SegmentRewardModel  # lazy: the RM stack is only needed for this source

            model = SegmentRewardModel.from_pretrained(os.fspath(model), device=device,
                                                       reference_model=reference_model)
        if not callable(getattr(model, "score_token_ids", None)):
            raise ValueError(
                f"`{name}` must be a SegmentRewardModel (with `score_token_ids`) or its path, got "
                f"{type(model).__name__}"
            )
        if policy_tokenizer is not None:
            check_same_tokenizer(getattr(model, "tokenizer", None), policy_tokenizer, name)
        self.model = model
        self.mode, self.normalize, self.batch_size = mode, bool(normalize), batch_size
        rm_form = getattr(model, "reward_form", "value")
        self.reward_form = rm_form if reward_form is None else reward_form
        if self.normalize and self.reward_form != rm_form and getattr(model, "normalizer", None) is not None:
            raise ValueError(
                f"reward_form={self.reward_form!r} but `{name}`'s normaliser was fitted on reward_form={rm_form!r}: "
                f"refit it on the form in use (`segrl fit-norm --reward_form {self.reward_form}`), or use its form"
            )

    def cache_key(self) -> str:
        """A key that changes with the RM on disk and the scoring options (for ``datasets`` caching)."""
        return self._key

    # ---------------------------------------------------------------- token-id lists

    def score(self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]]) -> SegmentTokenRewards:
        """Token rewards **and** sequence scores in one RM pass (a real ``SegmentRewardModel`` only).

        Returns:
            :class:`~segrl.rm.scoring.SegmentTokenRewards`: ``token_rewards`` / ``mask`` Shape: (N, T),
            ``scores`` Shape: (N,), ``T`` the longest response.
        """
        score = getattr(self.model, "score", None)
        if not callable(score):
            raise ValueError(f"{type(self.model).__name__} has no `score`; use token_rewards() and sequence_scores()")
        return score([list(p) for p in prompt_ids], [list(r) for r in response_ids], mode=self.mode,
                     normalize=self.normalize, reward_form=self.reward_form, batch_size=self.batch_size,
                     **({"progress": True} if getattr(self, "progress", False) else {}))  # as token_rewards()

    def token_rewards(self, prompt_ids, response_ids) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rewards (N, T) float32, mask (N, T) bool)``, ``T`` the longest response; every
        response token of every row is scored (checked)."""
        rewards, mask = self.model.score_token_ids(
            [list(p) for p in prompt_ids], [list(r) for r in response_ids],
            mode=self.mode, normalize=self.normalize, reward_form=self.reward_form, batch_size=self.batch_size,
            **({"progress": True} if getattr(self, "progress", False) else {}),  # set by callers that show bars
        )
        lengths = torch.tensor([len(r) for r in response_ids])
        if mask.shape[0] != len(response_ids) or not torch.equal(mask.sum(dim=1).cpu(), lengths):
            raise ValueError("the segment RM's `score_token_ids` must score every response token of every row")
        return rewards.float(), mask.bool()

    def __call__(self, prompt_ids, response_ids) -> list[list[float]]:
        """One list of token rewards per response (the shape dataset columns take)."""
        rewards, _ = self.token_rewards(prompt_ids, response_ids)
        return [rewards[i, : len(r)].tolist() for i, r in enumerate(response_ids)]

    def sequence_scores(self, prompt_ids, response_ids) -> torch.Tensor:
        """The training sequence score (mean raw segment value) of each response. Shape: (N,)."""
        return self.model.sequence_scores([list(p) for p in prompt_ids], [list(r) for r in response_ids],
                                          batch_size=self.batch_size)

    # ---------------------------------------------------------------- padded rollout batches

    @classmethod
    def from_score_fn(cls, score_fn: ScoreFn, *, threshold: float, normalizer, mode: str = "even",
                      sigma_floor: float = 1e-2, reward_form: str = "value") -> SegmentRMRewards:
        """A rollout-only source from any per-position scorer (a rule, or an RM head with another
        threshold). ``normalizer`` is required (fitted on ``reward_form``): no silent identity."""
        if normalizer is None:
            raise ValueError(
                "`normalizer` is None: fit the location-aware normaliser first (`segrl fit-norm`); "
                "pass explicit coefficients to opt out"
            )
        if mode not in SPREAD_MODES:
            raise ValueError(f"`mode` must be one of {SPREAD_MODES}, got {mode!r}")
        self = cls.__new__(cls)
        self.model, self._key = None, None
        self.mode, self.normalize, self.batch_size = mode, True, 8
        self.reward_form = parse_reward_form(reward_form)
        self._rollout = (score_fn, float(threshold), normalizer, float(sigma_floor))
        return self

    def _rollout_settings(self):
        settings = getattr(self, "_rollout", None)
        if settings is not None:
            return settings
        rm = self.model
        if not hasattr(rm, "model") or not hasattr(rm, "threshold"):
            raise ValueError(f"score_rollout needs a SegmentRewardModel, got {type(rm).__name__}")
        if self.normalize and rm.normalizer is None:
            raise ValueError("the reward model has no fitted normaliser; run `segrl fit-norm` on it first "
                             "(segrl never falls back to an identity normaliser)")
        normalizer = rm.normalizer if self.normalize else None
        self._rollout = (reward_model_score_fn(rm.model), float(rm.threshold), normalizer, float(rm.sigma_floor))
        return self._rollout

    @torch.no_grad()
    def score_rollout(self, query_responses: torch.Tensor, attention_mask: torch.Tensor, context_length: int,
                      response_mask: torch.Tensor, ref_entropy: torch.Tensor | None) -> SegmentTokenRewards:
        """Token rewards and sequence scores of a rollout batch.

        Args:
            query_responses: ``[left-padded prompts | responses]``. Shape: (B, L).
            attention_mask: Shape: (B, L).
            context_length: width of the prompt block; response token ``t`` is at ``context_length + t``
                and the last prompt token at ``context_length - 1`` (left padding), the ``r_0`` of
                ``reward_form="delta"``.
            response_mask: valid response tokens, right-padded, at least one per row. Shape: (B, T).
            ref_entropy: reference entropy per response token (``None`` only for a bandit RM). Shape: (B, T).

        Returns:
            :class:`~segrl.rm.scoring.SegmentTokenRewards` on the batch's device.
        """
        score_fn, threshold, normalizer, sigma_floor = self._rollout_settings()
        width = response_mask.shape[1]
        scores = score_fn(query_responses, attention_mask, context_length).float()
        values = scores[:, context_length : context_length + width]
        start_values = scores[:, context_length - 1] if context_length > 0 else torch.zeros_like(scores[:, 0])
        seg = segment_sequence_scores(values, None if math.isinf(threshold) else ref_entropy, response_mask, threshold)
        return segment_token_rewards(seg, response_mask, start_values=start_values, reward_form=self.reward_form,
                                     normalizer=normalizer, sigma_floor=sigma_floor, mode=self.mode)

    def __repr__(self) -> str:
        return (f"SegmentRMRewards({self.model!r}, mode={self.mode!r}, normalize={self.normalize}, "
                f"reward_form={self.reward_form!r})")
