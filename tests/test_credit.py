"""Token credit of a reward source (segrl.credit): AUCs and first-error localisation by hand, the label
converters, and `segrl eval-rm` / `evaluate_credit` end to end on every label format and source."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from rm_fixtures import rm_env  # noqa: F401

from segrl.credit import (
    centered_rewards,
    credit_metrics,
    first_error_localization,
    labels_from_values,
    pad_lists,
    roc_auc,
    span_token_labels,
    steps_to_spans,
    unit_ids_from_labels,
)

# --------------------------------------------------------------------------------------------------
# ROC AUC
# --------------------------------------------------------------------------------------------------


def test_roc_auc_by_hand():
    # positives {0.35, 0.8} vs negatives {0.1, 0.4}: 0.35 > 0.1, 0.35 < 0.4, 0.8 > both -> 3 of 4
    assert roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)
    # a tie between a positive and a negative counts one half: positives {1, 2} vs negative {1} -> (0.5 + 1) / 2
    assert roc_auc(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([1, -1, 1])) == pytest.approx(0.75)
    assert roc_auc(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([-1, 1, 1])) == 0.0
    assert roc_auc(torch.tensor([1.0, 2.0]), torch.tensor([1, 1])) is None  # one class only
    with pytest.raises(ValueError, match="labels"):
        roc_auc(torch.tensor([1.0, 2.0]), torch.tensor([1]))


def test_roc_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = random.Random(0)
    for n in (2, 5, 40, 300):
        for _ in range(20):
            scores = [round(rng.gauss(0, 1), 1) for _ in range(n)]  # rounded: many ties
            labels = [rng.choice([1, -1]) for _ in range(n)]
            if len(set(labels)) < 2:
                continue
            ours = roc_auc(torch.tensor(scores), torch.tensor(labels))
            assert ours == pytest.approx(roc_auc_score([y > 0 for y in labels], scores), abs=1e-12)


# --------------------------------------------------------------------------------------------------
# credit_metrics by hand
# --------------------------------------------------------------------------------------------------

# chosen   r = [3, 1, 2, 2]    labels [+1, 0, -1, 0]  mean 2  -> centred [1, -1, 0, 0]
# rejected r = [-1, 0, -2, -1] labels [-1, +1, 0, 0]  mean -1 -> centred [0, 1, -1, 0]
REWARDS = torch.tensor([[3.0, 1.0, 2.0, 2.0], [-1.0, 0.0, -2.0, -1.0]])
LABELS = torch.tensor([[1, 0, -1, 0], [-1, 1, 0, 0]])
MASK = torch.ones(2, 4, dtype=torch.bool)
SIDE = torch.tensor([1, -1])


def test_credit_metrics_by_hand():
    out = credit_metrics(REWARDS, LABELS, MASK, side=SIDE)
    # raw: correct {3, 0} vs wrong {2, -1}: 3>2, 3>-1, 0<2, 0>-1 -> 3 of 4
    assert out["auc"] == pytest.approx(0.75)
    # centred: correct {1, 1} vs wrong {0, 0}
    assert out["auc_within_response"] == 1.0
    assert out["auc_chosen"] == 1.0 and out["auc_rejected"] == 1.0  # 3 > 2; 0 > -1
    assert out["auc_within_response_chosen"] == 1.0 and out["auc_within_response_rejected"] == 1.0
    assert (out["n_correct"], out["n_wrong"], out["n_chosen_correct"], out["n_rejected_wrong"]) == (2, 2, 1, 1)
    assert out["n_responses"] == 2
    # First error. Chosen: units [0, -1, 1, -1], first wrong unit 1 owns t = 1..2; drops d1 = -2, d2 = +1:
    # the largest drop (t = 1, an unlabelled token of the wrong step) is a hit. Rejected: units [0, 1, -, -],
    # first wrong unit 0 owns t = 0; the only candidate t = 1 rises (d1 = +1): a miss.
    assert out["first_error_n"] == 2 and out["first_error_hit_rate"] == 0.5
    assert out["first_error_hit_rate_chosen"] == 1.0 and out["first_error_hit_rate_rejected"] == 0.0
    # chance: chosen owns both candidates (2/2), rejected none of its one (0/1)
    assert out["first_error_chance"] == pytest.approx(0.5)


def test_within_response_centres_on_all_valid_tokens():
    # Row a: mean of [0, 0, 6] is 2 -> its correct token centres to -2; row b: mean 1 -> its wrong token to 0.
    # Centring on labelled tokens only would give 0 vs 0 (AUC 0.5); padding must not enter the mean either.
    rewards = torch.tensor([[0.0, 0.0, 6.0], [1.0, 1.0, 99.0]])
    labels = torch.tensor([[1, 0, 0], [-1, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    assert centered_rewards(rewards, mask).tolist() == [[-2.0, -2.0, 4.0], [0.0, 0.0, 0.0]]
    assert credit_metrics(rewards, labels, mask)["auc_within_response"] == 0.0


def test_sequence_level_scores_carry_no_within_response_credit():
    # Constant rewards per response (a bandit RM): raw AUC can be perfect, within-response is 0.5 and no
    # response has a drop, so none localises its first error.
    rewards = torch.tensor([[2.0, 2.0, 2.0], [-1.0, -1.0, -1.0]])
    labels = torch.tensor([[1, -1, 0], [-1, -1, 1]])
    out = credit_metrics(rewards, labels, torch.ones(2, 3, dtype=torch.bool))
    assert out["auc_within_response"] == 0.5 and out["first_error_hit_rate"] == 0.0 and out["first_error_n"] == 2


def test_credit_metrics_errors():
    with pytest.raises(ValueError, match="same"):
        credit_metrics(REWARDS, LABELS[:, :3], MASK)
    with pytest.raises(ValueError, match="labels"):
        credit_metrics(REWARDS, LABELS * 2, MASK)
    with pytest.raises(ValueError, match="NaN"):
        credit_metrics(REWARDS.index_put((torch.tensor([0]), torch.tensor([0])), torch.tensor(math.nan)), LABELS, MASK)
    with pytest.raises(ValueError, match="side"):
        credit_metrics(REWARDS, LABELS, MASK, side=torch.tensor([1]))


def test_first_error_localization_windows():
    # Units (runs of equal non-zero labels): [+1 +1] 0 [-1] 0 0 [+1]; the first wrong unit (1) owns t = 2..3.
    labels = torch.tensor([[1, 1, 0, -1, 0, 0, 1]])
    assert unit_ids_from_labels(labels).tolist() == [[0, 0, -1, 1, -1, -1, 2]]
    mask = torch.ones(1, 7, dtype=torch.bool)
    # largest drop at t = 2 (the wrong step's operand): a hit; candidates t = 1..6, 2 of them owned
    hit = first_error_localization(torch.tensor([[1.0, 1.0, -3.0, -3.0, 0.0, 0.0, 0.0]]), labels, mask)
    assert hit["first_error_hit_rate"] == 1.0 and hit["first_error_chance"] == pytest.approx(2 / 6)
    # largest drop at t = 5 (owned by the correct unit 2): a miss
    miss = first_error_localization(torch.tensor([[1.0, 1.0, 0.5, 0.5, 0.5, -3.0, 0.0]]), labels, mask)
    assert miss["first_error_hit_rate"] == 0.0
    # explicit unit ids: two adjacent wrong steps stay two units (runs would merge them)
    two = torch.tensor([[-1, -1, -1]])
    assert first_error_localization(torch.tensor([[0.0, 0.0, -1.0]]), two, torch.ones(1, 3, dtype=torch.bool),
                                    unit_ids=torch.tensor([[0, 0, 1]]))["first_error_hit_rate"] == 0.0
    assert first_error_localization(torch.tensor([[0.0, 0.0, -1.0]]), two,
                                    torch.ones(1, 3, dtype=torch.bool))["first_error_hit_rate"] == 1.0
    # no wrong unit: the response does not count
    none = first_error_localization(torch.tensor([[0.0, -1.0]]), torch.tensor([[1, 1]]), torch.ones(1, 2).bool())
    assert none["first_error_n"] == 0 and none["first_error_hit_rate"] is None


# --------------------------------------------------------------------------------------------------
# Label converters
# --------------------------------------------------------------------------------------------------


def test_labels_from_values():
    assert labels_from_values([1.0, 0, -1], 4, ends_with_eos=True, column="c", row=0) == [1, 0, -1, 0]
    assert labels_from_values([True, False], 2, ends_with_eos=False, column="c", row=0) == [1, -1]
    with pytest.raises(ValueError, match="`c` in row 3 has 2 values"):
        labels_from_values([1, 1], 4, ends_with_eos=True, column="c", row=3)
    with pytest.raises(ValueError, match="`c` in row 0"):
        labels_from_values(["x"], 1, ends_with_eos=False, column="c", row=0)


def test_steps_and_spans_to_token_labels():
    text, spans = steps_to_spans(["a+b", "cd"], [True, False], "\n")
    assert text == "a+b\ncd" and spans == [(0, 3, 1), (4, 6, -1)]
    with pytest.raises(ValueError, match="one label per step"):
        steps_to_spans(["a", "b"], [True], "\n")
    # tokens (0,2) (2,3) in span 0, (3,5) in span 1, (5,5) is EOS-like (empty)
    labels, units = span_token_labels([(0, 2), (2, 3), (3, 5), (5, 5)], [[3, 4, False], [1, 3, True]])
    assert labels == [1, 1, -1, 0] and units == [0, 0, 1, -1]
    # a token straddling a correct and a wrong span is blamed
    assert span_token_labels([(0, 4)], [[0, 2, 1], [2, 4, -1]]) == ([-1], [1])
    for bad in ([[0, 2]], [[2, 1, True]], [[0, 2, 0.5]], "0,2"):
        with pytest.raises(ValueError, match="label_spans"):
            span_token_labels([(0, 1)], bad)


def test_pad_lists():
    values, mask = pad_lists([[1.0, 2.0], [3.0]])
    assert values.tolist() == [[1.0, 2.0], [3.0, 0.0]] and mask.tolist() == [[True, True], [True, False]]


# --------------------------------------------------------------------------------------------------
# Label formats on real tokenisation, and `segrl eval-rm` end to end
# --------------------------------------------------------------------------------------------------


def test_trl_step_labels_land_on_each_steps_tokens(rm_env):
    from segrl.rm.evaluate import credit_data

    steps = [{"prompt": "7+3+6=", "completions": ["7+3=10", "10+6=15"], "labels": [True, False]}]
    data = credit_data(steps, rm_env.tokenizer, step_separator=";")
    tokens = [rm_env.tokenizer.decode([t]) for t in data.response_ids[0]]
    assert "".join(tokens) == "7+3=10;10+6=15<|eos|>" and data.label_format == "steps"
    # every character of step 0 is correct, of step 1 wrong; the separator and EOS are unlabelled
    expected = [0 if tok in (";", "<|eos|>") else (1 if k < tokens.index(";") else -1) for k, tok in enumerate(tokens)]
    assert data.labels[0] == expected
    assert data.unit_ids[0] == [0 if lab > 0 else (1 if lab < 0 else -1) for lab in expected]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _result_spans(prompt, response):
    """[start, end, ok] of every part's result digits: the built-in oracle as character spans."""
    from segrl.tasks import parse_response

    return [[p.result[0], p.result[1], p.correct] for p in parse_response(prompt, response) if p.result]


