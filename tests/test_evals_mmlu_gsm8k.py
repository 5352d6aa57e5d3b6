"""`segrl eval` MMLU and GSM8K suites: loaders for the published formats, the prompts, log-likelihood
multiple choice (hand-computed on a planted bigram model), answer extraction, and a CLI run on fixtures.

The fixtures in tests/fixtures/ are in the exact formats of ``cais/mmlu`` (question, subject, choices,
answer 0-3; splits test and dev) and ``openai/gsm8k`` (question, answer ending in "#### N"; splits
test and train). Prompts and log-likelihoods were also checked once against lm-evaluation-harness
0.4.13 on these fixtures (see the constants marked "lm-eval" below).
"""

import json
import math
import random
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
MMLU, GSM8K = FIXTURES / "mmlu", FIXTURES / "gsm8k"


class FakeGenerator:
    """Stands in for :class:`segrl.evals.generation.Generator`: answers from a function of the prompt."""

    progress = False

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def __call__(self, prompts, *, max_new_tokens, chat=False, system=None, stop=(), description=""):
        self.calls.append({"prompts": list(prompts), "chat": chat, "stop": tuple(stop),
                           "max_new_tokens": max_new_tokens})
        return [self.answer(p) for p in prompts]


def _scorer(model, tokenizer, batch_size=8):
    """What the MMLU suite uses of a Generator (model, tokenizer, batch size, chat formatting), without
    its left-padding requirement (the shared tiny tokenizer pads on the right and is not changed)."""
    from segrl.evals.generation import Generator

    attrs = {"model": model, "tokenizer": tokenizer, "batch_size": batch_size, "progress": False,
             "format": Generator.format}
    return type("Scorer", (), attrs)()


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# --------------------------------------------------------------------------------------------------
# Loading the published formats
# --------------------------------------------------------------------------------------------------


def test_load_split_from_every_local_form(tmp_path):
    import datasets

    from segrl.evals.loading import load_split

    expected = _rows(MMLU / "test.jsonl")
    # a directory of <split>.jsonl files
    assert load_split(str(MMLU), "test").to_list() == expected
    assert len(load_split(str(MMLU), "dev")) == 4
    # one file, several comma-separated files (one split: all their rows)
    assert load_split(str(MMLU / "test.jsonl"), "ignored").to_list() == expected
    assert len(load_split(f"{MMLU / 'test.jsonl'},{MMLU / 'dev.jsonl'}", "test")) == 12
    # the Hub repositories' layout: <config>/<split>-00000-of-00001.parquet
    ds = datasets.Dataset.from_list(expected)
    (tmp_path / "hub" / "all").mkdir(parents=True)
    ds.to_parquet(str(tmp_path / "hub" / "all" / "test-00000-of-00001.parquet"))
    assert load_split(str(tmp_path / "hub"), "test", config="all").to_list() == expected
    # save_to_disk: a DatasetDict (split picked) and a single Dataset
    datasets.DatasetDict({"test": ds, "dev": ds.select([0])}).save_to_disk(str(tmp_path / "dict"))
    assert load_split(str(tmp_path / "dict"), "dev").to_list() == expected[:1]
    ds.save_to_disk(str(tmp_path / "single"))
    assert load_split(str(tmp_path / "single"), "whatever").to_list() == expected
    with pytest.raises(ValueError, match="`mmlu_dataset` .* has no split 'train' \\(splits: \\['dev', 'test'\\]\\)"):
        load_split(str(tmp_path / "dict"), "train", arg="mmlu_dataset")
    # MMLU's "dev" split keeps its name (datasets' own file-name inference would call it "validation")
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "dev.jsonl").write_text((MMLU / "dev.jsonl").read_text())
    assert len(load_split(str(tmp_path / "files"), "dev")) == 4
    with pytest.raises(ValueError, match="`gsm8k_dataset` directory .* holds no 'train' split"):
        load_split(str(tmp_path / "files"), "train", arg="gsm8k_dataset")
    with pytest.raises(FileNotFoundError, match="`mmlu_dataset`: no such file or directory: .*missing.jsonl"):
        load_split(str(tmp_path / "missing.jsonl"), "test", arg="mmlu_dataset")


