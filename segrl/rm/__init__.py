"""Segment-level reward model (arXiv 2501.02790, docs/method.md#segment-rm) on top of TRL's RewardTrainer.

- :class:`SegmentRewardModel`: a trained RM with its threshold, reference model and normaliser;
  ``score_tokens`` / ``score_token_ids`` give dense (B, T) token rewards in the RM's
  ``reward_form`` (``"value"`` | ``"delta"``); ``score`` gives them with the sequence scores.
- :class:`SegmentRewardConfig` / :class:`SegmentRewardTrainer`: training (``c = inf`` is exactly
  TRL's RewardTrainer, ``c = 0`` the token-level RM).
- :func:`fit_normalizer`: the location-aware normaliser fit (``segrl fit-norm``).
- :func:`evaluate_pairwise`: RewardBench-style pairwise accuracy (``segrl eval-rm``);
  :func:`evaluate_credit`: token credit of any token-reward source on labelled data.

Attributes are imported lazily so ``import segrl.rm`` does not import TRL.
"""

from __future__ import annotations

from segrl._lazy import lazy_exports

_EXPORTS = {
    "SegmentRewardModel": "segrl.rm.model",
    "SegmentRMSettings": "segrl.rm.model",
    "SegmentedResponses": "segrl.rm.model",
    "per_position_values": "segrl.rm.model",
    "parse_threshold": "segrl.rm.model",
    "SegmentScores": "segrl.rm.scoring",
    "SegmentTokenRewards": "segrl.rm.scoring",
    "REWARD_FORMS": "segrl.rm.scoring",
    "form_segment_rewards": "segrl.rm.scoring",
    "segment_sequence_scores": "segrl.rm.scoring",
    "segment_token_rewards": "segrl.rm.scoring",
    "gather_response_values": "segrl.rm.scoring",
    "SegmentRewardConfig": "segrl.rm.trainer",
    "SegmentRewardTrainer": "segrl.rm.trainer",
    "DataCollatorForSegmentPreference": "segrl.rm.trainer",
    "reference_entropy": "segrl.rm.entropy",
    "add_entropy_columns": "segrl.rm.entropy",
    "check_reference_vocab": "segrl.rm.entropy",
    "resolve_segment_threshold": "segrl.rm.entropy",
    "segment_stats": "segrl.rm.entropy",
    "load_preference_dataset": "segrl.rm.data",
    "tokenize_preference_dataset": "segrl.rm.data",
    "tokenize_preference_example": "segrl.rm.data",
    "NormalizerFit": "segrl.rm.normalizer_fit",
    "collect_segment_rewards": "segrl.rm.normalizer_fit",
    "fit_normalizer": "segrl.rm.normalizer_fit",
    "plot_normalizer_fit": "segrl.rm.normalizer_fit",
    "evaluate_pairwise": "segrl.rm.evaluate",
    "evaluate_credit": "segrl.rm.evaluate",
}

__getattr__, __dir__, __all__ = lazy_exports("segrl.rm", _EXPORTS)
