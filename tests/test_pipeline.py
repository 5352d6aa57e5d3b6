"""The pipeline behind ``segrl demo`` / ``segrl experiment``: its pieces, and a ``--quick`` demo end to end."""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import replace

import pytest
import torch

from segrl.cli import main
from segrl.pipeline.diagnostics import credit_auc
from segrl.pipeline.evaluation import ArithEvaluator, CheckpointTracker, heldout_split
from segrl.pipeline.pairs import pairs_from_samples, sample_responses, train_prompts
from segrl.pipeline.report import aggregate, markdown_table
from segrl.pipeline.settings import METHODS, EvalSettings, PairSettings, settings_key
from segrl.pipeline.sft import (
    PACKAGED_SFT,
    build_model,
    packaged_sft_dir,
    read_meta,
    sft_examples,
    train_sft,
)
from segrl.tasks import is_heldout_prompt, solve, step_flags


@pytest.fixture(scope="module")
def packaged_sft():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(packaged_sft_dir(), dtype=torch.float32).eval()


# --------------------------------------------------------------------------------------------------
# SFT
# --------------------------------------------------------------------------------------------------


def test_packaged_checkpoint_is_small_and_matches_its_settings():
    d = packaged_sft_dir()
    meta = read_meta(d)
    assert meta is not None and meta["key"] == PACKAGED_SFT.key()
    size = sum(f.stat().st_size for f in d.iterdir())
    assert size < 2_000_000
    assert meta["source"] == "scripts/make_sft_checkpoint.py"


def test_packaged_sft_has_the_systematic_carry_error(tiny_tokenizer, packaged_sft):
    """Greedy decoding formats every answer but drops carries: about half the steps right, few exact answers
    (research/asr-toy-findings.md: 0.52 / 0.02), which is what leaves preference learning something to fix."""
    _, test = heldout_split(10, 150)
    metrics, responses = ArithEvaluator(tiny_tokenizer, test)(packaged_sft, return_samples=True)
    assert metrics["parse_rate"] > 0.95
    assert 0.35 < metrics["step_accuracy"] < 0.7
    assert metrics["exact_match"] < 0.15
    # The typical error is a dropped carry: a wrong step whose result is the true sum minus 10.
    dropped = 0
    for p, r in zip(test, responses):
        for part in r.split(";")[:-1]:
            a, rest = part.split("+")
            b, c = rest.split("=")
            dropped += int(a) + int(b) - int(c) == 10
    assert dropped > 50


def test_train_sft_learns_the_format(tiny_tokenizer):
    settings = replace(PACKAGED_SFT, steps=40, batch_size=16, n_examples=200, hidden_size=32, num_layers=1,
                       num_heads=2, intermediate_size=64, warmup_steps=5)
    model = build_model(tiny_tokenizer, settings)
    calls = []
    log = train_sft(model, tiny_tokenizer, settings, callback=lambda s, m: calls.append((s, m.training)),
                    callback_every=20)
    assert log[0]["loss"] > 4.0 and log[-1]["loss"] < 0.6 * log[0]["loss"]
    assert calls == [(20, False), (40, False)] and not model.training


def test_sft_examples_mask_the_prompt(tiny_tokenizer):
    examples = sft_examples(tiny_tokenizer, replace(PACKAGED_SFT, n_examples=5))
    for ids, plen in examples:
        assert ids[-1] == tiny_tokenizer.eos_token_id
        prompt = tiny_tokenizer.decode(ids[:plen])
        assert prompt.endswith("=") and "=" not in prompt[:-1]
        assert not is_heldout_prompt(prompt)


# --------------------------------------------------------------------------------------------------
# Pairs and evaluation
# --------------------------------------------------------------------------------------------------


def test_pairs_from_samples_best_vs_worst():
    p = "7+3+6+2="
    right = solve(p)                                   # 0 wrong parts
    one = "7+3=10;10+6=16;16+2=19;=19"                 # last step and answer wrong: 2 wrong parts
    many = "7+3=0;0+6=5;5+2=8;=8"                      # every part wrong: 4
    assert [sum(not f for f in step_flags(p, r)) for r in (right, one, many)] == [0, 2, 4]
    rows = pairs_from_samples([p, p, p], [[one, right, many, one], [one, one, one, one], [" ", "", right, right]])
    assert rows == [{"prompt": p, "chosen": right, "rejected": many}]  # ties and blank-only prompts dropped