def test_hub_ids_go_to_datasets_load_dataset(monkeypatch):
    import datasets

    from segrl.evals.loading import load_split

    calls = []

    hub_rows = datasets.Dataset.from_list(_rows(GSM8K / "test.jsonl"))

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return hub_rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_split("cais/mmlu", "test", config="all") is hub_rows
    assert load_split("openai/gsm8k", "train", config="main") is hub_rows
    assert calls == [(("cais/mmlu", "all"), {"split": "test"}), (("openai/gsm8k", "main"), {"split": "train"})]


def test_hub_ids_give_the_test_and_few_shot_splits(monkeypatch):
    import datasets

    from segrl.evals.gsm8k import gsm8k_items
    from segrl.evals.mmlu import mmlu_items

    local = {("cais/mmlu", "all", "test"): MMLU / "test.jsonl", ("cais/mmlu", "all", "dev"): MMLU / "dev.jsonl",
             ("openai/gsm8k", "main", "test"): GSM8K / "test.jsonl",
             ("openai/gsm8k", "main", "train"): GSM8K / "train.jsonl"}
    calls = []

    def fake_load_dataset(name, config=None, *, split):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(_rows(local[(name, config, split)]))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    items = mmlu_items("cais/mmlu", num_fewshot=1, limit=1)
    assert calls == [("cais/mmlu", "all", "test"), ("cais/mmlu", "all", "dev")]
    assert "Answer: B\n\nWhat is 7 multiplied by 8?" in items[0]["prompt"]  # the first dev row of the subject
    calls.clear()
    items = gsm8k_items("openai/gsm8k", num_fewshot=3, limit=2)
    assert calls == [("openai/gsm8k", "main", "test"), ("openai/gsm8k", "main", "train")]
    assert [i["prompt"].count("Question:") for i in items] == [4, 4]


def test_hub_id_offline_is_a_clear_error():
    from segrl.evals.loading import load_split

    # conftest switches the Hub off: the real code path runs and fails with a message naming the option
    with pytest.raises(ValueError, match="`mmlu_dataset` 'cais/mmlu-does-not-exist' is not a local file"):
        load_split("cais/mmlu-does-not-exist", "test", config="all", arg="mmlu_dataset")


def test_load_mmlu_checks_rows(tmp_path):
    from segrl.evals.mmlu import load_mmlu

    rows = load_mmlu(str(MMLU), "test")
    assert len(rows) == 8 and rows[0] == {"question": "What is 7 multiplied by 8?", "subject": "elementary_mathematics",
                                          "choices": ["54", "56", "58", "64"], "answer": 1}
    # subject filter and a per-subject limit (lm-eval's --limit is per subject task too)
    assert [r["subject"] for r in load_mmlu(str(MMLU), "test", limit=1)] == ["elementary_mathematics", "astronomy"]
    assert {r["subject"] for r in load_mmlu(str(MMLU), "test", subjects=["astronomy"])} == {"astronomy"}
    with pytest.raises(ValueError, match="`mmlu_subjects` \\['anatomy'\\] not found"):
        load_mmlu(str(MMLU), "test", subjects=["anatomy"])
    bad = tmp_path / "bad.jsonl"
    row = {"question": "q", "subject": "s", "choices": ["a", "b", "c", "d"], "answer": "C"}
    bad.write_text(json.dumps(row) + "\n")
    assert load_mmlu(str(bad), "test")[0]["answer"] == 2  # a letter answer is accepted
    for change, message in [({"choices": ["a", "b", "c"]}, "4 options"), ({"answer": 4}, "0-3 or a letter")]:
        bad.write_text(json.dumps({**row, **change}) + "\n")
        with pytest.raises(ValueError, match=message):
            load_mmlu(str(bad), "test")
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b", "c", "d"], "answer": 0}) + "\n")
    with pytest.raises(ValueError, match="lacks column\\(s\\) \\['subject'\\]"):
        load_mmlu(str(bad), "test")


