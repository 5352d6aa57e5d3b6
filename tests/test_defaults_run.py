"""Defaults that run: every training / scoring command finishes on a CPU machine with only its
required arguments (model, data, output; the reward model where the method needs one), on a tiny
model and a small data file. Nothing else is passed: every other option is its default."""

from __future__ import annotations

import json

import pytest

from segrl.cli import main

PREFS = [{"prompt": f"{a}+{b}=", "chosen": f"{a}+{b}={a + b};={a + b}", "rejected": f"{a}+{b}={a + b + 1};={a + b + 1}"}
         for a in range(1, 5) for b in range(1, 5)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from segrl.models.tiny import make_tiny_model_dir

    root = tmp_path_factory.mktemp("defaults")
    model = str(make_tiny_model_dir(root / "model", hidden_size=16, num_layers=1))
    prefs = root / "prefs.jsonl"
    prefs.write_text("".join(json.dumps(r) + "\n" for r in PREFS))
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in PREFS))
    return root, model, str(prefs), str(prompts)


@pytest.mark.slow
def test_every_command_runs_with_only_its_required_arguments(setup, capsys):
    root, model, prefs, prompts = setup
    rm = str(root / "rm")
    steps = [
        ["train-rm", "--model_name_or_path", model, "--dataset_name", prefs, "--output_dir", rm],
        ["fit-norm", "--reward_model_path", rm, "--dataset_name", prefs, "--output_dir", rm],
        ["eval-rm", "--reward_model_path", rm, "--dataset_name", prefs, "--output_json", str(root / "eval.json")],
        # ASR-DPO (the default mask) needs token rewards: the RM is its one required source
        ["dpo", "--model_name_or_path", model, "--dataset_name", prefs, "--reward_model_path", rm,
         "--output_dir", str(root / "dpo")],
        ["rs", "--model_name_or_path", model, "--reward_model_path", rm, "--dataset_name", prompts,
         "--output_dir", str(root / "rs")],
        ["ppo", "--model_name_or_path", model, "--reward_model_path", rm, "--dataset_name", prompts,
         "--output_dir", str(root / "ppo")],
        ["grpo", "--model_name_or_path", model, "--reward_model_path", rm, "--dataset_name", prompts,
         "--output_dir", str(root / "grpo")],
    ]
    for argv in steps:
        rc = main(argv)
        captured = capsys.readouterr()
        assert rc == 0, f"segrl {argv[0]} failed with its defaults:\n{captured.err[-3000:]}"
    for out in ("dpo", "rs", "ppo", "grpo"):
        assert (root / out / "config.json").exists(), out
    assert json.loads((root / "eval.json").read_text())
