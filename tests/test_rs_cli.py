"""``segrl rs``: YAML configs parse; end-to-end from a candidates file (slow)."""

import json
from pathlib import Path

import pytest

from segrl.commands._common import parse_args
from segrl.commands import rs as rs_cmd

CONFIGS = sorted((Path(__file__).parent.parent / "examples" / "configs").glob("rs_*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_configs_parse(path):
    script, args, model = parse_args(rs_cmd.make_parser(), ["--config", str(path)], "segrl rs")
    assert model.model_name_or_path
    assert script.dataset_name or args.candidates_file
    assert args.selection in ("best", "threshold")


@pytest.mark.slow
def test_cli_from_candidates_file(tmp_path):
    from segrl.models.tiny import build_tiny_tokenizer, make_tiny_model_dir

    tok = build_tiny_tokenizer()
    model_dir = make_tiny_model_dir(tmp_path / "model", tokenizer=tok, hidden_size=32, num_layers=1)
    cands = tmp_path / "cands.jsonl"
    with open(cands, "w") as f:
        for prompt, good, bad in [("2+5=", "2+5=7;=7", "2+5=8;=8"), ("3+3=", "3+3=6;=6", "3+3=5;=5")]:
            lengths = [len(tok(prompt + c)["input_ids"]) - len(tok(prompt)["input_ids"]) for c in (good, bad)]
            rewards = [[0.2 * (-1) ** t for t in range(n)] for n in lengths]
            f.write(json.dumps({"prompt": prompt, "candidates": [good, bad], "scores": [1.0, -1.0],
                                "token_rewards": rewards}) + "\n")
    out = tmp_path / "run"
    code = rs_cmd.main(["--model_name_or_path", str(model_dir), "--candidates_file", str(cands), "--output_dir",
                        str(out), "--max_steps", "2", "--per_device_train_batch_size", "2", "--logging_steps", "1",
                        "--bf16", "false", "--gradient_checkpointing", "false", "--use_cpu", "true",
                        "--report_to", "none", "--disable_tqdm", "true", "--asr_baseline", "zero",
                        "--asr_delta", "0"])
    assert code == 0
    selected = [json.loads(line) for line in open(out / "rs_selected.jsonl")]
    assert [s["title"].split(",")[1].strip() for s in selected] == ["candidate 0", "candidate 0"]
    assert all(s["kept"][0] and not s["kept"][1] for s in selected)  # +0.2, -0.2, ... vs baseline 0
    assert (out / "model.safetensors").is_file()


def test_plain_rs_records_the_scores_it_used(tmp_path):
    """mask_type none selects by sequence score: rs_selected.jsonl shows that score, not zeros."""
    from segrl.models.tiny import build_tiny_causal_lm, build_tiny_tokenizer
    from segrl.rs import ASRRejectionSampler, ASRRejectionSamplingConfig

    tok = build_tiny_tokenizer()
    args = ASRRejectionSamplingConfig(output_dir=str(tmp_path), mask_type="none", use_cpu=True, report_to="none",
                                      disable_tqdm=True)
    sampler = ASRRejectionSampler(build_tiny_causal_lm(tok, hidden_size=16, num_layers=1), args,
                                  processing_class=tok)
    records = [{"prompt": "1+1=", "prompt_ids": [5, 6], "candidate_ids": [[7, 8, 9], [10, 11]],
                "candidates": ["a", "b"], "scores": [0.25, -1.5]}]
    sampler.select(records)
    (row,) = [json.loads(line) for line in open(tmp_path / "rs_selected.jsonl")]
    assert row["reward_kind"] == "sequence" and row["score"] == 0.25
    assert row["rewards"] == [0.25, 0.25, 0.25] and row["kept"] == [True, True, True]
