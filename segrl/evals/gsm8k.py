"""GSM8K by greedy generation and answer extraction, as lm-evaluation-harness's ``gsm8k`` task does.

Data: ``openai/gsm8k`` (config ``main``, split ``test``; few-shot examples from ``train``) or a local
copy in the same format (:func:`segrl.evals.loading.load_split`): columns ``question`` and
``answer``, the answer being worked reasoning that ends with ``#### <number>``.

**Prompt** (lm-eval's ``gsm8k``: ``k`` = 5 solved train examples, drawn for each test question in
turn by one ``random.Random(seed)``, so ``seed`` 1234 reproduces lm-eval's choice)::

    Question: <train question>
    Answer: <its full answer, reasoning and #### N>

    ... (k examples)

    Question: <test question>
    Answer:

Generation is greedy, stops at ``"Question:"`` (and ``</s>``, ``<|im_end|>``), ``max_new_tokens``
256 by default. Under a chat template the prompt is one user turn.

**Scoring** (exact numeric match after normalisation: thousands separators, a trailing period and
a zero fractional part dropped, so ``"2,460."`` matches ``2460``):

- ``exact_match`` ("flexible"): :func:`segrl.evals.reasoning.extract_answer` — the number after
  the last ``####``, else in the last ``\\boxed{}``, else after the last "answer is", else the last
  number of the completion (lm-eval's flexible-extract takes the last number too);
- ``exact_match_strict``: only a ``#### N`` in the completion counts (lm-eval's strict-match).

The target is the number after the dataset answer's ``####``. The one deliberate difference from
lm-eval: it compares the extracted strings (after removing ``,``, ``$`` and a trailing ``.``), so
``"$1,000.00"`` or ``"3.50"`` against ``1000`` / ``3.5`` counts as wrong there and right here.
"""

from __future__ import annotations

import random
import re

from segrl.evals.generation import Generator
from segrl.evals.loading import is_data_files, load_split
from segrl.evals.reasoning import extract_answer

__all__ = ["STOP_SEQUENCES", "build_prompt", "evaluate_gsm8k", "extract_strict", "gsm8k_items", "load_gsm8k",
           "target_answer"]

#: Where a completion ends (lm-eval's ``until`` for gsm8k).
STOP_SEQUENCES = ("Question:", "</s>", "<|im_end|>")
_STRICT = re.compile(r"#### (-?[0-9.,]+)")


def target_answer(answer: str) -> str:
    """The normalised number after the ``####`` of a GSM8K reference answer."""
    if "####" not in answer:
        raise ValueError(f"a GSM8K `answer` must end with '#### <number>', got {answer[-80:]!r}")
    value = extract_answer("####" + answer.rsplit("####", 1)[1])
    if value is None:
        raise ValueError(f"no number after '####' in the GSM8K answer {answer[-80:]!r}")
    return value


def extract_strict(completion: str) -> str | None:
    """The normalised number of the first ``#### N`` in ``completion`` (lm-eval's strict-match), or ``None``."""
    match = _STRICT.search(completion)
    return extract_answer("#### " + match.group(1)) if match else None


