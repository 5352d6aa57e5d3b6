"""Procedurally generated, seeded tasks with known per-step correctness.

- :mod:`segrl.tasks.arith` — multi-step addition with running sums and systematic carry errors:
  SFT data, conflict preference pairs, oracle token rewards, held-out prompts and metrics.
"""

from segrl.tasks.arith import (
    HELDOUT_FRACTION,
    ArithNoise,
    Part,
    answer_correct,
    char_rewards,
    exact_match,
    is_conflict_pair,
    is_heldout_prompt,
    make_heldout_prompts,
    make_preference_pairs,
    make_sft_data,
    noisy_response,
    oracle_token_rewards,
    parse_prompt,
    parse_response,
    preference_stats,
    response_parses,
    score_responses,
    solve,
    step_accuracy,
    step_flags,
)

__all__ = [
    "ArithNoise",
    "HELDOUT_FRACTION",
    "Part",
    "answer_correct",
    "char_rewards",
    "exact_match",
    "is_conflict_pair",
    "is_heldout_prompt",
    "make_heldout_prompts",
    "make_preference_pairs",
    "make_sft_data",
    "noisy_response",
    "oracle_token_rewards",
    "parse_prompt",
    "parse_response",
    "preference_stats",
    "response_parses",
    "score_responses",
    "solve",
    "step_accuracy",
    "step_flags",
]