def test_sample_responses_is_seeded(tiny_tokenizer, packaged_sft):
    prompts = train_prompts(6, seed=3)
    assert len(set(prompts)) == 6 and not any(is_heldout_prompt(q) for q in prompts)
    state = torch.random.get_rng_state()
    a = sample_responses(packaged_sft, tiny_tokenizer, prompts, k=3, seed=1, batch_size=4)
    b = sample_responses(packaged_sft, tiny_tokenizer, prompts, k=3, seed=1, batch_size=4)
    c = sample_responses(packaged_sft, tiny_tokenizer, prompts, k=3, seed=2, batch_size=4)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched
    assert a == b and a != c
    assert [len(x) for x in a] == [3] * 6
    # Samples at temperature 1 from the SFT model mostly keep the format (first operand copied first).
    starts = [r.startswith(q.split("+")[0] + "+") for q, rs in zip(prompts, a) for r in rs]
    assert sum(starts) >= 0.7 * len(starts), a


def test_heldout_split_is_disjoint():
    dev, test = heldout_split(30, 50, seed=4)
    assert len(dev) == 30 and len(test) == 50 and not set(dev) & set(test)
    assert all(is_heldout_prompt(p) for p in dev + test)


def test_checkpoint_tracker_keeps_the_best_weights():
    class FakeEval:
        scores = iter([0.3, 0.6, 0.5])

        def __call__(self, model):
            s = next(self.scores)
            return {"step_accuracy": s, "exact_match": s / 2, "answer_accuracy": s / 2, "parse_rate": 1.0}

    model = torch.nn.Linear(2, 1)
    tracker = CheckpointTracker(FakeEval(), [2, 4, 6])
    tracker.add_start({"step_accuracy": 0.9, "exact_match": 0.1, "answer_accuracy": 0.1, "parse_rate": 1.0})
    for step in range(1, 7):
        with torch.no_grad():
            model.weight.fill_(step)
        tracker.maybe(step, model)
    assert [c["step"] for c in tracker.curve] == [0, 2, 4, 6]
    assert tracker.best_step == 4  # step 0 (the start) is never "best", even when it scores higher
    assert float(tracker.best_state["weight"][0, 0]) == 4.0
    assert "0.500" in tracker.last()


def test_eval_schedule():
    assert EvalSettings(checkpoints=5).schedule(100) == [20, 40, 60, 80, 100]
    assert EvalSettings(checkpoints=5).schedule(3) == [1, 2, 3]
    assert EvalSettings(checkpoints=1).schedule(7) == [7]


# --------------------------------------------------------------------------------------------------
# Settings, diagnostics, aggregation
# --------------------------------------------------------------------------------------------------


def test_settings_keys_and_registry():
    assert settings_key(PairSettings(), 0) == settings_key(PairSettings(), 0)
    assert settings_key(PairSettings(), 0) != settings_key(PairSettings(), 1)
    assert settings_key(PairSettings(n_prompts=10)) != settings_key(PairSettings())
    assert settings_key(math.inf) == settings_key(float("inf"))
    with pytest.raises(ValueError, match="pair_source"):
        PairSettings(source="other")
    assert METHODS["asr_dpo_implicit"].needs == ("dpo",)
    assert {m.family for m in METHODS.values()} == {"dpo", "ppo", "rs"}
    assert all(m.rm_arm in (None, "segment", "token", "bandit") for m in METHODS.values())
    # The oracle is centred at zero by construction; learned rewards use the configured baseline.
    assert METHODS["asr_dpo_oracle"].baseline == "zero" and METHODS["asr_dpo_segrm"].baseline is None


