"""`segrl train-rm` -> `segrl fit-norm` -> `segrl ppo` end to end on tiny offline models."""

from __future__ import annotations

import json

import pytest
import yaml
from rm_fixtures import TEST_ARGS, THRESHOLD, _jsonl, fitted_rm, rm_env, tiny_rows  # noqa: F401


@pytest.mark.parametrize("arm", ["segment", "bandit"])
def test_ppo_cli_runs_and_resumes(rm_env, fitted_rm, tmp_path, arm):
    from segrl.cli import main

    _, rm_path, data = fitted_rm
    cfg = {
        "model_name_or_path": rm_env.init_dir, "ref_model_name_or_path": rm_env.ref_dir,
        "reward_model_path": str(rm_path), "dataset_name": data, "output_dir": str(tmp_path / "ppo"),
        "total_episodes": 8, "rollout_batch_size": 4,
        "mini_batch_size": 2, "max_new_tokens": 8, "learning_rate": 1e-4, "critic_learning_rate": 1e-4,
        "save_steps": 1, "use_cpu": True, "mask_type": "asr" if arm == "segment" else "none",
    }
    if arm == "bandit":
        cfg["segment_threshold"] = "inf"
    (tmp_path / "ppo.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["ppo", "--config", str(tmp_path / "ppo.yaml")]) == 0
    lines = (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    if arm == "bandit":
        assert first["rm/segments_per_response"] == 1.0
    assert (tmp_path / "ppo" / "checkpoint-2" / "segrl_state.json").exists()
    assert (tmp_path / "ppo" / "config.json").exists() and (tmp_path / "ppo" / "critic" / "config.json").exists()
    # resume from the newest checkpoint and run one more iteration
    assert main(["ppo", "--config", str(tmp_path / "ppo.yaml"), "--total_episodes", "12",
                 "--resume_from_checkpoint", "latest"]) == 0
    assert len((tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()) == 3


def test_ppo_cli_without_fit_is_an_error(rm_env, tmp_path, capsys):
    from segrl.cli import main

    data = _jsonl(tmp_path / "prefs.jsonl", tiny_rows(8))
    args = ["train-rm", "--model_name_or_path", rm_env.init_dir, "--reference_model", rm_env.ref_dir,
            "--dataset_name", data, "--output_dir", str(tmp_path / "rm"), "--max_steps", "1",
            "--per_device_train_batch_size", "4"]
    for key, value in TEST_ARGS.items():
        args += [f"--{key}", str(value)]
    assert main(args) == 0
    rc = main(["ppo", "--policy", rm_env.init_dir, "--reward_model", str(tmp_path / "rm"), "--dataset", data,
               "--output_dir", str(tmp_path / "ppo"), "--num_iterations", "1", "--use_cpu", "true"])
    assert rc == 2 and "fit-norm" in capsys.readouterr().err


def test_ppo_cli_chat_data_lora_eval_and_old_names(rm_env, fitted_rm, tmp_path, capsys):
    """Conversational prompts from a save_to_disk DatasetDict (train / test splits), LoRA, accumulation,
    a schedule and periodic evaluation on the test split, through the old flag names (warned)."""
    import datasets

    from segrl.cli import main

    _, rm_path, _ = fitted_rm
    chats = [[{"role": "user", "content": f"{a}+{b}="}] for a in range(1, 7) for b in range(1, 3)]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"prompt": chats[:8]}),
                          "test": datasets.Dataset.from_dict({"prompt": chats[8:]})}).save_to_disk(tmp_path / "data")
    out = tmp_path / "ppo"
    rc = main(["ppo", "--policy", rm_env.init_dir, "--reward_model", str(rm_path), "--dataset", str(tmp_path / "data"),
               "--ref_model_name_or_path", rm_env.init_dir, "--output_dir", str(out), "--num_train_epochs", "1",
               "--rollout_batch_size", "4", "--mini_batch_size", "4", "--gradient_accumulation_steps", "2",
               "--max_new_tokens", "6", "--use_peft", "true", "--lora_r", "4", "--torch_dtype", "float32",
               "--lr_scheduler_type", "linear", "--warmup_ratio", "0.5", "--eval_steps", "1", "--use_cpu", "true"])
    err = capsys.readouterr().err
    assert rc == 0, err
    for old in ("policy", "reward_model", "dataset", "torch_dtype"):
        assert f"`{old}` is deprecated" in err
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2  # 8 prompts / 4 per iteration
    assert all("eval_reward" in m and "eval_kl" in m for m in lines)
    assert (out / "adapter_config.json").exists()  # LoRA: the adapter is what is saved


def test_ppo_prompt_loader_formats(tmp_path):
    """The same loader as segrl dpo: csv and jsonl files, save_to_disk directories; held-out fractions."""
    import datasets

    from segrl.ppo.build import load_ppo_prompts
    from segrl.ppo.config import SegmentPPOConfig

    (tmp_path / "p.csv").write_text("prompt\n1+1=\n2+2=\n3+3=\n4+4=\n")
    train, held = load_ppo_prompts(SegmentPPOConfig(dataset_name=str(tmp_path / "p.csv")))
    assert train == ["1+1=", "2+2=", "3+3=", "4+4="] and held is None
    train, held = load_ppo_prompts(SegmentPPOConfig(dataset_name=str(tmp_path / "p.csv"), eval_split=0.25))
    assert len(train) == 3 and len(held) == 1 and set(train) | set(held) == {"1+1=", "2+2=", "3+3=", "4+4="}
    datasets.Dataset.from_dict({"prompt": ["a", "b"]}).save_to_disk(tmp_path / "disk")
    assert load_ppo_prompts(SegmentPPOConfig(dataset_name=str(tmp_path / "disk")))[0] == ["a", "b"]
    with pytest.raises(ValueError, match="eval_split"):
        load_ppo_prompts(SegmentPPOConfig(dataset_name=str(tmp_path / "p.csv"), eval_steps=2))
    with pytest.raises(ValueError, match="prompt"):
        (tmp_path / "q.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
        load_ppo_prompts(SegmentPPOConfig(dataset_name=str(tmp_path / "q.jsonl")))