@pytest.fixture(scope="module")
def tiny_rm_dir(rm_env, tmp_path_factory):
    """A saved dense segment RM (random score head, threshold 2 nats) with a fitted normaliser."""
    from transformers import AutoModelForSequenceClassification

    from segrl.ops import LocationNormalizerCoef
    from segrl.rm import SegmentRewardModel

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(rm_env.init_dir, num_labels=1).eval()
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)
    rm = SegmentRewardModel(model, rm_env.tokenizer, threshold=2.0, reference_model=rm_env.ref_dir,
                            normalizer=LocationNormalizerCoef(a_mu=0.1, b_mu=0.0, a_sigma=0.0, b_sigma=1.0))
    out = tmp_path_factory.mktemp("credit") / "rm"
    rm.save_pretrained(out)
    return str(out)


def test_eval_rm_reports_credit_for_every_label_format(rm_env, tiny_rm_dir, tmp_path, capsys):
    from segrl.cli import main
    from segrl.credit import credit_metrics, pad_lists
    from segrl.rm import SegmentRewardModel
    from segrl.tasks import make_preference_pairs, oracle_token_rewards

    tok = rm_env.tokenizer
    rows = make_preference_pairs(12, seed=1, tokenizer=tok)
    plain = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]
    spans = [{**p, "chosen_label_spans": _result_spans(p["prompt"], p["chosen"]),
              "rejected_label_spans": _result_spans(p["prompt"], p["rejected"])} for p in plain]
    files = {"oracle": _jsonl(tmp_path / "oracle.jsonl", rows), "spans": _jsonl(tmp_path / "spans.jsonl", spans),
             "plain": _jsonl(tmp_path / "plain.jsonl", plain)}
    results = {}
    for name, data, extra in (("oracle", files["oracle"], []), ("spans", files["spans"], []),
                              ("arith", files["plain"], ["--credit_labels", "arith"]),
                              ("none", files["plain"], [])):
        out = tmp_path / f"{name}.json"
        assert main(["eval-rm", "--rm_path", tiny_rm_dir, "--dataset", data, "--output_json", str(out),
                     "--device", "cpu", "--progress", "false", *extra]) == 0
        results[name] = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "within-response AUC" in printed
    assert "credit" not in results["none"] and results["none"]["n_pairs"] == 12  # unlabelled data: pairwise only
    oracle = results["oracle"]["credit"]
    assert oracle["label_format"] == "columns" and oracle["label_columns"] == ["chosen_token_rewards",
                                                                              "rejected_token_rewards"]
    assert results["spans"]["credit"]["label_format"] == "spans"
    # the three label inputs describe the same tokens, so every number agrees
    strip = lambda c: {k: v for k, v in c.items() if k not in ("label_format", "label_columns")}  # noqa: E731
    assert strip(oracle) == strip(results["spans"]["credit"]) == strip(results["arith"]["credit"])
    # ... and equals the metrics computed directly on the RM's token rewards and the oracle's signs
    rm = SegmentRewardModel.from_pretrained(tiny_rm_dir)
    rewards, labels, side = [], [], []
    for key, sign in (("chosen", 1), ("rejected", -1)):
        values, mask = rm.score_tokens([r["prompt"] for r in rows], [r[key] for r in rows], normalize=True)
        rewards += [values[b, : int(mask[b].sum())].tolist() for b in range(len(rows))]
        labels += [[int(math.copysign(1, v)) if v else 0 for v in oracle_token_rewards(tok, r["prompt"], r[key])]
                   for r in rows]
        side += [sign] * len(rows)
    direct = credit_metrics(pad_lists(rewards)[0], pad_lists(labels, dtype=torch.long)[0], pad_lists(rewards)[1],
                            side=torch.tensor(side))
    assert {k: oracle[k] for k in direct} == pytest.approx(direct)
    assert oracle["n_responses"] == 24 and oracle["first_error_n"] > 0
    assert 0.0 <= oracle["auc_within_response"] <= 1.0
    # the Python function reports the same whenever the data carries labels
    from datasets import Dataset

    from segrl.rm import evaluate_credit, evaluate_pairwise

    assert evaluate_pairwise(rm, Dataset.from_list(rows), progress=False)["credit"] == oracle
    assert evaluate_credit(rm, rows) == oracle
    assert evaluate_credit(rm, plain) is None  # no labels: nothing to report


