"""``segrl experiment`` on the tiny config: every output is produced, well-formed and consistent."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from segrl.cli import main
from segrl.commands.experiment import DEFAULT_METHODS, parse_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "tiny.yaml"
FULL = ROOT / "experiments" / "credit_assignment.yaml"


def test_full_config_parses_and_names_known_methods():
    from segrl.commands.experiment import validate
    from segrl.pipeline.settings import METHODS

    cfg = parse_config(["--config", str(FULL)])
    validate(cfg)
    assert len(cfg.seeds) >= 3 and set(cfg.methods) <= set(METHODS)
    families = {METHODS[m].family for m in cfg.methods}
    assert families == {"dpo", "ppo", "rs"}
    assert {"dpo", "asr_dpo_segrm", "tokenwise_dpo_segrm", "stepwise_dpo_segrm", "ppo_bandit", "ppo_token",
            "ppo_segment"} <= set(cfg.methods)
    assert set(DEFAULT_METHODS) <= set(METHODS)


def test_bad_options_are_rejected(tmp_path, capsys):
    assert main(["experiment", "--config", str(TINY), "--output_dir", str(tmp_path / "x"),
                 "--methods", "dpo", "magic"]) == 2
    assert "magic" in capsys.readouterr().err
    assert main(["experiment", "--config", str(TINY), "--output_dir", str(tmp_path / "x"), "--seeds", "1", "1"]) == 2
    assert "seeds" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _check_stat(stat, n):
    assert len(stat["values"]) == n
    assert all(0.0 <= v <= 1.0 for v in stat["values"])
    assert stat["mean"] == pytest.approx(sum(stat["values"]) / n)
    if n > 1:
        mean = stat["mean"]
        assert stat["std"] == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in stat["values"]) / (n - 1)))


def test_tiny_experiment(tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["experiment", "--config", str(TINY), "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| ASR-DPO (segment RM) | 2 |" in printed

    data = json.loads((out / "results.json").read_text())
    assert data["complete"] is True and data["config"]["seeds"] == [0, 1]
    methods = data["config"]["methods"]
    summary = data["summary"]
    assert list(summary["methods"]) == methods
    assert len(data["runs"]) == 2 * len(methods) and len(data["runs_done"]) == 2 * len(methods)
    for name, entry in summary["methods"].items():
        assert entry["n_seeds"] == 2 and entry["seeds"] == [0, 1]
        for key in ("final_step_accuracy", "final_exact_match", "best_step_accuracy", "best_exact_match",
                    "mean_ckpt_step_accuracy", "mean_ckpt_exact_match"):
            _check_stat(entry[key], 2)
        kept = entry["kept_token_fraction"]["values"]
        if name in ("dpo", "ppo_segment", "rs_segrm"):
            assert kept == [1.0, 1.0]
        else:
            assert all(0.0 < k < 1.0 for k in kept), (name, kept)
    # Seeds change the pairs: the per-seed numbers of a DPO run are not copies of each other.
    pairs = {p["seed"]: p for p in data["pairs"]}
    assert set(pairs) == {0, 1}
    train0 = (out / "seed0" / "pairs_train.jsonl").read_text()
    train1 = (out / "seed1" / "pairs_train.jsonl").read_text()
    assert train0 != train1
    # One shared SFT model: a single SFT record, and every run's curve starts from its dev numbers.
    assert len(data["sft"]) == 1 and data["sft_shared"] is True
    for run in data["runs"]:
        assert run["curve"][0]["step"] == 0
        assert run["curve"][0]["step_accuracy"] == data["sft"][0]["dev"]["step_accuracy"]
        assert run["best"]["step"] in [c["step"] for c in run["curve"]]
    rms = {(r["seed"], r["arm"]) for r in data["reward_models"]}
    assert rms == {(0, "segment"), (1, "segment")}
    for r in data["reward_models"]:
        assert 0.0 <= r["eval"]["accuracy"] <= 1.0 and r["credit"]["auc"] is None or 0.0 <= r["credit"]["auc"] <= 1.0

    md = (out / "results.md").read_text()
    assert "Partial" not in md
    for entry in summary["methods"].values():
        assert f"| {entry['label']} | 2 |" in md
    for name in ("curves.png", "comparison.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / name).stat().st_size > 10_000
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 3 and "Reward models" in report
    # credit of both seeds' RMs and DPO implicit rewards, the training pairs' masks, provenance
    assert report.count("implicit reward of the DPO run") == 2 and "What the mask did in training" in report
    assert "id='provenance'" in report and (out / "training_pairs.html").is_file()
