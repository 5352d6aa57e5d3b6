"""The seeded credit-assignment task (segrl.tasks.arith): generators, step checks, oracle rewards, metrics."""

import random

import pytest

from segrl.tasks import arith
from segrl.tasks.arith import (
    ArithNoise,
    answer_correct,
    exact_match,
    is_conflict_pair,
    is_heldout_prompt,
    make_heldout_prompts,
    make_preference_pairs,
    make_sft_data,
    oracle_token_rewards,
    preference_stats,
    response_parses,
    score_responses,
    solve,
    step_accuracy,
    step_flags,
)

P = "7+3+6+2="  # running sums 10, 16, 18


# --------------------------------------------------------------------------------------------------
# Hand examples
# --------------------------------------------------------------------------------------------------


def test_solve_hand():
    assert solve(P) == "7+3=10;10+6=16;16+2=18;=18"
    assert solve("9+9=") == "9+9=18;=18"


@pytest.mark.parametrize("response, flags", [
    ("7+3=10;10+6=16;16+2=18;=18", [True, True, True, True]),
    # dropped carry at step 0 (10 -> 0); later steps add correctly to the written value; answer wrong
    ("7+3=0;0+6=6;6+2=8;=8", [False, True, True, False]),
    # copy error: 11+6=17 is right arithmetic but the first operand should be the written 10
    ("7+3=10;11+6=17;17+2=19;=19", [True, False, True, False]),
    # wrong second operand (5 is not the prompt's next term 6)
    ("7+3=10;10+5=15;15+2=17;=17", [True, False, True, False]),
    # a slip that is not carried forward: step 1 wrong, step 2 starts from the written 17 -> wrong too
    ("7+3=10;10+6=17;16+2=18;=18", [True, False, False, True]),
    # an extra step is wrong even when its arithmetic is right
    ("7+3=10;10+6=16;16+2=18;18+1=19;=19", [True, True, True, False, False]),
    # junk part; the following step cannot copy from it and is checked against the true sum 16
    ("7+3=10;ten+6;16+2=18;=18", [True, False, True, True]),
    # '=N' that is not last is junk
    ("7+3=10;=10;16+2=18", [True, False, True]),
    ("", [False]),
])
def test_step_flags_hand(response, flags):
    assert step_flags(P, response) == flags


def test_metrics_hand():
    right = "7+3=10;10+6=16;16+2=18;=18"
    assert step_accuracy(P, right) == 1.0 and exact_match(P, right) and answer_correct(P, right)
    assert response_parses(P, right)
    # whitespace around the answer and text after a newline are ignored
    assert exact_match(P, "  " + right + " \nand more") and step_accuracy(P, " " + right + "\n9+9") == 1.0
    dropped = "7+3=0;0+6=6;6+2=8;=8"
    assert step_accuracy(P, dropped) == pytest.approx(2 / 3)
    assert not exact_match(P, dropped) and not answer_correct(P, dropped) and response_parses(P, dropped)
    # truncated: 2 of 3 steps, no answer, wrong format
    truncated = "7+3=10;10+6=16"
    assert step_accuracy(P, truncated) == pytest.approx(2 / 3)
    assert not answer_correct(P, truncated) and not response_parses(P, truncated)
    # an extra (wrong) step enlarges the denominator: 3 right of 4 written
    assert step_accuracy(P, "7+3=10;10+6=16;16+2=18;18+1=19;=19") == pytest.approx(3 / 4)
    # right answer after wrong steps: answer accuracy counts it, exact match does not
    lucky = "7+3=10;10+6=17;16+2=18;=18"
    assert answer_correct(P, lucky) and not exact_match(P, lucky)
    assert not response_parses(P, "7+3=10;ten+6;16+2=18;=18")


