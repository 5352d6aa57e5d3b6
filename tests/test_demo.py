"""``segrl demo`` options: parsing, ``--quick``, YAML configs and validation.

The demo itself (every stage, the report, the cached re-run) runs end to end in ``tests/test_pipeline.py``.
"""

from __future__ import annotations

import pytest

from segrl.cli import main
from segrl.commands.demo import DEMO_METHODS, QUICK, parse_config


def test_defaults_are_the_full_demo():
    cfg = parse_config([])
    assert cfg.output_dir == "runs/demo" and cfg.methods == DEMO_METHODS and not cfg.quick
    # The same stage settings as experiments/credit_assignment.yaml, one seed, three methods.
    assert cfg.dpo_steps == 100 and cfg.pair_prompts == 3000 and cfg.eval_test == 500 and cfg.seeds == [0]


def test_quick_shrinks_only_what_is_not_given(tmp_path):
    cfg = parse_config(["--quick", "--dpo_steps", "3"])
    assert cfg.dpo_steps == 3  # given on the command line: kept
    assert cfg.ppo_iterations == QUICK["ppo_iterations"] and cfg.eval_test == QUICK["eval_test"]
    yaml_file = tmp_path / "demo.yaml"
    yaml_file.write_text(f"output_dir: {tmp_path / 'out'}\nquick: true\nppo_iterations: 2\nasr_delta: 0.05\n")
    cfg = parse_config(["--config", str(yaml_file)])
    assert cfg.quick and cfg.ppo_iterations == 2 and cfg.asr_delta == 0.05  # YAML keys win over --quick
    assert cfg.dpo_steps == QUICK["dpo_steps"] and cfg.output_dir == str(tmp_path / "out")
    cfg = parse_config(["--config", str(yaml_file), "--ppo_iterations", "4"])
    assert cfg.ppo_iterations == 4  # flags override the YAML


@pytest.mark.parametrize("flags, word", [
    (["--methods", "dpo", "nonsense"], "methods"),
    (["--asr_baseline", "median"], "asr_baseline"),
    (["--asr_delta", "-1"], "asr_delta"),
    (["--heatmap_prompts", "0"], "heatmap_prompts"),
    (["--pair_source", "web"], "pair_source"),
])
def test_demo_rejects_bad_options(tmp_path, capsys, flags, word):
    out = tmp_path / "demo"
    assert main(["demo", "--output_dir", str(out), *flags]) == 2
    assert word in capsys.readouterr().err
    assert not out.exists()  # validated before anything is built


@pytest.mark.parametrize("command", ["demo", "experiment"])
def test_help_lists_every_option(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--output_dir", "--methods", "--asr_baseline", "--segment_threshold", "--dpo_steps", "--train_sft"):
        assert flag in text