def format_question(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def build_prompt(question: str, shots=()) -> str:
    """The solved ``shots`` (dicts with ``question`` and ``answer``), then ``question``, ``\\n\\n``-separated."""
    return "".join(f"{format_question(s['question'])} {s['answer']}\n\n" for s in shots) + format_question(question)


def load_gsm8k(name_or_path: str, split: str, *, config: str | None = "main", limit: int | None = None,
               arg: str = "gsm8k_dataset") -> list[dict]:
    """GSM8K rows ``{"question", "answer", "target"}`` (``target`` from :func:`target_answer`), first ``limit``."""
    ds = load_split(name_or_path, split, config=config, arg=arg)
    missing = [c for c in ("question", "answer") if c not in ds.column_names]
    if missing:
        raise ValueError(f"`{arg}` {name_or_path!r} ({split}) lacks column(s) {missing}; GSM8K rows need "
                         f"question and answer (got {ds.column_names})")
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    if len(ds) == 0:
        raise ValueError(f"`{arg}` {name_or_path!r} ({split}) has no rows")
    rows = []
    for i, row in enumerate(ds):
        try:
            target = target_answer(row["answer"])
        except ValueError as err:
            raise ValueError(f"`{arg}` {split} row {i}: {err}") from err
        rows.append({"question": row["question"], "answer": row["answer"], "target": target})
    return rows


def gsm8k_items(dataset: str = "openai/gsm8k", *, config: str | None = "main", split: str = "test",
                num_fewshot: int = 5, fewshot_dataset: str | None = None, fewshot_split: str = "train",
                fewshot_seed: int = 1234, limit: int | None = None) -> list[dict]:
    """The rows to score (:func:`load_gsm8k`), each with its plain-text ``prompt`` (:func:`build_prompt`).

    For each row in turn ``num_fewshot`` examples are drawn from ``fewshot_split`` of
    ``fewshot_dataset`` (default: ``dataset``) by one ``random.Random(fewshot_seed)``.
    """
    if num_fewshot < 0:
        raise ValueError(f"`gsm8k_num_fewshot` must be >= 0, got {num_fewshot}")
    rows = load_gsm8k(dataset, split, config=config, limit=limit)
    pool: list[dict] = []
    if num_fewshot:
        if fewshot_dataset is None and is_data_files(dataset):
            raise ValueError("`gsm8k_num_fewshot` > 0 with data file(s) as `gsm8k_dataset` needs "
                             "`gsm8k_fewshot_dataset` (the train file); a file holds one split")
        pool = load_gsm8k(fewshot_dataset or dataset, fewshot_split, config=config,
                          arg="gsm8k_fewshot_dataset" if fewshot_dataset else "gsm8k_dataset")
        if len(pool) < num_fewshot:
            raise ValueError(f"`gsm8k_num_fewshot` is {num_fewshot} but {fewshot_split!r} has only {len(pool)} rows")
    rng = random.Random(fewshot_seed)
    return [{**r, "prompt": build_prompt(r["question"], rng.sample(pool, num_fewshot) if num_fewshot else ())}
            for r in rows]


def evaluate_gsm8k(generate: Generator, *, dataset: str = "openai/gsm8k", config: str | None = "main",
                   split: str = "test", num_fewshot: int = 5, fewshot_dataset: str | None = None,
                   fewshot_split: str = "train", fewshot_seed: int = 1234, limit: int | None = None,
                   max_new_tokens: int = 256, chat: bool = False,
                   items: list[dict] | None = None) -> tuple[dict, list[dict]]:
    """Greedy exact-match accuracy on GSM8K (see the module docstring).

    The data arguments go to :func:`gsm8k_items`; ``items`` already made by it replaces them.

    Returns ``(metrics, samples)``: ``{"n", "exact_match", "exact_match_strict", "extracted"}`` (the
    last: fraction of completions with any number) and one ``{"question", "target", "completion",
    "extracted", "extracted_strict", "correct", "correct_strict"}`` per question.
    """
    if items is None:
        items = gsm8k_items(dataset, config=config, split=split, num_fewshot=num_fewshot,
                            fewshot_dataset=fewshot_dataset, fewshot_split=fewshot_split,
                            fewshot_seed=fewshot_seed, limit=limit)
    rows, prompts = items, [r["prompt"] for r in items]
    completions = generate(prompts, max_new_tokens=max_new_tokens, chat=chat, stop=STOP_SEQUENCES,
                           description="gsm8k")
    samples = []
    for row, completion in zip(rows, completions):
        flexible, strict = extract_answer(completion), extract_strict(completion)
        samples.append({"question": row["question"], "target": row["target"], "completion": completion,
                        "extracted": flexible, "extracted_strict": strict, "correct": flexible == row["target"],
                        "correct_strict": strict == row["target"]})
    n = len(samples)
    metrics = {"n": n, "exact_match": sum(s["correct"] for s in samples) / n,
               "exact_match_strict": sum(s["correct_strict"] for s in samples) / n,
               "extracted": sum(s["extracted"] is not None for s in samples) / n}
    return metrics, samples
