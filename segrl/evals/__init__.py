"""Evaluation suites behind ``segrl eval``.

- :mod:`segrl.evals.arith` — the built-in credit-assignment task (:mod:`segrl.tasks.arith`).
- :mod:`segrl.evals.humaneval` — HumanEval pass@1, programs run in :mod:`segrl.evals.sandbox`.
- :mod:`segrl.evals.reasoning` — GSM-style problems from reasoning-gym.
- :mod:`segrl.evals.refusal` — refusal rate on adversarial prompts with a rules or reward-model judge.
- :mod:`segrl.evals.mmlu` — MMLU, log-likelihood multiple choice (lm-eval's ``mmlu`` prompt).
- :mod:`segrl.evals.gsm8k` — GSM8K, greedy generation and answer extraction (lm-eval's ``gsm8k``).

:func:`run_eval` runs the suites named in an :class:`EvalConfig` on one model and writes
``eval_results.json`` / ``eval_results.md``. Attributes are imported lazily (torch and
transformers only load when a suite needs them).
"""

from __future__ import annotations

from segrl._lazy import lazy_exports

_EXPORTS = {
    "EvalConfig": "segrl.evals.config",
    "SUITES": "segrl.evals.config",
    "run_eval": "segrl.evals.runner",
    "Generator": "segrl.evals.generation",
    "load_causal_lm": "segrl.evals.generation",
    "evaluate_arith": "segrl.evals.arith",
    "evaluate_humaneval": "segrl.evals.humaneval",
    "evaluate_reasoning_gym": "segrl.evals.reasoning",
    "evaluate_refusal": "segrl.evals.refusal",
    "evaluate_mmlu": "segrl.evals.mmlu",
    "evaluate_gsm8k": "segrl.evals.gsm8k",
    "loglikelihoods": "segrl.evals.mmlu",
    "mmlu_items": "segrl.evals.mmlu",
    "gsm8k_items": "segrl.evals.gsm8k",
    "load_split": "segrl.evals.loading",
    "extract_answer": "segrl.evals.reasoning",
    "load_adversarial_prompts": "segrl.evals.refusal",
    "make_judge": "segrl.evals.refusal",
    "PhraseJudge": "segrl.evals.refusal",
    "RewardModelJudge": "segrl.evals.refusal",
    "run_python": "segrl.evals.sandbox",
    "SandboxResult": "segrl.evals.sandbox",
    "write_report": "segrl.evals.report",
}

__getattr__, __dir__, __all__ = lazy_exports("segrl.evals", _EXPORTS)
