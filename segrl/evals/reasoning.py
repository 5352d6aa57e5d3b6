"""GSM-style problems from ``reasoning-gym`` (procedural generators with verifiers).

``reasoning_gym.create_dataset(task, size=N, seed=s)`` gives N problems; each greedy completion is
reduced to a final answer by :func:`extract_answer` and scored by the dataset's own
``score_answer(answer, entry)`` (1.0 right, 0.0 wrong, partial credit for some near misses in
``basic_arithmetic``). GSM8K itself ships in no offline package; ``gsm_symbolic`` (GSM-Symbolic
templates) stands in for it.

**Answer extraction** (in this order, on the completion only):

1. the text after the last ``####`` (GSM8K's convention);
2. the content of the last ``\\boxed{...}``;
3. the text after the last "answer is" / "answer:" (case-insensitive);
4. otherwise the whole completion.

From the chosen text the **last number** is taken (``-?\\d[\\d,]*(\\.\\d+)?``), thousands separators
are removed and a zero fractional part is dropped (``"1,200.0"`` → ``"1200"``). A completion with
no number yields ``None`` (scored 0). Taking the last number of the completion's answer region is
what lm-eval's "flexible extract" does for GSM8K.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from segrl.evals.generation import Generator

__all__ = ["DEFAULT_TEMPLATE", "evaluate_reasoning_gym", "extract_answer"]

#: Plain-text prompt; ``{question}`` is the problem. With a chat template the question alone is sent.
DEFAULT_TEMPLATE = "Question: {question}\nAnswer:"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_ANSWER_IS = re.compile(r"answer(?:\s+is|\s*:)", re.I)


def _normalise(number: str) -> str:
    number = number.replace(",", "")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return "0" if number in ("-0", "") else number


def extract_answer(completion: str) -> str | None:
    """The final numeric answer of ``completion`` (see the module docstring), or ``None``."""
    region = completion
    if "####" in completion:
        region = completion.rsplit("####", 1)[1]
    elif boxed := _BOXED.findall(completion):
        region = boxed[-1]
    elif matches := list(_ANSWER_IS.finditer(completion)):
        region = completion[matches[-1].end():]
    numbers = _NUMBER.findall(region)
    return _normalise(numbers[-1]) if numbers else None


def evaluate_reasoning_gym(generate: Generator, *, tasks: Sequence[str] = ("gsm_symbolic",), size: int = 100,
                           seed: int = 0, max_new_tokens: int = 256, chat: bool = False,
                           template: str = DEFAULT_TEMPLATE) -> tuple[dict, list[dict]]:
    """Mean score, accuracy (score == 1) and extraction rate per task, plus their overall means.

    Returns ``(metrics, samples)`` with metrics keyed ``"<task>/score"``, ``"<task>/accuracy"``,
    ``"<task>/extracted"`` and ``"score"`` / ``"accuracy"`` over all problems, ``"n"`` the total.
    """
    try:
        import reasoning_gym
    except ImportError as err:
        raise ValueError(
            "the reasoning_gym suite needs the `reasoning-gym` package: pip install 'segrl[eval]'"
        ) from err
    if size < 1:
        raise ValueError(f"`size` must be >= 1, got {size}")
    if not tasks:
        raise ValueError("`tasks` is empty; name at least one reasoning-gym dataset (e.g. gsm_symbolic)")
    if "{question}" not in template:
        raise ValueError(f"`template` must contain '{{question}}', got {template!r}")
    metrics: dict = {}
    samples: list[dict] = []
    for task in tasks:
        try:
            dataset = reasoning_gym.create_dataset(task, size=size, seed=seed)
        except Exception as err:  # reasoning-gym raises several types for an unknown name
            raise ValueError(f"reasoning-gym has no dataset {task!r}: {err}") from err
        entries = list(dataset)
        prompts = [e["question"] if chat else template.format(question=e["question"]) for e in entries]
        completions = generate(prompts, max_new_tokens=max_new_tokens, chat=chat, description=f"reasoning_gym/{task}")
        rows = []
        for entry, completion in zip(entries, completions):
            answer = extract_answer(completion)
            score = float(dataset.score_answer(answer, entry)) if answer is not None else 0.0
            rows.append({"task": task, "question": entry["question"], "target": entry["answer"],
                         "completion": completion, "extracted": answer, "score": score})
        metrics[f"{task}/score"] = sum(r["score"] for r in rows) / len(rows)
        metrics[f"{task}/accuracy"] = sum(r["score"] >= 1.0 for r in rows) / len(rows)
        metrics[f"{task}/extracted"] = sum(r["extracted"] is not None for r in rows) / len(rows)
        samples += rows
    metrics["n"] = len(samples)
    metrics["score"] = sum(r["score"] for r in samples) / len(samples)
    metrics["accuracy"] = sum(r["score"] >= 1.0 for r in samples) / len(samples)
    return metrics, samples
