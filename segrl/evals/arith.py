"""The built-in credit-assignment suite: greedy answers to held-out running-sum prompts."""

from __future__ import annotations

from segrl.evals.generation import Generator
from segrl.tasks import arith

__all__ = ["evaluate_arith"]


def evaluate_arith(generate: Generator, *, n: int = 500, seed: int = 0, min_terms: int = 4, max_terms: int = 6,
                   max_new_tokens: int | None = None, chat: bool = False) -> tuple[dict, list[dict]]:
    """Score greedy completions of ``n`` held-out prompts (:func:`segrl.tasks.arith.make_heldout_prompts`).

    Prompts are plain text (``"7+3+6="``) unless ``chat``, since that is how
    :func:`~segrl.tasks.arith.make_sft_data` trains. The completion is cut at the first newline (the
    format has none). ``max_new_tokens`` defaults to ``12 * max_terms + 8``, room for the longest
    correct answer even at one token per character.

    Returns ``(metrics, samples)``: :func:`~segrl.tasks.arith.score_responses` and one
    ``{"prompt", "response", "step_accuracy", "exact_match"}`` dict per prompt.
    """
    prompts = arith.make_heldout_prompts(n, seed, min_terms=min_terms, max_terms=max_terms)
    max_new_tokens = max_new_tokens or 12 * max_terms + 8
    responses = generate(prompts, max_new_tokens=max_new_tokens, chat=chat, stop=["\n"], description="arith")
    metrics = arith.score_responses(prompts, responses)
    samples = [{"prompt": p, "response": r, "step_accuracy": arith.step_accuracy(p, r),
                "exact_match": arith.exact_match(p, r)} for p, r in zip(prompts, responses)]
    return metrics, samples
