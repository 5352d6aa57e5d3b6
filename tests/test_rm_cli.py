"""End to end through the CLI: `segrl train-rm` -> `segrl fit-norm` -> `segrl eval-rm` on tiny data,
with YAML configs and flag overrides; and a clean error on bad data."""

from __future__ import annotations

import json

import yaml
from rm_fixtures import TEST_ARGS, THRESHOLD, rm_env, tiny_rows  # noqa: F401


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_train_fit_eval_cli(rm_env, tmp_path, capsys):
    from segrl.cli import main
    from segrl.rm import SegmentRewardModel

    data = _jsonl(tmp_path / "prefs.jsonl", tiny_rows(16))
    out = tmp_path / "rm"
    train_cfg = {
        "model_name_or_path": rm_env.init_dir, "reference_model": rm_env.ref_dir, "dataset_name": data,
        "segment_threshold": 0.0,  # overridden by the flag below
        "output_dir": str(out), "per_device_train_batch_size": 4, "max_steps": 3, "learning_rate": 1e-3,
        **{k: v for k, v in TEST_ARGS.items() if k != "seed"},
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train_cfg))
    assert main(["train-rm", "--config", str(tmp_path / "train.yaml"), "--segment_threshold", str(THRESHOLD)]) == 0
    rm = SegmentRewardModel.from_pretrained(out)
    assert rm.threshold == THRESHOLD and rm.reference_model == rm_env.ref_dir and rm.normalizer is None

    fit_cfg = {"rm_path": str(out), "dataset": data, "n_pairs": 12, "device": "cpu", "progress": False}
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(fit_cfg))
    assert main(["fit-norm", "--config", str(tmp_path / "fit.yaml"), "--plot_path", str(tmp_path / "fit.png")]) == 0
    printed = capsys.readouterr().out
    summary, _ = json.JSONDecoder().raw_decode(printed[printed.index('{\n  "rm"'):])
    assert summary["n_pairs"] == 12 and (tmp_path / "fit.png").is_file()
    fitted = SegmentRewardModel.from_pretrained(out).normalizer
    assert fitted is not None and fitted.to_dict() == summary["coefficients"]

    assert main(["eval-rm", "--rm_path", str(out), "--dataset", data, "--output_json", str(tmp_path / "eval.json"),
                 "--device", "cpu", "--progress", "false"]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["n_pairs"] == 16 and 0.0 <= result["accuracy"] <= 1.0 and result["threshold"] == THRESHOLD


def test_cli_bad_data_is_a_clean_error(rm_env, tmp_path, capsys):
    from segrl.cli import main

    bad = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "1+1=", "chosen": "2"}])
    rc = main(["train-rm", "--model_name_or_path", rm_env.init_dir, "--dataset_name", bad, "--output_dir",
               str(tmp_path / "o"), "--use_cpu", "true", "--report_to", "none", "--bf16", "false",
               "--gradient_checkpointing", "false"])
    assert rc == 2
    assert "rejected" in capsys.readouterr().err


def test_eval_split_scores_held_out_pairs_and_implicit_prompt_warns(rm_env, tmp_path, capsys):
    from segrl.cli import main

    rows = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in tiny_rows(16)]
    data = _jsonl(tmp_path / "implicit.jsonl", rows)  # no `prompt` column
    out = tmp_path / "rm"
    args = ["train-rm", "--model_name_or_path", rm_env.init_dir, "--ref_model_name_or_path", rm_env.ref_dir,
            "--dataset_name", data, "--output_dir", str(out), "--eval_split", "0.25", "--max_steps", "1",
            "--per_device_train_batch_size", "4"]
    for key, value in TEST_ARGS.items():
        args += [f"--{key}", str(value)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "has no `prompt` column" in captured.err and "--implicit_prompt allow" in captured.err
    result = json.loads((out / "eval_results.json").read_text())
    assert result["n_pairs"] == 4 and result["eval_split"] is True  # 25 % of 16 pairs held out
    assert f"held-out accuracy {result['accuracy']:.4f} on 4 pairs" in captured.out
    # opt-in error instead of the warning; bad fractions are named errors before anything loads
    assert main(args + ["--implicit_prompt", "error", "--output_dir", str(tmp_path / "rm2")]) == 2
    assert "--implicit_prompt allow" in capsys.readouterr().err and not (tmp_path / "rm2").exists()
    assert main(args + ["--eval_split", "1.5", "--output_dir", str(tmp_path / "rm3")]) == 2
    assert "`eval_split` must be a fraction in (0, 1)" in capsys.readouterr().err