def test_load_gsm8k_targets(tmp_path):
    from segrl.evals.gsm8k import load_gsm8k, target_answer

    rows = load_gsm8k(str(GSM8K), "test")
    assert [r["target"] for r in rows] == ["29", "2460", "8", "-5", "24", "8"]
    assert len(load_gsm8k(str(GSM8K), "train", limit=2)) == 2
    assert target_answer("2 + 2 = <<2+2=4>>4\n#### 1,004.") == "1004"
    with pytest.raises(ValueError, match="#### <number>"):
        target_answer("the answer is 4")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "4"}) + "\n")
    with pytest.raises(ValueError, match="`gsm8k_dataset` test row 0"):
        load_gsm8k(str(bad), "test")


# --------------------------------------------------------------------------------------------------
# MMLU prompt and log-likelihood scoring
# --------------------------------------------------------------------------------------------------


def test_mmlu_prompt_is_lm_eval_template():
    from segrl.evals.mmlu import build_prompt, load_mmlu

    test, dev = load_mmlu(str(MMLU), "test"), load_mmlu(str(MMLU), "dev")
    assert build_prompt(test[6], [dev[2]]) == (
        "The following are multiple choice questions (with answers) about astronomy.\n\n"
        "What is the largest planet in the Solar System?\nA. Saturn\nB. Neptune\nC. Jupiter\nD. Uranus\nAnswer: C\n\n"
        "Which object is a natural satellite of the Earth?\nA. The Moon\nB. Phobos\nC. Titan\nD. Europa\nAnswer:"
    )
    assert build_prompt(test[0]).startswith("The following are multiple choice questions (with answers) about "
                                            "elementary mathematics.\n\nWhat is 7")


class BigramLM(torch.nn.Module):
    """logits[b, t] = table[input_ids[b, t]]: the next token depends on the current one only."""

    def __init__(self, vocab_size):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(vocab_size, vocab_size), requires_grad=False)
        self.config = type("Config", (), {"max_position_embeddings": 1024})()
        self.inputs = []

    def plant(self, token, probs):
        """Row ``token``: the given {next token: probability}, the rest spread evenly."""
        rest = (1 - sum(probs.values())) / (self.table.shape[1] - len(probs))
        row = torch.full((self.table.shape[1],), math.log(rest))
        for t, p in probs.items():
            row[t] = math.log(p)
        self.table.data[token] = row

    def forward(self, input_ids, attention_mask=None):
        self.inputs.append(input_ids.clone())
        return type("Out", (), {"logits": self.table[input_ids]})()


