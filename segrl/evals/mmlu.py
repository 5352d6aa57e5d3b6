"""MMLU by log-likelihood multiple choice, as lm-evaluation-harness's ``mmlu`` task scores it.

Data: ``cais/mmlu`` (config ``all``, split ``test``; few-shot examples from ``dev``) or a local copy
in the same format (:func:`segrl.evals.loading.load_split`): columns ``question``, ``subject``,
``choices`` (4 strings) and ``answer`` (0-3; a letter A-D is accepted too).

**Prompt** (lm-eval's ``mmlu`` template, per subject)::

    The following are multiple choice questions (with answers) about <subject, _ as space>.

    [k solved dev examples of the same subject, first k in file order, each as below followed by
     " <letter>\\n\\n"]
    <question, stripped>
    A. <choice 0>
    B. <choice 1>
    C. <choice 2>
    D. <choice 3>
    Answer:

**Scoring**: the prediction is the letter whose continuation ``" A"`` ... ``" D"`` has the highest
log-probability given the prompt (:func:`loglikelihoods`, no length normalisation); accuracy is
the fraction predicted right (lm-eval's ``acc``). Under a chat template the prompt is one user turn
and the continuations are ``"A"`` ... ``"D"`` (lm-eval drops the space there too).

``accuracy`` is over all questions (lm-eval's ``mmlu`` group: weighted by subject size);
``accuracy_macro`` is the mean of the per-subject accuracies.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from segrl.padding import pad_rows
from segrl.evals.generation import Generator, progress_bar
from segrl.evals.loading import is_data_files, load_split

__all__ = ["LETTERS", "build_prompt", "evaluate_mmlu", "format_question", "load_mmlu", "loglikelihoods", "mmlu_items"]

LETTERS = ("A", "B", "C", "D")
_COLUMNS = ("question", "subject", "choices", "answer")


def format_question(row: dict) -> str:
    """``question\\nA. ...\\nB. ...\\nC. ...\\nD. ...\\nAnswer:`` for one MMLU row."""
    lines = [str(row["question"]).strip()] + [f"{letter}. {choice}" for letter, choice in zip(LETTERS, row["choices"])]
    return "\n".join(lines) + "\nAnswer:"


def build_prompt(row: dict, shots: Sequence[dict] = ()) -> str:
    """The subject header, the solved ``shots`` and ``row``'s question (see the module docstring)."""
    subject = str(row["subject"]).replace("_", " ")
    header = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    return header + "".join(f"{format_question(s)} {LETTERS[s['answer']]}\n\n" for s in shots) + format_question(row)


def _answer_index(value, where: str) -> int:
    if isinstance(value, str) and value.strip().upper() in LETTERS:
        return LETTERS.index(value.strip().upper())
    if isinstance(value, (int,)) and not isinstance(value, bool) and 0 <= value < len(LETTERS):
        return int(value)
    raise ValueError(f"{where}: `answer` must be 0-3 or a letter A-D, got {value!r}")


def load_mmlu(name_or_path: str, split: str, *, config: str | None = "all", subjects: Sequence[str] = (),
              limit: int | None = None, arg: str = "mmlu_dataset") -> list[dict]:
    """MMLU rows (``question``, ``subject``, ``choices``, ``answer`` as 0-3), checked.

    ``subjects`` keeps only those subjects (empty: all); ``limit`` keeps the first ``limit`` rows of
    each subject (lm-eval's ``--limit`` is per subject task too). Row order is the file's.
    """
    ds = load_split(name_or_path, split, config=config, arg=arg)
    missing = [c for c in _COLUMNS if c not in ds.column_names]
    if missing:
        raise ValueError(f"`{arg}` {name_or_path!r} ({split}) lacks column(s) {missing}; MMLU rows need "
                         f"{list(_COLUMNS)} (got {ds.column_names})")
    wanted = set(subjects)
    rows, per_subject = [], defaultdict(int)
    for i, row in enumerate(ds):
        where = f"`{arg}` {split} row {i}"
        if wanted and row["subject"] not in wanted:
            continue
        if limit is not None and per_subject[row["subject"]] >= limit:
            continue
        choices = list(row["choices"])
        if len(choices) != len(LETTERS):
            raise ValueError(f"{where}: `choices` must hold {len(LETTERS)} options, got {len(choices)}")
        rows.append({"question": row["question"], "subject": row["subject"], "choices": choices,
                     "answer": _answer_index(row["answer"], where)})
        per_subject[row["subject"]] += 1
    if unknown := wanted - set(per_subject):
        raise ValueError(f"`mmlu_subjects` {sorted(unknown)} not found in `{arg}` {name_or_path!r} ({split})")
    if not rows:
        raise ValueError(f"`{arg}` {name_or_path!r} ({split}) has no rows")
    return rows