def test_credit_auc_hand_case():
    rewards = {"chosen": [[0.9, 0.1, 0.5]], "rejected": [[-1.0, 0.2, 0.0]]}
    oracle = {"chosen": [[1, 0, -1]], "rejected": [[-1, 1, 0]]}
    out = credit_auc(rewards, oracle)
    assert out["auc_chosen"] == 1.0 and out["auc_rejected"] == 1.0
    # pooled: correct {0.9, 0.2} vs wrong {0.5, -1.0}: 3 of 4 orderings right
    assert out["auc"] == pytest.approx(0.75)
    # centred on each response's mean (0.5 and -0.2667): correct {0.4, 0.4667} vs wrong {0.0, -0.7333}
    assert out["auc_within_response"] == 1.0
    constant = credit_auc({"chosen": [[0.3, 0.3], [0.1, 0.1]], "rejected": [[-0.2, -0.2]]},
                          {"chosen": [[1, -1], [1, -1]], "rejected": [[1, -1]]})
    assert constant["auc_within_response"] == 0.5  # a sequence-level score carries no within-response credit
    flipped = credit_auc({k: [[-v for v in r] for r in rs] for k, rs in rewards.items()}, oracle)
    assert flipped["auc_chosen"] == 0.0
    with pytest.raises(ValueError, match="oracle labels"):
        credit_auc({"chosen": [[1.0]], "rejected": [[]]}, {"chosen": [[1, 0]], "rejected": [[]]})


def _record(method, seed, final, best, curve, kept=1.0, family="dpo"):
    m = {"step_accuracy": final, "exact_match": final / 2, "answer_accuracy": 0.0, "parse_rate": 1.0}
    b = {"step_accuracy": best, "exact_match": best / 2, "answer_accuracy": 0.0, "parse_rate": 1.0, "step": 2}
    return {"method": method, "label": method.upper(), "family": family, "seed": seed, "mask": "none",
            "rewards": "-", "rm_arm": None, "final": m, "best": b, "kept_token_fraction": kept,
            "mean_over_checkpoints": {"step_accuracy": sum(curve) / len(curve), "exact_match": 0.0},
            "curve": [{"step": 2 * (i + 1), "step_accuracy": c, "exact_match": 0.0} for i, c in enumerate(curve)]}


def test_aggregate_mean_and_sample_std():
    sft = [{"test": {"step_accuracy": 0.5, "exact_match": 0.02, "parse_rate": 1.0},
            "dev": {"step_accuracy": 0.5, "exact_match": 0.02}}]
    runs = [_record("dpo", 0, 0.6, 0.7, [0.6, 0.7]), _record("dpo", 1, 0.8, 0.9, [0.8, 0.9]),
            _record("asr", 0, 0.7, 0.7, [0.7], kept=0.4)]
    summary = aggregate(runs, sft)
    dpo = summary["methods"]["dpo"]
    assert dpo["n_seeds"] == 2 and dpo["final_step_accuracy"]["mean"] == pytest.approx(0.7)
    assert dpo["final_step_accuracy"]["std"] == pytest.approx(math.sqrt(0.02))  # ddof = 1
    assert dpo["mean_ckpt_step_accuracy"]["mean"] == pytest.approx(0.75)
    assert summary["methods"]["asr"]["final_step_accuracy"]["std"] == 0.0
    table = markdown_table(summary)
    assert "| DPO | 2 | 0.700 ± 0.141 |" in table
    assert "| ASR | 1 | 0.700 |" in table and "0.40" in table
    assert table.splitlines()[2].startswith("| SFT | 1 | 0.500 |")


# --------------------------------------------------------------------------------------------------
# The demo, end to end
# --------------------------------------------------------------------------------------------------