def test_mmlu_loglikelihood_choice_by_hand(tiny_tokenizer):
    """The tiny tokenizer has ' A' = [ĠA], ' B' = [ĠB], ' C' = [Ġ, C], ' D' = [Ġ, D] and every prompt
    ends in ':'. With planted bigram probabilities the four log-likelihoods are known exactly."""
    from segrl.evals.mmlu import evaluate_mmlu, loglikelihoods

    ids = {s: tiny_tokenizer.convert_tokens_to_ids(s) for s in (":", "ĠA", "ĠB", "Ġ", "C", "D")}
    assert [tiny_tokenizer(f" {c}")["input_ids"] for c in "ABCD"] == [
        [ids["ĠA"]], [ids["ĠB"]], [ids["Ġ"], ids["C"]], [ids["Ġ"], ids["D"]]]
    model = BigramLM(len(tiny_tokenizer))
    model.plant(ids[":"], {ids["ĠA"]: 0.1, ids["ĠB"]: 0.2, ids["Ġ"]: 0.6})
    model.plant(ids["Ġ"], {ids["C"]: 0.25, ids["D"]: 0.5})
    got = loglikelihoods(model, tiny_tokenizer, [("Answer:", f" {c}") for c in "ABCD"], batch_size=2)
    # log P(" C") = log P(Ġ | :) + log P(C | Ġ) = log(0.6 * 0.25)
    assert got == pytest.approx([math.log(0.1), math.log(0.2), math.log(0.15), math.log(0.3)], abs=1e-5)

    gen = _scorer(model, tiny_tokenizer, batch_size=5)
    metrics, samples = evaluate_mmlu(gen, dataset=str(MMLU))
    assert {s["pred"] for s in samples} == {"D"}  # D = log 0.3 beats B = log 0.2, summed over its two tokens
    answers = [s["answer"] for s in samples]  # fixture answers: B C A D | B C A D
    assert answers == list("BCADBCAD")
    assert metrics == {"n": 8, "accuracy": 0.25, "accuracy_macro": 0.25, "astronomy/accuracy": 0.25,
                       "elementary_mathematics/accuracy": 0.25}
    assert samples[0]["loglikelihoods"] == pytest.approx(got, abs=1e-5)
    # no length normalisation: with P(D | Ġ) = 0.05, B (log 0.2) beats C (log 0.15), although C's
    # per-token mean (log 0.15 / 2) is higher
    model.plant(ids["Ġ"], {ids["C"]: 0.25, ids["D"]: 0.05})
    metrics, samples = evaluate_mmlu(gen, dataset=str(MMLU), subjects=["astronomy"])
    assert {s["pred"] for s in samples} == {"B"} and metrics["accuracy"] == 0.25
    # one forward pass per question: the four continuations need the logits of the same prefixes
    model.inputs.clear()
    evaluate_mmlu(gen, dataset=str(MMLU), subjects=["astronomy"])
    assert sum(len(x) for x in model.inputs) == 4 * 2  # 4 questions x (context, context + Ġ)


@pytest.fixture(scope="module")
def tiny_lm(tiny_tokenizer):
    from segrl.models import build_tiny_causal_lm

    return build_tiny_causal_lm(tiny_tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=3)


def _reference_loglikelihood(model, tokenizer, context, continuation, max_len=None):
    """One unpadded sequence at a time, scored position by position."""
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    whole = tokenizer(stripped + continuation)["input_ids"]
    n_ctx = len(tokenizer(stripped)["input_ids"])
    inputs = whole[:-1][-max_len:] if max_len else whole[:-1]
    offset = len(whole) - 1 - len(inputs)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([inputs])).logits[0].float(), -1)
    return sum(logp[t - 1 - offset, whole[t]].item() for t in range(n_ctx, len(whole)))


def test_loglikelihoods_match_one_sequence_at_a_time(tiny_lm, tiny_tokenizer):
    from segrl.evals.mmlu import loglikelihoods

    requests = [("Question: What is 2+2?\nAnswer:", " 4"), ("Question: What is 2+2?\nAnswer:", " four apples"),
                ("The cat sat on the ", "mat."), ("7+3+6=", "7+3=10, 10+6=16"), ("Hi", " there")]
    expected = [_reference_loglikelihood(tiny_lm, tiny_tokenizer, c, x) for c, x in requests]
    for batch_size in (1, 2, 5):  # right padding must not change any score
        assert loglikelihoods(tiny_lm, tiny_tokenizer, requests, batch_size=batch_size) == pytest.approx(
            expected, abs=1e-4)
    # contexts longer than the model's positions are cut on the left, as lm-eval does
    tiny_lm.config.max_position_embeddings = 6
    try:
        got = loglikelihoods(tiny_lm, tiny_tokenizer, requests[:2], batch_size=2)
    finally:
        tiny_lm.config.max_position_embeddings = 1024
    assert got == pytest.approx([_reference_loglikelihood(tiny_lm, tiny_tokenizer, c, x, max_len=6)
                                 for c, x in requests[:2]], abs=1e-4)
    with pytest.raises(ValueError, match="context is empty"):
        loglikelihoods(tiny_lm, tiny_tokenizer, [("", " A")])


