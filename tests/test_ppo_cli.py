"""`segrl train-rm` -> `segrl fit-norm` -> `segrl ppo` end to end on tiny offline models."""

from __future__ import annotations

import json

import pytest
import yaml
from rm_fixtures import TEST_ARGS, THRESHOLD, rm_env, tiny_rows  # noqa: F401


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def fitted_rm(rm_env, tmp_path_factory):
    from segrl.cli import main

    tmp = tmp_path_factory.mktemp("ppo_cli")
    data = _jsonl(tmp / "prefs.jsonl", tiny_rows(16))
    out = tmp / "rm"
    args = ["train-rm", "--model_name_or_path", rm_env.init_dir, "--reference_model", rm_env.ref_dir,
            "--dataset_name", data, "--segment_threshold", str(THRESHOLD), "--output_dir", str(out),
            "--per_device_train_batch_size", "4", "--max_steps", "2", "--learning_rate", "1e-3"]
    for key, value in TEST_ARGS.items():
        args += [f"--{key}", str(value)]
    assert main(args) == 0
    assert main(["fit-norm", "--rm_path", str(out), "--dataset", data, "--n_pairs", "8", "--device", "cpu",
                 "--progress", "false", "--plot_path", str(tmp / "fit.png")]) == 0
    return tmp, out, data


@pytest.mark.parametrize("arm", ["segment", "bandit"])
def test_ppo_cli_runs_and_resumes(rm_env, fitted_rm, tmp_path, arm):
    from segrl.cli import main

    _, rm_path, data = fitted_rm
    cfg = {
        "policy": rm_env.init_dir, "reference_model": rm_env.ref_dir, "reward_model": str(rm_path),
        "dataset": data, "output_dir": str(tmp_path / "ppo"), "num_iterations": 2, "rollout_batch_size": 4,
        "mini_batch_size": 2, "max_new_tokens": 8, "learning_rate": 1e-4, "critic_learning_rate": 1e-4,
        "save_steps": 1, "use_cpu": True, "asr": arm == "segment",
    }
    if arm == "bandit":
        cfg["segment_threshold"] = "inf"
    (tmp_path / "ppo.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["ppo", "--config", str(tmp_path / "ppo.yaml")]) == 0
    lines = (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    if arm == "bandit":
        assert first["segments_per_response"] == 1.0
    assert (tmp_path / "ppo" / "checkpoint-2" / "segrl_state.json").exists()
    assert (tmp_path / "ppo" / "config.json").exists() and (tmp_path / "ppo" / "critic" / "config.json").exists()
    # resume from the newest checkpoint and run one more iteration
    assert main(["ppo", "--config", str(tmp_path / "ppo.yaml"), "--num_iterations", "3",
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
