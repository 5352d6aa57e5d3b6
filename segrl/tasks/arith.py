"""A seeded credit-assignment benchmark: multi-step addition with running sums.

::

    prompt     "7+3+6+2="
    response   "7+3=10;10+6=16;16+2=18;=18"

A response is a ``;``-separated list of *parts*: one ``a+b=c`` step per prompt term after the
first, then the answer ``=N``. Correctness is known for every step, so the task measures whether a
training method assigns credit to the right tokens (the setting of ASR, arXiv 2411.00809).

Design, following the feasibility study in ``research/asr-toy-findings.md``:

- **Systematic SFT noise.** :func:`make_sft_data` drops the carry on steps that need one with
  probability ``carry_drop`` (0.6) and slips by ±1-3 on the other steps with probability ``slip``
  (0.05); later steps build on the *written* value, as a model's own samples would. An SFT model
  then writes wrong carries greedily but gets many of them right when sampling, which gives
  preference learning something to fix. (With purely random noise greedy decoding is mostly right
  and DPO has nothing to do.)
- **Step correctness** (:func:`parse_response`): a step is correct when it parses, its first operand
  is the previous step's written result (the first term for step 0), its second operand is the next
  prompt term, and its result is their sum. So an early error makes the *answer* wrong, but the
  later steps that add correctly to the wrong value are correct steps.
- **Conflict pairs** (:func:`make_preference_pairs`): the chosen response has fewer wrong parts than
  the rejected one, yet in a chosen ``conflict_fraction`` of the pairs the chosen response contains a
  wrong step while the rejected one contains correct steps: a sequence-level label then disagrees
  with some of its own tokens on both sides, which is what ASR's segment mask targets.
- **Oracle token rewards** (:func:`oracle_token_rewards`): +1 on the result digits of a correct step
  (and of a correct answer), -1 on those of a wrong one, 0 on operands, ``+``, ``=``, ``;`` and EOS,
  so those tokens drop out of both masks (the "finer oracle" that avoids the ``=====3`` collapse).
- **Held-out prompts** are a fixed hash partition of the prompt space (:func:`is_heldout_prompt`),
  so every training set, whatever its seed, is disjoint from every held-out set.

Everything is a pure function of its arguments (``random.Random(seed)``, no global state).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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

#: Share of the prompt space reserved for evaluation (a fixed hash partition, independent of seeds).
HELDOUT_FRACTION = 0.1
# A response never contains a newline; text after one is the model rambling on, not the answer.
_STEP = re.compile(r"(\d+)\+(\d+)=(\d+)")
_ANSWER = re.compile(r"=(\d+)")
_PROMPT = re.compile(r"\d+(\+\d+)+=")


@dataclass(frozen=True)
class ArithNoise:
    """The systematic error model of the SFT data (and of the wrong steps in preference pairs).

    Attributes:
        carry_drop: probability that a step needing a carry (``prev % 10 + term >= 10``) is written
            without it (``sum - 10``).
        slip: probability that a step *not* needing a carry is written off by a random ±1..3.
    """

    carry_drop: float = 0.6
    slip: float = 0.05

    def __post_init__(self):
        for name in ("carry_drop", "slip"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`noise.{name}` must be in [0, 1], got {value}")


@dataclass(frozen=True)
class Part:
    """One ``;``-separated part of a response, as judged by :func:`parse_response`.

    Attributes:
        kind: ``"step"`` (``a+b=c``), ``"answer"`` (``=N`` as the last part) or ``"junk"``.
        start, end: character span of the part in the response (``;`` excluded).
        result: character span of the digits that carry its correctness (``c`` of a step, ``N`` of
            the answer); ``None`` for junk.
        correct: whether the part is right (junk never is; steps beyond the prompt's count never are).
    """

    kind: str
    start: int
    end: int
    result: tuple[int, int] | None
    correct: bool


# --------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------


def _check_terms_range(min_terms: int, max_terms: int) -> None:
    if min_terms < 2:
        raise ValueError(f"`min_terms` must be >= 2 (at least one step), got {min_terms}")
    if max_terms < min_terms:
        raise ValueError(f"`max_terms` ({max_terms}) must be >= `min_terms` ({min_terms})")


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be a positive int, got {n!r}")


def parse_prompt(prompt: str) -> list[int]:
    """The terms of a prompt such as ``"7+3+6="``. Raises ``ValueError`` naming ``prompt``."""
    if not isinstance(prompt, str) or not _PROMPT.fullmatch(prompt.strip()):
        raise ValueError(f"`prompt` must look like '7+3+6=' (two or more terms), got {prompt!r}")
    return [int(t) for t in prompt.strip()[:-1].split("+")]


def _prompt_text(terms: Sequence[int]) -> str:
    return "+".join(map(str, terms)) + "="


def is_heldout_prompt(prompt: str) -> bool:
    """Whether ``prompt`` belongs to the evaluation side of the fixed train / held-out partition.

    An unkeyed stable hash (BLAKE2b of the prompt text) rather than a seeded draw: the partition
    is then the same for every seed, process and machine, so no training generator can ever emit a
    held-out prompt.
    """
    digest = hashlib.blake2b(prompt.strip().encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < HELDOUT_FRACTION * 2**64


def _draw_terms(rng: random.Random, min_terms: int, max_terms: int) -> list[int]:
    return [rng.randint(1, 9) for _ in range(rng.randint(min_terms, max_terms))]


def _draw_train_terms(rng: random.Random, min_terms: int, max_terms: int) -> list[int]:
    while True:  # ~10% rejection; the training side of the partition is never empty for >= 2 terms
        terms = _draw_terms(rng, min_terms, max_terms)
        if not is_heldout_prompt(_prompt_text(terms)):
            return terms


def make_heldout_prompts(n: int, seed: int = 0, *, min_terms: int = 4, max_terms: int = 6) -> list[str]:
    """``n`` distinct evaluation prompts, disjoint from every training prompt of this module.

    Raises ``ValueError`` when ``n`` exceeds half the expected held-out pool for the term range
    (drawing distinct prompts would otherwise take very long or never end).
    """
    _check_n(n)
    _check_terms_range(min_terms, max_terms)
    pool = HELDOUT_FRACTION * sum(9**k for k in range(min_terms, max_terms + 1))
    if n > pool / 2:
        raise ValueError(
            f"`n` ({n}) is too large for prompts of {min_terms}-{max_terms} terms: the held-out pool has about "
            f"{int(pool)} distinct prompts; lower `n` or raise `max_terms`"
        )
    rng = random.Random(f"heldout-{seed}")
    seen: dict[str, None] = {}  # insertion-ordered set
    while len(seen) < n:
        prompt = _prompt_text(_draw_terms(rng, min_terms, max_terms))
        if is_heldout_prompt(prompt):
            seen.setdefault(prompt)
    return list(seen)


# --------------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------------


def _needs_carry(prev: int, term: int) -> bool:
    return prev % 10 + term >= 10


def _slip(rng: random.Random, value: int) -> int:
    """A non-zero error in [-3, 3] that keeps ``value + error`` non-negative."""
    return rng.choice([e for e in (-3, -2, -1, 1, 2, 3) if value + e >= 0])


def _write(terms: Sequence[int], wrong_value) -> str:
    """The running-sum response; ``wrong_value(j, prev, term)`` returns the value written at step
    ``j`` (``None`` for the true sum). Later steps build on the written value."""
    parts, prev = [], terms[0]
    for j, term in enumerate(terms[1:]):
        value = wrong_value(j, prev, term)
        value = prev + term if value is None else value
        parts.append(f"{prev}+{term}={value}")
        prev = value
    parts.append(f"={prev}")
    return ";".join(parts)


def solve(prompt: str) -> str:
    """The correct response to ``prompt``, e.g. ``"7+3=10;10+6=16;=16"`` for ``"7+3+6="``."""
    return _write(parse_prompt(prompt), lambda j, prev, term: None)


def noisy_response(prompt: str, rng: random.Random, noise: ArithNoise | None = None) -> str:
    """A response written with the systematic error model ``noise`` (default :class:`ArithNoise`)."""
    noise = ArithNoise() if noise is None else noise

    def wrong_value(j, prev, term):
        total = prev + term
        if _needs_carry(prev, term):
            return total - 10 if rng.random() < noise.carry_drop else None
        return total + _slip(rng, total) if rng.random() < noise.slip else None

    return _write(parse_prompt(prompt), wrong_value)


def _with_errors(terms: Sequence[int], steps: set[int], rng: random.Random) -> str:
    """A response with exactly the steps in ``steps`` written wrong: the carry dropped where the
    step needs one (the systematic error), a ±1..3 slip otherwise."""

    def wrong_value(j, prev, term):
        if j not in steps:
            return None
        total = prev + term
        return total - 10 if _needs_carry(prev, term) else total + _slip(rng, total)

    return _write(terms, wrong_value)


# --------------------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------------------


def parse_response(prompt: str, response: str) -> list[Part]:
    """Judge every ``;``-separated part of ``response`` (see the module docstring for the rules).

    Leading / trailing whitespace is ignored and anything from the first newline on is dropped (the
    format has none), but spans index the original ``response``. Extra steps (more than the prompt
    has terms) are wrong; an ``=N`` anywhere but last is junk. An empty response is one junk part.
    """
    terms = parse_prompt(prompt)
    if not isinstance(response, str):
        raise ValueError(f"`response` must be a str, got {type(response).__name__}")
    cut = response.split("\n", 1)[0]
    start = len(cut) - len(cut.lstrip())
    body = cut.strip()
    texts = body.split(";")
    parts: list[Part] = []
    prev_written: int | None = terms[0]
    true_prev = terms[0]
    pos = start
    for k, text in enumerate(texts):
        s, e = pos, pos + len(text)
        pos = e + 1
        step = _STEP.fullmatch(text)
        answer = _ANSWER.fullmatch(text)
        if answer and k == len(texts) - 1:
            ok = int(answer.group(1)) == sum(terms)
            parts.append(Part("answer", s, e, (s + answer.start(1), s + answer.end(1)), ok))
        elif step:
            a, b, c = (int(g) for g in step.groups())
            if k < len(terms) - 1:
                # After an unparseable step the expected first operand is the true running sum.
                expected_a = prev_written if prev_written is not None else true_prev
                ok = a == expected_a and b == terms[k + 1] and c == a + b
                true_prev += terms[k + 1]
            else:
                ok = False
            parts.append(Part("step", s, e, (s + step.start(3), s + step.end(3)), ok))
            prev_written = c
        else:
            parts.append(Part("junk", s, e, None, False))
            if k < len(terms) - 1:
                true_prev += terms[k + 1]
            prev_written = None
    return parts


def step_flags(prompt: str, response: str) -> list[bool]:
    """Correctness of every part of ``response``, answer included (one flag per ``;`` part)."""
    return [p.correct for p in parse_response(prompt, response)]


def step_accuracy(prompt: str, response: str) -> float:
    """Correct steps / expected steps (the answer part excluded).

    Missing steps count as wrong; extra parts before the answer enlarge the denominator, so padding
    a response with steps cannot raise the score.
    """
    n_steps = len(parse_prompt(prompt)) - 1
    parts = [p for p in parse_response(prompt, response) if p.kind != "answer"]
    correct = sum(p.correct for p in parts)
    return correct / max(n_steps, len(parts))


def answer_correct(prompt: str, response: str) -> bool:
    """Whether the final ``=N`` part exists and ``N`` is the prompt's sum."""
    parts = parse_response(prompt, response)
    return parts[-1].kind == "answer" and parts[-1].correct


def exact_match(prompt: str, response: str) -> bool:
    """Whether the response (whitespace-trimmed, up to the first newline) is exactly :func:`solve`."""
    return response.split("\n", 1)[0].strip() == solve(prompt)


def response_parses(prompt: str, response: str) -> bool:
    """Whether the response has the right *format* whatever its numbers: as many ``a+b=c`` steps as
    the prompt needs, then ``=N``."""
    parts = parse_response(prompt, response)
    n_steps = len(parse_prompt(prompt)) - 1
    return (len(parts) == n_steps + 1 and parts[-1].kind == "answer"
            and all(p.kind == "step" for p in parts[:-1]))


def score_responses(prompts: Sequence[str], responses: Sequence[str]) -> dict:
    """Mean metrics over a batch: ``{"n", "step_accuracy", "exact_match", "answer_accuracy",
    "parse_rate"}`` (all but ``n`` in [0, 1])."""
    if isinstance(prompts, str) or isinstance(responses, str):
        raise ValueError("`prompts` and `responses` must be lists of strings, not a single string")
    if len(prompts) != len(responses):
        raise ValueError(f"`prompts` has {len(prompts)} items but `responses` has {len(responses)}; they must match")
    if not prompts:
        raise ValueError("`prompts` is empty; need at least one prompt to score")
    n = len(prompts)
    pairs = list(zip(prompts, responses))
    return {
        "n": n,
        "step_accuracy": sum(step_accuracy(p, r) for p, r in pairs) / n,
        "exact_match": sum(exact_match(p, r) for p, r in pairs) / n,
        "answer_accuracy": sum(answer_correct(p, r) for p, r in pairs) / n,
        "parse_rate": sum(response_parses(p, r) for p, r in pairs) / n,
    }


# --------------------------------------------------------------------------------------------------
# Oracle rewards
# --------------------------------------------------------------------------------------------------


def char_rewards(prompt: str, response: str) -> list[float]:
    """One oracle reward per character of ``response``.

    +1 on the result digits of a correct step or answer, -1 on those of a wrong one, 0 on operands,
    ``+``, ``=``, ``;`` and whitespace. A junk part has no result to blame, so all of its characters
    get -1.
    """
    values = [0.0] * len(response)
    for part in parse_response(prompt, response):
        span = part.result if part.result is not None else (part.start, part.end)
        for i in range(*span):
            values[i] = 1.0 if part.correct else -1.0
    return values


def oracle_token_rewards(tokenizer, prompt: str, response: str, *, add_eos: bool = True) -> list[float]:
    """:func:`char_rewards` mapped onto the tokenizer's tokens of ``response``.

    Tokens are those of ``tokenizer(response, add_special_tokens=False)`` (the response tokenised on
    its own, as :func:`segrl.rewards.implicit.tokenize_pairs` and TRL do for prompts ending on a
    token boundary), plus EOS with reward 0 when ``add_eos``, so the list has one value per
    completion token of TRL's layout. A token covering several characters takes the most negative
    non-zero value among them (blame wins), else the positive one, else 0. Needs a fast tokenizer
    (offset mappings).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("`tokenizer` must be a fast tokenizer (offset mappings are needed)")
    values = char_rewards(prompt, response)
    enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for start, end in enc["offset_mapping"]:
        covered = [v for v in values[start:end] if v != 0.0]
        out.append(min(covered) if covered and min(covered) < 0 else (max(covered) if covered else 0.0))
    if add_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("`tokenizer` has no eos token; pass add_eos=False")
        out.append(0.0)
    return out


# --------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------


def _as_noise(noise) -> ArithNoise | None:
    if noise is None or isinstance(noise, ArithNoise):
        return noise
    if isinstance(noise, Mapping):
        return ArithNoise(**noise)
    raise ValueError(f"`noise` must be an ArithNoise, a mapping of its fields, or None; got {type(noise).__name__}")


def make_sft_data(n: int, seed: int = 0, noise: ArithNoise | Mapping | None = ArithNoise(), *,
                  min_terms: int = 4, max_terms: int = 6) -> list[dict]:
    """``n`` SFT rows ``{"prompt", "completion"}`` in TRL's standard (plain-text) format.

    Completions follow the systematic error model ``noise`` (``None``: all correct). Prompts come
    from the training side of the partition, may repeat, never meet :func:`make_heldout_prompts`,
    and depend only on ``seed`` and the term range (not on ``noise``).
    TRL appends EOS itself, so completions carry none.
    """
    _check_n(n)
    _check_terms_range(min_terms, max_terms)
    noise = _as_noise(noise)
    # Separate streams: the prompts of a seed do not depend on the noise settings, so noise
    # ablations train on the same prompts.
    prompt_rng, noise_rng = random.Random(f"sft-{seed}"), random.Random(f"sft-noise-{seed}")
    rows = []
    for _ in range(n):
        prompt = _prompt_text(_draw_train_terms(prompt_rng, min_terms, max_terms))
        completion = solve(prompt) if noise is None else noisy_response(prompt, noise_rng, noise)
        rows.append({"prompt": prompt, "completion": completion})
    return rows


def _error_steps(terms: Sequence[int], k: int, rng: random.Random) -> set[int]:
    """``k`` step indices to get wrong, steps that need a carry in the correct chain first (the
    systematic error), the rest at random."""
    n_steps = len(terms) - 1
    prefix = [sum(terms[: j + 1]) for j in range(n_steps)]
    carry = [j for j in range(n_steps) if _needs_carry(prefix[j], terms[j + 1])]
    other = [j for j in range(n_steps) if j not in carry]
    rng.shuffle(carry)
    rng.shuffle(other)
    return set((carry + other)[:k])


def _n_wrong(prompt: str, response: str) -> int:
    return sum(not f for f in step_flags(prompt, response))


def is_conflict_pair(prompt: str, chosen: str, rejected: str) -> bool:
    """Whether the chosen response has a wrong part while the rejected one has a correct step."""
    chosen_wrong = not all(step_flags(prompt, chosen))
    rejected_right_step = any(p.correct and p.kind == "step" for p in parse_response(prompt, rejected))
    return chosen_wrong and rejected_right_step


def make_preference_pairs(n: int, seed: int = 0, *, conflict_fraction: float = 0.5, min_terms: int = 4,
                          max_terms: int = 6, tokenizer=None, add_eos: bool = True) -> list[dict]:
    """``n`` preference pairs ``{"prompt", "chosen", "rejected"}`` in TRL's standard format.

    The chosen response always has fewer wrong parts (answer included) than the rejected one.
    Exactly ``round(n * conflict_fraction)`` pairs, spread evenly, are *conflict* pairs
    (:func:`is_conflict_pair`): the chosen response has 1..S-2 wrong steps (S = number of steps) and the
    rejected one more, but at least one correct step. The others are *clean*: chosen all correct,
    rejected with 1..max(1, S-1) wrong steps. Wrong steps follow the systematic error model (dropped
    carries first) and propagate. Conflict pairs need S >= 3, so they use at least 4 terms.

    With ``tokenizer``, each row also gets ``chosen_token_rewards`` / ``rejected_token_rewards``
    from :func:`oracle_token_rewards` (one float per completion token, EOS included if ``add_eos``).
    Use :func:`preference_stats` to report the measured conflict fraction.
    """
    _check_n(n)
    _check_terms_range(min_terms, max_terms)
    if not 0.0 <= conflict_fraction <= 1.0:
        raise ValueError(f"`conflict_fraction` must be in [0, 1], got {conflict_fraction}")
    n_conflict = round(n * conflict_fraction)
    if n_conflict and max_terms < 4:
        raise ValueError(f"conflict pairs need at least 4 terms; `max_terms` is {max_terms} "
                         "(raise it or set `conflict_fraction` to 0)")
    # Evenly spaced so that any prefix of the list mixes both kinds.
    conflict_at = {int((k + 0.5) * n / n_conflict) for k in range(n_conflict)} if n_conflict else set()
    rng = random.Random(f"prefs-{seed}")
    rows = []
    for i in range(n):
        conflict = i in conflict_at
        while True:  # resample the rare draw where two slips cancel and the counts do not separate
            terms = _draw_train_terms(rng, max(min_terms, 4) if conflict else min_terms, max_terms)
            prompt, n_steps = _prompt_text(terms), len(terms) - 1
            if conflict:
                k_chosen = rng.randint(1, n_steps - 2)
                k_rejected = rng.randint(k_chosen + 1, n_steps - 1)
            else:
                k_chosen, k_rejected = 0, rng.randint(1, max(1, n_steps - 1))
            chosen = _with_errors(terms, _error_steps(terms, k_chosen, rng), rng)
            rejected = _with_errors(terms, _error_steps(terms, k_rejected, rng), rng)
            if _n_wrong(prompt, chosen) < _n_wrong(prompt, rejected) and \
                    is_conflict_pair(prompt, chosen, rejected) == conflict:
                break
        row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        if tokenizer is not None:
            row["chosen_token_rewards"] = oracle_token_rewards(tokenizer, prompt, chosen, add_eos=add_eos)
            row["rejected_token_rewards"] = oracle_token_rewards(tokenizer, prompt, rejected, add_eos=add_eos)
        rows.append(row)
    return rows


def preference_stats(rows: Sequence[Mapping]) -> dict:
    """Measured properties of preference rows: ``n``, ``conflict_fraction``, the mean number of wrong
    parts in chosen / rejected responses, and the fraction of rejected responses with a correct step."""
    if not rows:
        raise ValueError("`rows` is empty")
    n = len(rows)
    return {
        "n": n,
        "conflict_fraction": sum(is_conflict_pair(r["prompt"], r["chosen"], r["rejected"]) for r in rows) / n,
        "chosen_wrong_parts": sum(_n_wrong(r["prompt"], r["chosen"]) for r in rows) / n,
        "rejected_wrong_parts": sum(_n_wrong(r["prompt"], r["rejected"]) for r in rows) / n,
        "rejected_with_correct_step": sum(
            any(p.correct and p.kind == "step" for p in parse_response(r["prompt"], r["rejected"])) for r in rows
        ) / n,
    }