def test_mmlu_few_shot_uses_dev_examples_of_the_same_subject(tiny_lm, tiny_tokenizer, tmp_path):
    from segrl.evals.mmlu import build_prompt, evaluate_mmlu, load_mmlu, loglikelihoods

    gen = _scorer(tiny_lm, tiny_tokenizer)
    metrics, samples = evaluate_mmlu(gen, dataset=str(MMLU), num_fewshot=2)
    test, dev = load_mmlu(str(MMLU), "test"), load_mmlu(str(MMLU), "dev")
    prompt = build_prompt(test[5], [d for d in dev if d["subject"] == "astronomy"])
    assert samples[5]["loglikelihoods"] == pytest.approx(
        loglikelihoods(tiny_lm, tiny_tokenizer, [(prompt, f" {c}") for c in "ABCD"]), abs=1e-5)
    assert metrics["n"] == 8 and 0.0 <= metrics["accuracy"] <= 1.0
    # a single test file holds one split: few-shot needs the dev file named
    with pytest.raises(ValueError, match="needs `mmlu_fewshot_dataset`"):
        evaluate_mmlu(gen, dataset=str(MMLU / "test.jsonl"), num_fewshot=1)
    metrics2, samples2 = evaluate_mmlu(gen, dataset=str(MMLU / "test.jsonl"), num_fewshot=2,
                                       fewshot_dataset=str(MMLU / "dev.jsonl"))
    assert [x for s in samples2 for x in s["loglikelihoods"]] == pytest.approx(
        [x for s in samples for x in s["loglikelihoods"]], abs=1e-5)
    with pytest.raises(ValueError, match="only 2 example\\(s\\) of 'astronomy'"):
        evaluate_mmlu(gen, dataset=str(MMLU), num_fewshot=3)


def test_mmlu_chat_template_scores_letters_after_the_assistant_turn(tiny_lm, tiny_tokenizer):
    from segrl.evals.mmlu import build_prompt, evaluate_mmlu, load_mmlu, loglikelihoods

    _, samples = evaluate_mmlu(_scorer(tiny_lm, tiny_tokenizer), dataset=str(MMLU), subjects=["astronomy"], limit=1,
                               chat=True)
    row = load_mmlu(str(MMLU), "test", subjects=["astronomy"], limit=1)[0]
    context = tiny_tokenizer.apply_chat_template([{"role": "user", "content": build_prompt(row)}], tokenize=False,
                                                 add_generation_prompt=True)
    assert context.endswith("<|im_start|>assistant\n")
    # lm-eval drops the space before the letter under a chat template; the template holds the specials
    expected = loglikelihoods(tiny_lm, tiny_tokenizer, [(context, c) for c in "ABCD"], add_special_tokens=False)
    assert samples[0]["loglikelihoods"] == pytest.approx(expected, abs=1e-5)


# --------------------------------------------------------------------------------------------------
# GSM8K: extraction and the suite
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("completion, flexible, strict", [
    ("Tom starts with 3 * 12 = 36 pencils.\nHe has 36 - 7 = 29 left.\n#### 29", "29", "29"),
    (" It earned 1230 * 2 = 2,460 dollars.\n#### 2,460.", "2460", "2460"),  # comma and trailing period
    (" The answer is $1,000.00.", "1000", None),  # dollar sign, zero cents, no ####
    (" It dropped to -5 degrees.", "-5", None),  # negative
    (" She needs 8 days.\n####8", "8", None),  # strict-match wants "#### N" with the space
    (" 12 or maybe 13", "13", None),  # last number
    (" 36 - 7 = 29", "29", None),  # not "-7"
    (" #### 4\nThen I add 1 to get 5 #### 6", "6", "4"),  # flexible: last ####; strict: first
    (" #### 3.50", "3.5", "3.5"),
    (" I have no idea.", None, None),
    ("", None, None),
])
def test_gsm8k_answer_extraction(completion, flexible, strict):
    from segrl.evals.gsm8k import extract_strict
    from segrl.evals.reasoning import extract_answer

    assert extract_answer(completion) == flexible
    assert extract_strict(completion) == strict