def _encode_pair(tokenizer, context: str, continuation: str, add_special_tokens: bool) -> tuple[list[int], list[int]]:
    # lm-eval's rule: trailing whitespace of the context moves to the continuation, the pair is
    # tokenised jointly and split where the context's own tokens end.
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=add_special_tokens)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=add_special_tokens)["input_ids"]
    return ctx, whole[len(ctx):]


@torch.no_grad()
def loglikelihoods(model, tokenizer, requests: Sequence[tuple[str, str]], *, batch_size: int = 16,
                   add_special_tokens: bool = True, progress: bool = False,
                   description: str = "log-likelihoods") -> list[float]:
    """``log p(continuation | context)`` (summed over the continuation's tokens) for each request.

    Each ``(context, continuation)`` is tokenised as lm-eval does (jointly, split at the context's
    length). The model reads ``(context + continuation)[:-1]``, left-truncated to its
    ``max_position_embeddings``, and continuation token ``j`` is scored by the logits one position
    before it. Requests whose model inputs are identical (a shared context with one-token
    continuations, as in MMLU) share one forward pass. Batches are right-padded, which leaves a
    causal model's logits at the real positions unchanged.

    Returns one float per request, in order.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    max_len = getattr(model.config, "max_position_embeddings", None)
    inputs: dict[tuple[int, ...], int] = {}  # model input -> index of its forward pass
    plan = []  # per request: (forward index, continuation ids)
    for i, (context, continuation) in enumerate(requests):
        if not context:
            raise ValueError(f"request {i}: the context is empty")
        ctx, cont = _encode_pair(tokenizer, context, continuation, add_special_tokens)
        if not cont:
            raise ValueError(f"request {i}: the continuation {continuation!r} encodes to no tokens")
        full = ctx + cont
        if max_len is not None and len(cont) >= max_len:
            raise ValueError(f"request {i}: the continuation has {len(cont)} tokens, the model takes {max_len}")
        key = tuple(full[:-1][-max_len:] if max_len else full[:-1])
        plan.append((inputs.setdefault(key, len(inputs)), cont))
    keys = list(inputs)
    users = defaultdict(list)  # forward index -> the requests it scores
    for i, (fwd, _) in enumerate(plan):
        users[fwd].append(i)
    order = sorted(range(len(keys)), key=lambda k: -len(keys[k]))
    out = [0.0] * len(plan)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with progress_bar(len(keys), description, progress) as advance:
        for lo in range(0, len(order), batch_size):
            rows = order[lo: lo + batch_size]
            ids, mask = pad_rows([keys[k] for k in rows], pad)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # Shape: (B, T, V)
            for r, k in enumerate(rows):
                n = len(keys[k])
                for i in users[k]:
                    cont = plan[i][1]
                    # continuation token j sits at input position n - len(cont) + j + 1: its logits are one before
                    positions = torch.arange(n - len(cont), n, device=logits.device)
                    logp = torch.log_softmax(logits[r, positions].float(), dim=-1)  # Shape: (len(cont), V)
                    out[i] = logp.gather(-1, torch.tensor(cont, device=logits.device)[:, None]).sum().item()
            advance(len(rows))
    return out


def mmlu_items(dataset: str = "cais/mmlu", *, config: str | None = "all", split: str = "test",
               subjects: Sequence[str] = (), num_fewshot: int = 0, fewshot_dataset: str | None = None,
               fewshot_split: str = "dev", limit: int | None = None) -> list[dict]:
    """The rows to score, each with its plain-text ``prompt`` (:func:`build_prompt`).

    ``num_fewshot`` solved examples per prompt come from ``fewshot_split`` of ``fewshot_dataset``
    (default: ``dataset``), the first ones of the same subject (lm-eval's ``first_n``).
    """
    if num_fewshot < 0:
        raise ValueError(f"`mmlu_num_fewshot` must be >= 0, got {num_fewshot}")
    rows = load_mmlu(dataset, split, config=config, subjects=subjects, limit=limit)
    shots: dict[str, list[dict]] = defaultdict(list)
    if num_fewshot:
        if fewshot_dataset is None and is_data_files(dataset):
            raise ValueError("`mmlu_num_fewshot` > 0 with data file(s) as `mmlu_dataset` needs `mmlu_fewshot_dataset` "
                             "(the dev file); a file holds one split")
        for row in load_mmlu(fewshot_dataset or dataset, fewshot_split, config=config,
                             subjects=sorted({r["subject"] for r in rows}),
                             arg="mmlu_fewshot_dataset" if fewshot_dataset else "mmlu_dataset"):
            shots[row["subject"]].append(row)
        for subject in sorted({r["subject"] for r in rows}):
            if len(shots[subject]) < num_fewshot:
                raise ValueError(f"`mmlu_num_fewshot` is {num_fewshot} but {fewshot_split!r} has only "
                                 f"{len(shots[subject])} example(s) of {subject!r}")
    return [{**row, "prompt": build_prompt(row, shots[row["subject"]][:num_fewshot])} for row in rows]


def evaluate_mmlu(generate: Generator, *, dataset: str = "cais/mmlu", config: str | None = "all",
                  split: str = "test", subjects: Sequence[str] = (), num_fewshot: int = 0,
                  fewshot_dataset: str | None = None, fewshot_split: str = "dev", limit: int | None = None,
                  chat: bool = False, items: list[dict] | None = None) -> tuple[dict, list[dict]]:
    """Log-likelihood multiple-choice accuracy on MMLU (see the module docstring).

    Uses ``generate``'s model, tokenizer, batch size and progress setting (no text is generated).
    The data arguments go to :func:`mmlu_items`; ``items`` already made by it replaces them.

    Returns ``(metrics, samples)``: ``{"n", "accuracy", "accuracy_macro", "<subject>/accuracy", ...}``
    and one ``{"subject", "question", "choices", "answer", "pred", "correct", "loglikelihoods"}`` per
    question (answer and pred as letters).
    """
    if items is None:
        items = mmlu_items(dataset, config=config, split=split, subjects=subjects, num_fewshot=num_fewshot,
                           fewshot_dataset=fewshot_dataset, fewshot_split=fewshot_split, limit=limit)
    rows = items
    tokenizer = generate.tokenizer
    requests = []
    for row in rows:
        context = generate.format(row["prompt"], chat=True) if chat else row["prompt"]
        requests += [(context, letter if chat else f" {letter}") for letter in LETTERS]
    scores = loglikelihoods(generate.model, tokenizer, requests, batch_size=generate.batch_size,
                            add_special_tokens=not chat, progress=generate.progress, description="mmlu")
    samples = []
    for i, row in enumerate(rows):
        lls = scores[4 * i: 4 * i + 4]
        pred = max(range(len(LETTERS)), key=lambda j: lls[j])  # ties: the first letter, like argmax
        samples.append({"subject": row["subject"], "question": row["question"], "choices": row["choices"],
                        "answer": LETTERS[row["answer"]], "pred": LETTERS[pred], "correct": pred == row["answer"],
                        "loglikelihoods": lls})
    by_subject = defaultdict(list)
    for s in samples:
        by_subject[s["subject"]].append(s["correct"])
    per_subject = {subject: sum(v) / len(v) for subject, v in sorted(by_subject.items())}
    metrics = {"n": len(samples), "accuracy": sum(s["correct"] for s in samples) / len(samples),
               "accuracy_macro": sum(per_subject.values()) / len(per_subject)}
    metrics.update({f"{subject}/accuracy": acc for subject, acc in per_subject.items()})
    return metrics, samples