def test_quick_demo_end_to_end_and_cached_rerun(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "packaged SFT checkpoint" in printed
    for stage in ("preference pairs", "segment reward model", "DPO", "ASR-DPO", "PPO, segment RM", "report"):
        assert stage in printed, stage
    assert str(out / "report.html") in printed.replace("\n", "")

    results = json.loads((out / "results.json").read_text())
    summary = results["summary"]
    assert set(summary["methods"]) == {"dpo", "asr_dpo_segrm", "ppo_segment"}
    sft = json.loads((out / "sft" / "eval.json").read_text())
    assert summary["sft"]["final_step_accuracy"]["mean"] == sft["test"]["step_accuracy"]
    for name, entry in summary["methods"].items():
        for key in ("final_step_accuracy", "final_exact_match", "best_step_accuracy", "mean_ckpt_step_accuracy"):
            assert 0.0 <= entry[key]["mean"] <= 1.0, (name, key)
    assert summary["methods"]["dpo"]["kept_token_fraction"]["mean"] == 1.0
    assert 0.0 < summary["methods"]["asr_dpo_segrm"]["kept_token_fraction"]["mean"] < 1.0
    run = json.loads((out / "seed0" / "asr_dpo_segrm" / "result.json").read_text())
    assert [c["step"] for c in run["curve"]] == [0, 3, 6]
    assert run["curve"][0]["step_accuracy"] == sft["dev"]["step_accuracy"]
    rm = json.loads((out / "seed0" / "rm_segment" / "result.json").read_text())
    assert rm["threshold"] == "0.2" and 0.0 <= rm["eval"]["accuracy"] <= 1.0 and rm["normalizer"]["b_sigma"] > 0

    report = (out / "report.html").read_text()
    assert report.startswith("<!DOCTYPE html>") and "</html>" in report
    assert "<table>" in report and "ASR-DPO (segment RM)" in report
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', report)
    assert len(images) >= 3  # curves, comparison, normaliser fit
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert "<iframe srcdoc=" in report and "class=&quot;tok" in report
    assert not re.search(r'(src|href)="https?://', report)  # self-contained
    # credit next to the results (segment RM and the DPO run's implicit reward), training pairs, provenance
    assert report.index("id='credit'") < report.index("Learning curves") and "implicit reward of the DPO run" in report
    assert "What the mask did in training" in report and "id='provenance'" in report and "lab-neg" in report
    for name in ("curves.png", "comparison.png", "heatmap.html", "heatmap.png", "training_pairs.html"):
        assert (out / name).stat().st_size > 1000, name
    md = (out / "results.md").read_text()
    assert "| SFT | 1 |" in md and "| ASR-DPO (segment RM) | 1 |" in md and "| seed | RM | c |" in md
    rows = [json.loads(line) for line in (out / "token_rewards.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and [r["side"] for r in rows[:2]] == ["SFT", "ASR-DPO"]
    assert rows[0]["prompt"] == rows[1]["prompt"] and rows[0]["title"].startswith(rows[0]["prompt"] + " → ")
    for row in rows:
        assert "".join(row["tokens"]).endswith("<|eos|>")
        assert len(row["tokens"]) == len(row["rewards"]) == len(row["segment_ids"]) == len(row["kept"])
        assert row["segment_ids"][-1] == -1  # a dense RM's EOS belongs to no segment
        assert len(row["labels"]) == len(row["tokens"]) and row["labels"][-1] == 0  # oracle labels, EOS unlabelled
    # `segrl viz` re-renders the heat-map rows.
    assert main(["viz", "--token_rewards_file", str(out / "token_rewards.jsonl"),
                 "--output_html", str(out / "again.html")]) == 0
    assert (out / "again.html").stat().st_size > 5000
    capsys.readouterr()

    # A second run reuses every stage.
    assert main(["demo", "--quick", "--output_dir", str(out)]) == 0
    again = capsys.readouterr().out
    assert again.count(": cached") == 3 and "RM steps" not in again and "sampling" not in again
    assert json.loads((out / "results.json").read_text())["summary"] == summary

    # --rebuild redoes every stage, and the pipeline is deterministic: the same numbers come out.
    assert main(["demo", "--quick", "--output_dir", str(out), "--rebuild"]) == 0
    rebuilt = capsys.readouterr().out
    assert ": cached" not in rebuilt and "RM steps" in rebuilt and "sampling" in rebuilt
    again_summary = json.loads((out / "results.json").read_text())["summary"]
    for name, entry in summary["methods"].items():
        redo = again_summary["methods"][name]
        assert {k: v for k, v in redo.items() if k != "seconds"} == {k: v for k, v in entry.items() if k != "seconds"}