#: The few-shot train rows lm-evaluation-harness 0.4.13 drew (fewshot seed 1234) for the six test
#: questions of tests/fixtures/gsm8k with num_fewshot=2, read from its logged prompts.
LM_EVAL_SHOTS = [[1, 0], [0, 2], [2, 0], [2, 0], [0, 1], [0, 2]]


def test_gsm8k_prompts_match_lm_eval():
    from segrl.evals.gsm8k import STOP_SEQUENCES, evaluate_gsm8k

    test, train = _rows(GSM8K / "test.jsonl"), _rows(GSM8K / "train.jsonl")
    gen = FakeGenerator(lambda p: " I think 0.")
    evaluate_gsm8k(gen, dataset=str(GSM8K), num_fewshot=2, max_new_tokens=32)
    call = gen.calls[0]
    assert call["stop"] == STOP_SEQUENCES == ("Question:", "</s>", "<|im_end|>") and call["max_new_tokens"] == 32
    assert not call["chat"]
    for prompt, row, shots in zip(call["prompts"], test, LM_EVAL_SHOTS):
        expected = "".join(f"Question: {train[i]['question']}\nAnswer: {train[i]['answer']}\n\n" for i in shots)
        assert prompt == expected + f"Question: {row['question']}\nAnswer:"
    # zero-shot: the bare question
    gen = FakeGenerator(lambda p: "")
    evaluate_gsm8k(gen, dataset=str(GSM8K), num_fewshot=0, limit=1)
    assert gen.calls[0]["prompts"] == [f"Question: {test[0]['question']}\nAnswer:"]


def test_gsm8k_scores():
    from segrl.evals.gsm8k import evaluate_gsm8k

    replies = iter([
        " 3 * 12 = 36, 36 - 7 = 29.\n#### 29",  # right, both
        " 450 + 780 = 1230 muffins, so 2460 dollars.",  # right, flexible only
        " 120 / 15 = 8\n#### 9",  # wrong
        " 4 - 9 = -5\n#### -5.",  # right, both (negative, trailing period)
        " Half of 48 is 24",  # right, flexible only
        " no number",  # nothing extracted
    ])
    metrics, samples = evaluate_gsm8k(FakeGenerator(lambda p: next(replies)), dataset=str(GSM8K), num_fewshot=0)
    assert metrics == {"n": 6, "exact_match": 4 / 6, "exact_match_strict": 2 / 6, "extracted": 5 / 6}
    assert [s["correct"] for s in samples] == [True, True, False, True, True, False]
    assert samples[2]["extracted"] == "9" and samples[2]["target"] == "8"
    with pytest.raises(ValueError, match="needs `gsm8k_fewshot_dataset`"):
        evaluate_gsm8k(FakeGenerator(lambda p: ""), dataset=str(GSM8K / "test.jsonl"), num_fewshot=1)
    with pytest.raises(ValueError, match="`gsm8k_num_fewshot` is 5 but 'train' has only 3 rows"):
        evaluate_gsm8k(FakeGenerator(lambda p: ""), dataset=str(GSM8K), num_fewshot=5)


