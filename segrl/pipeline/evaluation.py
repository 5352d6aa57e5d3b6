"""Held-out evaluation on the credit-assignment task: greedy, batched, in memory.

A thin layer over :class:`segrl.evals.Generator` (the generation ``segrl eval`` uses) and
:func:`segrl.tasks.score_responses`, so a model being trained can be scored without saving it.
"""

from __future__ import annotations

import copy
import time

import torch

__all__ = ["ArithEvaluator", "heldout_split"]

METRICS = ("step_accuracy", "exact_match", "answer_accuracy", "parse_rate")


def heldout_split(n_dev: int, n_test: int, seed: int = 0, *, min_terms: int = 4, max_terms: int = 6):
    """Two disjoint lists of held-out prompts (:func:`segrl.tasks.make_heldout_prompts`): ``dev`` for
    learning curves and checkpoint selection, ``test`` for the reported numbers."""
    from segrl.tasks import make_heldout_prompts

    prompts = make_heldout_prompts(n_dev + n_test, seed, min_terms=min_terms, max_terms=max_terms)
    return prompts[:n_dev], prompts[n_dev:]


class ArithEvaluator:
    """Greedy held-out evaluation of an in-memory causal LM.

    Args:
        tokenizer: the policy tokenizer (copied and switched to left padding).
        prompts: held-out prompts.
        batch_size: prompts per ``generate`` call.
        max_new_tokens: default ``12 * max_terms + 8`` as ``segrl eval`` (room for the longest answer).
    """

    def __init__(self, tokenizer, prompts, *, batch_size: int = 100, max_new_tokens: int | None = None,
                 max_terms: int = 6):
        if not prompts:
            raise ValueError("`prompts` is empty")
        self.tokenizer = copy.deepcopy(tokenizer)
        self.tokenizer.padding_side = "left"
        self.prompts = list(prompts)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens or 12 * max_terms + 8
        self.seconds = 0.0
        self.calls = 0

    @torch.no_grad()
    def generate(self, model) -> list[str]:
        from segrl.evals.generation import Generator

        was_training = model.training
        model.eval()
        try:
            gen = Generator(model, self.tokenizer, batch_size=self.batch_size, progress=False)
            return gen(self.prompts, max_new_tokens=self.max_new_tokens, stop=["\n"])
        finally:
            model.train(was_training)

    def __call__(self, model, *, return_samples: bool = False):
        """``{"step_accuracy", "exact_match", "answer_accuracy", "parse_rate", "n"}`` (and the
        responses with ``return_samples``)."""
        from segrl.tasks import score_responses

        t0 = time.perf_counter()
        responses = self.generate(model)
        metrics = score_responses(self.prompts, responses)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return (metrics, responses) if return_samples else metrics


class CheckpointTracker:
    """Evaluates a model being trained on the dev prompts at given steps, and keeps the weights of
    the best checkpoint (by dev step accuracy, ties to the earlier one) in memory.

    ``curve`` lists ``{"step", "step_accuracy", "exact_match", "answer_accuracy", "parse_rate"}``;
    step 0 (the starting model) may be added with :meth:`add_start`, and is never "best".
    """

    def __init__(self, evaluator: ArithEvaluator, steps):
        self.evaluator = evaluator
        self.steps = {int(s) for s in steps}
        self.curve: list[dict] = []
        self.best_step: int | None = None
        self.best_state: dict | None = None
        self._best = -1.0

    def add_start(self, metrics: dict) -> None:
        self.curve.append({"step": 0, **{k: metrics[k] for k in METRICS}})

    def last(self) -> str:
        trained = [c for c in self.curve if c["step"] > 0]
        return f"dev step acc {trained[-1]['step_accuracy']:.3f}" if trained else ""

    def maybe(self, step: int, model) -> bool:
        if step not in self.steps or any(c["step"] == step for c in self.curve):
            return False
        metrics = self.evaluator(model)
        self.curve.append({"step": step, **{k: metrics[k] for k in METRICS}})
        if metrics["step_accuracy"] > self._best:
            self._best = metrics["step_accuracy"]
            self.best_step = step
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return True


class EvalCallback:
    """A transformers ``TrainerCallback`` that feeds a :class:`CheckpointTracker`."""

    def __new__(cls, tracker: CheckpointTracker):
        from transformers import TrainerCallback

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):
                tracker.maybe(state.global_step, model)

        return _Callback()