def test_score_responses_hand():
    prompts = [P, P, "1+2+3+4="]
    responses = ["7+3=10;10+6=16;16+2=18;=18", "7+3=0;0+6=6;6+2=8;=8", "garbage"]
    scores = score_responses(prompts, responses)
    assert scores["n"] == 3
    assert scores["step_accuracy"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert scores["exact_match"] == pytest.approx(1 / 3)
    assert scores["answer_accuracy"] == pytest.approx(1 / 3)
    assert scores["parse_rate"] == pytest.approx(2 / 3)


# --------------------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------------------


def test_generators_deterministic_by_seed():
    assert make_sft_data(40, 3) == make_sft_data(40, 3)
    assert make_sft_data(40, 3) != make_sft_data(40, 4)
    assert make_preference_pairs(40, 3) == make_preference_pairs(40, 3)
    assert make_preference_pairs(40, 3) != make_preference_pairs(40, 4)
    assert make_heldout_prompts(40, 3) == make_heldout_prompts(40, 3)
    assert make_heldout_prompts(40, 3) != make_heldout_prompts(40, 4)
    # no global RNG involved
    random.seed(1)
    a = make_sft_data(10, 0)
    random.seed(2)
    assert make_sft_data(10, 0) == a


def test_sft_format_and_term_range():
    rows = make_sft_data(200, 0, min_terms=2, max_terms=3)
    assert all(set(r) == {"prompt", "completion"} for r in rows)
    assert {len(arith.parse_prompt(r["prompt"])) for r in rows} == {2, 3}
    assert all(response_parses(r["prompt"], r["completion"]) for r in rows)


def test_sft_noise_is_systematic():
    clean = make_sft_data(300, 0, noise=None)
    assert all(exact_match(r["prompt"], r["completion"]) for r in clean)
    assert make_sft_data(300, 0, noise=ArithNoise(0.0, 0.0)) == clean
    # the prompts of a seed do not depend on the noise (ablations share prompts)
    assert [r["prompt"] for r in make_sft_data(300, 0)] == [r["prompt"] for r in clean]
    # carry_drop=1, slip=0: every step that needs a carry is written without it, every other step is right
    for r in make_sft_data(300, 0, noise={"carry_drop": 1.0, "slip": 0.0}):
        terms = arith.parse_prompt(r["prompt"])
        prev = terms[0]
        for step, term in zip(r["completion"].split(";")[:-1], terms[1:]):
            expected = prev + term - 10 if prev % 10 + term >= 10 else prev + term
            assert step == f"{prev}+{term}={expected}"
            prev = expected
    # default noise: the measured carry-drop rate is about 0.6 and the step accuracy about 0.7
    drops = carries = 0
    rows = make_sft_data(2000, 1)
    for r in rows:
        terms = arith.parse_prompt(r["prompt"])
        prev = terms[0]
        for step, term in zip(r["completion"].split(";")[:-1], terms[1:]):
            value = int(step.split("=")[1])
            if prev % 10 + term >= 10:
                carries += 1
                drops += value == prev + term - 10
            prev = value
    assert 0.55 < drops / carries < 0.65
    assert 0.6 < score_responses([r["prompt"] for r in rows], [r["completion"] for r in rows])["step_accuracy"] < 0.75


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_conflict_fraction_as_configured(fraction):
    n = 120
    rows = make_preference_pairs(n, 5, conflict_fraction=fraction)
    stats = preference_stats(rows)
    assert stats["conflict_fraction"] == round(n * fraction) / n
    for r in rows:
        wrong_c = step_flags(r["prompt"], r["chosen"]).count(False)
        wrong_r = step_flags(r["prompt"], r["rejected"]).count(False)
        assert wrong_c < wrong_r  # the preference is always right at the sequence level
        if is_conflict_pair(r["prompt"], r["chosen"], r["rejected"]):
            assert wrong_c >= 1 and any(step_flags(r["prompt"], r["rejected"])[:-1])
        else:
            assert wrong_c == 0
    # conflict pairs are spread over the list, not bunched at the start
    if 0 < fraction < 1:
        half = preference_stats(rows[: n // 2])["conflict_fraction"]
        assert abs(half - fraction) <= 0.05


def test_pairs_prefer_dropped_carries():
    # wrong steps sit on carry steps first: most wrong results are exactly 10 below the right one
    rows = make_preference_pairs(100, 0, conflict_fraction=0.5)
    dropped = total = 0
    for r in rows:
        for side in ("chosen", "rejected"):
            parts = r[side].split(";")[:-1]
            for step, ok in zip(parts, step_flags(r["prompt"], r[side])):
                if not ok:
                    a, rest = step.split("+")
                    b, c = map(int, rest.split("="))
                    total += 1
                    dropped += c == int(a) + b - 10
    assert total and dropped / total > 0.7


def test_heldout_disjoint_from_training():
    held = make_heldout_prompts(300, 0)
    assert len(set(held)) == 300 and all(is_heldout_prompt(p) for p in held)
    train = {r["prompt"] for r in make_sft_data(3000, 0)}
    train |= {r["prompt"] for seed in (0, 1) for r in make_preference_pairs(500, seed)}
    assert not train & set(held)
    assert not any(is_heldout_prompt(p) for p in train)
    # the partition is about 10% of prompts, independent of seeds
    rng = random.Random(0)
    sample = ["+".join(str(rng.randint(1, 9)) for _ in range(5)) + "=" for _ in range(4000)]
    assert 0.08 < sum(map(is_heldout_prompt, sample)) / 4000 < 0.12


# --------------------------------------------------------------------------------------------------
# Oracle token rewards
# --------------------------------------------------------------------------------------------------


def test_oracle_token_rewards_land_on_result_digits(tiny_tokenizer):
    from segrl.rewards.implicit import tokenize_pairs

    response = "7+3=10;10+6=6;6+2=8;=8"  # step 1 wrong (6), step 2 right (8), answer wrong (8)
    rewards = oracle_token_rewards(tiny_tokenizer, P, response)
    ids = tiny_tokenizer(response, add_special_tokens=False)["input_ids"]
    texts = [tiny_tokenizer.decode([i]) for i in ids]
    assert "".join(texts) == response
    assert len(rewards) == len(ids) + 1 and rewards[-1] == 0.0  # EOS: 0
    # one value per completion token of segrl's response layout (EOS included)
    _, _, _, batch = tokenize_pairs(tiny_tokenizer, [P], [response])
    assert int(batch.mask.sum()) == len(rewards)
    # locate tokens by character position
    pos, by_start = 0, {}
    for t, text in enumerate(texts):
        by_start[pos] = t
        pos += len(text)
    assert rewards[by_start[4]] == rewards[by_start[5]] == 1.0  # "10" of step 0
    assert rewards[by_start[12]] == -1.0                        # "6" of step 1
    assert rewards[by_start[18]] == 1.0                         # "8" of step 2
    assert rewards[by_start[21]] == -1.0                        # "8" of the answer
    assert sum(r != 0 for r in rewards) == 5                    # operands, '+', '=', ';' and EOS are 0
    assert oracle_token_rewards(tiny_tokenizer, P, response, add_eos=False) == rewards[:-1]


class _SpanTokenizer:
    """A fake fast tokenizer with given character spans as tokens (tests the multi-character rule)."""

    is_fast = True
    eos_token_id = 0

    def __init__(self, spans):
        self.spans = spans

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        assert self.spans[-1][1] == len(text)
        return {"input_ids": list(range(len(self.spans))), "offset_mapping": self.spans}


def test_char_rewards_hand():
    response = "7+3=19;19+6=25;25+2=27;=27"  # step 0 wrong (19), the next two add right, answer wrong
    chars = arith.char_rewards(P, response)
    assert {i: v for i, v in enumerate(chars) if v} == {4: -1, 5: -1, 12: 1, 13: 1, 20: 1, 21: 1, 24: -1, 25: -1}
    assert arith.char_rewards(P, "7+3=10;ten") == [0, 0, 0, 0, 1, 1, 0, -1, -1, -1]  # junk: every char


def test_oracle_multichar_tokens_blame_wins():
    response = "7+3=10;10+6=16;16+2=18;=17"  # all steps right, answer (17) wrong
    # token 0: "7+3=" (no result digit) -> 0; token 1: "10;10+6=16;16+2=1" -> +1;
    # token 2: "8;=1" mixes a right and a wrong digit -> -1 (blame wins); token 3: "7" -> -1
    tok = _SpanTokenizer([(0, 4), (4, 21), (21, 25), (25, 26)])
    assert oracle_token_rewards(tok, P, response) == [0.0, 1.0, -1.0, -1.0, 0.0]


def test_pairs_with_oracle_columns(tiny_tokenizer):
    rows = make_preference_pairs(6, 0, tokenizer=tiny_tokenizer)
    for r in rows:
        for side in ("chosen", "rejected"):
            values = r[f"{side}_token_rewards"]
            assert len(values) == len(tiny_tokenizer(r[side], add_special_tokens=False)["input_ids"]) + 1
            assert set(values) <= {-1.0, 0.0, 1.0}
        assert -1.0 in r["rejected_token_rewards"]


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call, name", [
    (lambda: make_sft_data(0), "`n`"),
    (lambda: make_sft_data(5, min_terms=1), "`min_terms`"),
    (lambda: make_sft_data(5, min_terms=5, max_terms=4), "`max_terms`"),
    (lambda: make_sft_data(5, noise={"carry_drop": 2.0}), "carry_drop"),
    (lambda: make_sft_data(5, noise=0.3), "`noise`"),
    (lambda: make_preference_pairs(5, conflict_fraction=1.5), "`conflict_fraction`"),
    (lambda: make_preference_pairs(5, max_terms=3, min_terms=2), "`max_terms`"),
    (lambda: make_heldout_prompts(100, min_terms=2, max_terms=2), "`n`"),
    (lambda: step_accuracy("7+x=", "7"), "`prompt`"),
    (lambda: score_responses([P], []), "`prompts`"),
])
def test_value_errors_name_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
