"""``segrl dpo``: YAML configs parse; end-to-end training, checkpoints and resume (slow)."""

import json
from pathlib import Path

import pytest

from segrl.commands._common import parse_args
from segrl.commands import dpo as dpo_cmd

CONFIGS = sorted((Path(__file__).parent.parent / "examples" / "configs").glob("dpo_*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_configs_parse(path):
    script, args, model = parse_args(dpo_cmd.make_parser(), ["--config", str(path)], "segrl dpo")
    assert script.dataset_name and model.model_name_or_path
    assert args.mask_type in ("asr", "tokenwise", "stepwise", "none")
    assert args.output_dir.startswith("runs/")


def test_flags_override_yaml():
    path = next(p for p in CONFIGS if p.name == "dpo_asr_implicit.yaml")
    _, args, _ = parse_args(dpo_cmd.make_parser(), ["--config", str(path), "--mask_type", "stepwise",
                                                     "--asr_baseline", "0.5"], "segrl dpo")
    assert args.mask_type == "stepwise" and args.asr_baseline == 0.5


def _write_data(tok, path, n=8):
    from segrl.models.tiny_data import load_tiny_prefs

    with open(path, "w") as f:
        for r in load_tiny_prefs()[:n]:
            for side in ("chosen", "rejected"):
                # rewards for the text tokens only: TRL's appended EOS repeats the last one
                n_tok = len(tok(r["prompt"] + r[side])["input_ids"]) - len(tok(r["prompt"])["input_ids"])
                r[f"{side}_token_rewards"] = [(-1.0) ** t for t in range(n_tok)]
            f.write(json.dumps(r) + "\n")


@pytest.mark.slow
def test_cli_trains_checkpoints_and_resumes(tmp_path):
    from segrl.models.tiny import build_tiny_tokenizer, make_tiny_model_dir

    tok = build_tiny_tokenizer()
    model_dir = make_tiny_model_dir(tmp_path / "model", tokenizer=tok, hidden_size=32, num_layers=1)
    data = tmp_path / "prefs.jsonl"
    _write_data(tok, data)
    out = tmp_path / "run"
    base = ["--model_name_or_path", str(model_dir), "--dataset_name", str(data), "--output_dir", str(out),
            "--per_device_train_batch_size", "4", "--save_strategy", "steps", "--save_steps", "2",
            "--logging_steps", "1", "--bf16", "false", "--gradient_checkpointing", "false", "--use_cpu", "true",
            "--report_to", "none", "--disable_tqdm", "true", "--asr_delta", "0.5"]
    assert dpo_cmd.main(base + ["--max_steps", "2"]) == 0
    assert (out / "checkpoint-2").is_dir() and (out / "model.safetensors").is_file()
    assert dpo_cmd.main(base + ["--max_steps", "4", "--resume_from_checkpoint", "last"]) == 0
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    logged = [h["step"] for h in state["log_history"] if "loss" in h]
    assert logged == [1, 2, 3, 4]
    assert all("asr/kept_token_fraction_chosen" in h for h in state["log_history"] if "loss" in h)


@pytest.mark.slow
def test_cli_reports_bad_input(tmp_path, capsys):
    from segrl.models.tiny import build_tiny_tokenizer, make_tiny_model_dir

    tok = build_tiny_tokenizer()
    model_dir = make_tiny_model_dir(tmp_path / "model", tokenizer=tok, hidden_size=32, num_layers=1)
    data = tmp_path / "prefs.jsonl"
    from segrl.models.tiny_data import load_tiny_prefs

    data.write_text("\n".join(json.dumps(r) for r in load_tiny_prefs()[:4]) + "\n")  # no token reward columns
    code = dpo_cmd.main(["--model_name_or_path", str(model_dir), "--dataset_name", str(data), "--output_dir",
                         str(tmp_path / "run"), "--use_cpu", "true", "--bf16", "false", "--report_to", "none"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no `chosen_token_rewards` / `rejected_token_rewards` column" in err and "--token_reward_source" in err
    assert not (tmp_path / "run").exists()  # checked before any model load or output
