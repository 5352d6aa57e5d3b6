"""Check that ``segrl eval``'s MMLU and GSM8K suites score like lm-evaluation-harness.

lm-eval is not a segrl dependency; install it beside segrl first (``pip install lm-eval``). The script
builds the tiny offline model, points lm-eval task configs (its own ``mmlu`` template per subject and
its ``gsm8k.yaml`` with the data paths swapped) at the fixtures in tests/fixtures/, runs both
harnesses, and compares per question:

- MMLU, 0- and 2-shot: the four log-likelihoods (must agree to 1e-4) and the predicted letter;
- GSM8K, 2-shot: the prompt (few-shot draw with seed 1234) and the greedy completion.

Exit status 0 when everything agrees. Last run: lm-eval 0.4.13, MMLU max |difference| 0.0, GSM8K
6/6 identical prompts and completions.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python scripts/check_lm_eval_parity.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"

MMLU_TASK = """task: parity_mmlu_{subject}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {dir}/{subject}_test.jsonl
    dev: {dir}/{subject}_dev.jsonl
test_split: test
fewshot_split: dev
fewshot_config:
  sampler: first_n
output_type: multiple_choice
description: "The following are multiple choice questions (with answers) about {title}.\\n\\n"
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{choices[0]}}}}\\nB. {{{{choices[1]}}}}\\nC. {{{{choices[2]}}}}\
\\nD. {{{{choices[3]}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
metric_list:
  - metric: acc
"""


def write_tasks(out: Path) -> tuple[list[str], str]:
    """lm-eval task YAMLs over the fixtures; returns the MMLU task names and the GSM8K one."""
    import json

    import lm_eval

    mmlu = {}
    for split in ("test", "dev"):
        for line in (FIXTURES / "mmlu" / f"{split}.jsonl").read_text().splitlines():
            mmlu.setdefault((json.loads(line)["subject"], split), []).append(line)
    subjects = sorted({s for s, _ in mmlu})
    for (subject, split), lines in mmlu.items():
        (out / f"{subject}_{split}.jsonl").write_text("\n".join(lines) + "\n")
    for subject in subjects:
        (out / f"parity_mmlu_{subject}.yaml").write_text(
            MMLU_TASK.format(subject=subject, dir=out, title=subject.replace("_", " ")))
    gsm8k = (Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml").read_text()
    gsm8k = gsm8k.replace("task: gsm8k", "task: parity_gsm8k").replace("  - math_word_problems\n", "")
    gsm8k = gsm8k.replace("tag:\n", "").replace(
        "dataset_path: openai/gsm8k\ndataset_name: main",
        f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    train: {FIXTURES / 'gsm8k' / 'train.jsonl'}\n"
        f"    test: {FIXTURES / 'gsm8k' / 'test.jsonl'}")
    (out / "parity_gsm8k.yaml").write_text(gsm8k)
    return [f"parity_mmlu_{s}" for s in subjects], "parity_gsm8k"


def main() -> int:
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    from segrl.evals.generation import Generator, load_causal_lm
    from segrl.evals.gsm8k import evaluate_gsm8k
    from segrl.evals.mmlu import evaluate_mmlu
    from segrl.models import make_tiny_model_dir

    torch.set_num_threads(1)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = str(make_tiny_model_dir(tmp / "model", hidden_size=32, num_layers=1, num_heads=2))
        (tmp / "tasks").mkdir()
        mmlu_tasks, gsm8k_task = write_tasks(tmp / "tasks")
        manager = TaskManager(include_path=str(tmp / "tasks"))
        model, tokenizer = load_causal_lm(model_dir, device="cpu")
        gen = Generator(model, tokenizer, batch_size=4, progress=False)
        common = dict(model="hf", model_args=f"pretrained={model_dir},dtype=float32", device="cpu",
                      task_manager=manager, log_samples=True, batch_size=4)
        for shots in (0, 2):
            theirs = lm_eval.simple_evaluate(tasks=mmlu_tasks, num_fewshot=shots, **common)
            _, samples = evaluate_mmlu(gen, dataset=str(FIXTURES / "mmlu"), num_fewshot=shots)
            ours = {(s["subject"], s["question"]): s["loglikelihoods"] for s in samples}
            worst, same = 0.0, 0
            for task in mmlu_tasks:
                for sample in theirs["samples"][task]:
                    lls = [r[0] for r in sample["filtered_resps"]]
                    mine = ours[(task.removeprefix("parity_mmlu_"), sample["doc"]["question"])]
                    worst = max(worst, max(abs(a - b) for a, b in zip(lls, mine)))
                    same += lls.index(max(lls)) == mine.index(max(mine))
            print(f"MMLU {shots}-shot: max |log-likelihood difference| {worst:.2e}, same prediction {same}/{len(ours)}")
            ok &= worst < 1e-4 and same == len(ours)
        theirs = lm_eval.simple_evaluate(tasks=[gsm8k_task], num_fewshot=2, gen_kwargs="max_gen_toks=24", **common)
        sent = []  # the prompts segrl's suite sends to the generator

        def recording(prompts, **kwargs):
            sent.extend(prompts)
            return gen(prompts, **kwargs)

        recording.progress = False
        metrics, samples = evaluate_gsm8k(recording, dataset=str(FIXTURES / "gsm8k"), num_fewshot=2, max_new_tokens=24)
        by_doc = {s["doc_id"]: s for s in theirs["samples"][gsm8k_task]}  # one entry per filter: keep one
        prompts = [by_doc[i]["arguments"][0][0] for i in range(len(samples))]
        completions = [by_doc[i]["resps"][0][0] for i in range(len(samples))]
        same_prompt = sum(a == b for a, b in zip(prompts, sent))
        same_completion = sum(a == s["completion"] for a, s in zip(completions, samples))
        print(f"GSM8K 2-shot: identical prompts {same_prompt}/{len(samples)}, identical completions "
              f"{same_completion}/{len(samples)}; lm-eval {theirs['results'][gsm8k_task]}, segrl {metrics}")
        ok &= same_prompt == same_completion == len(samples)
    print("parity: OK" if ok else "parity: MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