def test_eval_rm_credit_on_trl_steps_and_other_sources(rm_env, tiny_rm_dir, tmp_path, capsys):
    from segrl.cli import main
    from segrl.tasks import make_preference_pairs, step_flags

    tok = rm_env.tokenizer
    rows = make_preference_pairs(8, seed=2, tokenizer=tok)
    # TRL stepwise supervision: each response's ";"-separated parts with their correctness
    steps = [{"prompt": r["prompt"], "completions": r[k].split(";"), "labels": step_flags(r["prompt"], r[k])}
             for r in rows for k in ("chosen", "rejected")]
    out = tmp_path / "steps.json"
    assert main(["eval-rm", "--rm_path", tiny_rm_dir, "--dataset", _jsonl(tmp_path / "steps.jsonl", steps),
                 "--step_separator", ";", "--output_json", str(out), "--device", "cpu", "--progress", "false"]) == 0
    result = json.loads(out.read_text())
    assert "accuracy" not in result  # no pairs: credit only
    credit = result["credit"]
    assert credit["label_format"] == "steps" and credit["n_rows"] == 16 and "auc_chosen" not in credit
    n_wrong_steps = sum(not f for s in steps for f in s["labels"])
    assert credit["first_error_n"] == sum(not all(s["labels"]) for s in steps) and n_wrong_steps > 0

    # dataset columns as the source: the oracle scoring itself localises perfectly
    out = tmp_path / "columns.json"
    data = _jsonl(tmp_path / "oracle.jsonl", rows)
    assert main(["eval-rm", "--token_reward_source", "columns", "--tokenizer_name_or_path", rm_env.init_dir,
                 "--dataset", data, "--output_json", str(out), "--device", "cpu"]) == 0
    credit = json.loads(out.read_text())["credit"]
    assert credit["auc"] == 1.0 and credit["auc_within_response"] == 1.0

    # the implicit DPO reward of a policy / reference pair
    out = tmp_path / "implicit.json"
    assert main(["eval-rm", "--token_reward_source", "implicit", "--implicit_policy", rm_env.init_dir,
                 "--implicit_ref", rm_env.ref_dir, "--dataset", data, "--output_json", str(out),
                 "--device", "cpu"]) == 0
    credit = json.loads(out.read_text())["credit"]
    assert credit["source"] == "ImplicitTokenRewards" and credit["n_responses"] == 16
    assert 0.0 <= credit["auc_within_response"] <= 1.0
    capsys.readouterr()

    # errors name the option, before any model is loaded
    for flags, word in ((["--token_reward_source", "implicit"], "implicit_policy"),
                        (["--credit_labels", "steps"], "completions"),
                        (["--credit_labels", "bogus"], "credit_labels"),
                        (["--token_reward_source", "oracle"], "token_reward_source")):
        assert main(["eval-rm", "--rm_path", tiny_rm_dir, "--dataset", data, "--device", "cpu", *flags]) == 2
        assert word in capsys.readouterr().err


def test_bandit_rm_has_no_within_response_credit(rm_env):
    """c = inf spreads one sequence score over every token: within-response AUC is exactly 0.5 and no
    response has a drop to localise its first error with, whatever the weights."""
    from transformers import AutoModelForSequenceClassification

    from segrl.ops import LocationNormalizerCoef
    from segrl.rm import SegmentRewardModel, evaluate_credit
    from segrl.tasks import make_preference_pairs

    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(rm_env.init_dir, num_labels=1).eval()
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)
    rm = SegmentRewardModel(model, rm_env.tokenizer, threshold=math.inf,
                            normalizer=LocationNormalizerCoef(a_mu=0.0, b_mu=0.3, a_sigma=0.0, b_sigma=2.0))
    credit = evaluate_credit(rm, make_preference_pairs(10, seed=4, tokenizer=rm_env.tokenizer))
    assert credit["auc_within_response"] == 0.5 and credit["first_error_hit_rate"] == 0.0
    assert credit["auc_within_response_chosen"] == 0.5 and credit["first_error_n"] > 0
    assert credit["source"].startswith("reward model (c = inf, normalised)")
