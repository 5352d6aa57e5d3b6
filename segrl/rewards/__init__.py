"""Token-reward sources in segrl's ``(B, T)`` response-token layout (see SPEC §0 and §1)."""

from segrl.rewards.implicit import (
    ResponseBatch,
    implicit_token_rewards,
    response_token_entropy,
    response_token_logprobs,
    tokenize_pairs,
)

__all__ = [
    "ResponseBatch",
    "implicit_token_rewards",
    "response_token_entropy",
    "response_token_logprobs",
    "tokenize_pairs",
]