def test_gsm8k_few_shot_draw_is_seeded():
    from segrl.evals.gsm8k import evaluate_gsm8k

    def prompts(seed):
        gen = FakeGenerator(lambda p: "")
        evaluate_gsm8k(gen, dataset=str(GSM8K), num_fewshot=2, fewshot_seed=seed)
        return gen.calls[0]["prompts"]

    assert prompts(1234) == prompts(1234) and prompts(1234) != prompts(7)
    rng = random.Random(7)
    train = _rows(GSM8K / "train.jsonl")
    first = rng.sample(train, 2)
    assert prompts(7)[0].startswith(f"Question: {first[0]['question']}\nAnswer: {first[0]['answer']}\n\n")


# --------------------------------------------------------------------------------------------------
# Config and CLI
# --------------------------------------------------------------------------------------------------


def test_config_fields():
    from segrl.evals.config import SUITES, EvalConfig

    assert SUITES[-2:] == ("mmlu", "gsm8k")
    cfg = EvalConfig(model_name_or_path="m", output_dir="o", suites="mmlu,gsm8k", mmlu_subjects="astronomy,anatomy")
    assert cfg.suites == ["mmlu", "gsm8k"] and cfg.mmlu_subjects == ["astronomy", "anatomy"]
    assert (cfg.mmlu_dataset, cfg.mmlu_config, cfg.mmlu_num_fewshot) == ("cais/mmlu", "all", 0)
    assert (cfg.gsm8k_dataset, cfg.gsm8k_config, cfg.gsm8k_num_fewshot, cfg.gsm8k_fewshot_seed) == (
        "openai/gsm8k", "main", 5, 1234)
    for bad in ({"mmlu_num_fewshot": -1}, {"gsm8k_num_fewshot": -2}, {"gsm8k_max_new_tokens": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            EvalConfig(model_name_or_path="m", output_dir="o", **bad)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    from segrl.models import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("eval_model"), tokenizer=tiny_tokenizer, hidden_size=32,
                               num_layers=1, num_heads=2)


def test_cli_mmlu_gsm8k_on_local_copies(tiny_model_dir, tmp_path, capsys):
    from segrl.cli import main

    out = tmp_path / "eval"
    code = main(["eval", "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out),
                 "--suites", "mmlu", "gsm8k", "--limit", "2", "--progress", "false",
                 "--mmlu_dataset", str(MMLU), "--mmlu_num_fewshot", "1",
                 "--gsm8k_dataset", str(GSM8K / "test.jsonl"), "--gsm8k_fewshot_dataset", str(GSM8K / "train.jsonl"),
                 "--gsm8k_num_fewshot", "2", "--gsm8k_max_new_tokens", "8"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "eval_results.json").read_text())
    m = {s: results["suites"][s]["metrics"] for s in results["suites"]}
    assert list(m) == ["mmlu", "gsm8k"]
    assert m["mmlu"]["n"] == 4 and set(m["mmlu"]) == {"n", "accuracy", "accuracy_macro", "astronomy/accuracy",
                                                      "elementary_mathematics/accuracy"}
    assert m["gsm8k"]["n"] == 2 and 0.0 <= m["gsm8k"]["exact_match"] <= 1.0
    assert results["suites"]["mmlu"]["info"] == {"chat_template": False, "dataset": str(MMLU), "split": "test",
                                                 "num_fewshot": 1}
    md = (out / "eval_results.md").read_text()
    assert "| mmlu | accuracy |" in md and "| gsm8k | exact_match |" in md
    samples = [json.loads(line) for line in (out / "samples_mmlu.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all(len(s["loglikelihoods"]) == 4 for s in samples)
    assert len((out / "samples_gsm8k.jsonl").read_text().splitlines()) == 2
    # a missing local copy is an option error (exit 2), reported before the model is loaded
    for suite in ("gsm8k", "mmlu"):
        assert main(["eval", "--model_name_or_path", str(tmp_path / "no_model"), "--output_dir", str(out),
                     "--suites", "arith", suite, f"--{suite}_dataset", str(tmp_path / "nope.jsonl")]) == 2
        err = capsys.readouterr().err
        assert f"`{suite}_dataset`" in err and "no_model" not in err
