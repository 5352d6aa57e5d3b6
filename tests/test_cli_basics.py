"""The `segrl` command line itself: `python -m segrl`, fast grouped `--help`, `--debug`, `--num_threads`,
one name per concept (deprecated aliases), CPU defaults, `segrl init`, and the package carrying its
examples and data (installed outside the clone)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from segrl.cli import main
from segrl.commands._common import parse_args

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "examples" / "configs").glob("*.yaml"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _command_of(config: Path) -> str | None:
    name = config.stem
    for prefix, command in (("dpo_", "dpo"), ("rs_", "rs"), ("ppo_", "ppo"), ("grpo_", "grpo"),
                            ("rm_fit_norm", "fit-norm"), ("rm_eval", "eval-rm"), ("rm_", "train-rm")):
        if name.startswith(prefix):
            return command
    return None  # eval_*: `segrl eval`, tested with the evals


def _parser(command: str):
    import importlib

    from segrl.cli import COMMANDS

    return importlib.import_module(COMMANDS[command][0]).make_parser()


@pytest.mark.parametrize("config", [c for c in CONFIGS if _command_of(c)], ids=lambda p: p.name)
def test_example_configs_use_one_name_per_concept(config, capsys):
    command = _command_of(config)
    parse_args(_parser(command), ["--config", str(config)], f"segrl {command}")
    err = capsys.readouterr().err
    assert "deprecated" not in err, err  # the shipped configs use the current names
    text = yaml.safe_load(config.read_text())
    assert "bf16" not in text and "use_cpu" not in text  # chosen from the hardware, not pinned
    for key in ("dataset", "policy", "reward_model", "rm_path", "segment_reward_model", "token_reward_model"):
        assert key not in text


def test_python_dash_m_segrl():
    out = subprocess.run([sys.executable, "-m", "segrl", "--help"], capture_output=True, text=True, env=ENV,
                         timeout=120)
    assert out.returncode == 0 and "usage: segrl" in out.stdout and "init" in out.stdout
    out = subprocess.run([sys.executable, "-m", "segrl", "--version"], capture_output=True, text=True, env=ENV,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("segrl ")


@pytest.mark.parametrize("command", ["dpo", "train-rm", "rs", "ppo", "grpo", "fit-norm", "eval-rm"])
def test_help_is_fast_grouped_and_imports_nothing_heavy(command):
    code = ("import sys, time; t = time.perf_counter(); from segrl.cli import main; "
            f"rc = main([{command!r}, '--help']); "
            "print('ELAPSED', time.perf_counter() - t); "
            "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout  # read from the source: no torch / transformers import
    elapsed = float(out.stdout.split("ELAPSED")[1].split()[0])
    assert elapsed < 2.0, elapsed
    text = out.stdout
    assert "global options:" in text and "--num_threads" in text and "--help-all" in text
    own = {"dpo": "--mask_type", "train-rm": "--segment_threshold", "rs": "--num_candidates",
           "ppo": "--kl_coef", "grpo": "--asr", "fit-norm": "--n_pairs", "eval-rm": "--max_pairs"}[command]
    assert own in text
    if command in ("dpo", "train-rm", "rs", "grpo"):  # inherited options come after segrl's own
        assert text.index(own) < text.index("common inherited options")
        assert "--gradient_accumulation_steps" not in text  # only behind --help-all


def test_help_all_lists_inherited_options(capsys):
    assert main(["dpo", "--help-all"]) == 0
    out = capsys.readouterr().out
    assert "--gradient_accumulation_steps" in out and "--mask_type" in out


def test_debug_prints_the_traceback(tmp_path, capsys, monkeypatch):
    args = ["fit-norm", "--reward_model_path", str(tmp_path / "nope"), "--dataset_name", "builtin:tiny_prefs"]
    monkeypatch.delenv("SEGRL_DEBUG", raising=False)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().count("\n") == 0  # one line
    assert main(["--debug", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "no such file or directory" in err
    monkeypatch.delenv("SEGRL_DEBUG", raising=False)


def test_unexpected_errors_are_one_line_exit_1(monkeypatch, capsys):
    import segrl.commands.fit_norm as fit_norm

    def boom(cfg):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(fit_norm, "run", boom)
    monkeypatch.delenv("SEGRL_DEBUG", raising=False)
    assert main(["fit-norm", "--reward_model_path", "x", "--dataset_name", "y"]) == 1
    err = capsys.readouterr().err
    assert "error: RuntimeError: disk on fire" in err and "--debug" in err and "Traceback" not in err


def test_deprecated_names_map_to_one_name_with_a_warning(capsys):
    (args,) = parse_args(_parser("ppo"), ["--policy", "p", "--reward_model", "r", "--dataset", "d"], "segrl ppo")
    assert (_field(args, "model_name_or_path", "policy"), _field(args, "reward_model_path", "reward_model"),
            _field(args, "dataset_name", "dataset")) == ("p", "r", "d")
    err = capsys.readouterr().err
    for old, new in (("policy", "model_name_or_path"), ("reward_model", "reward_model_path"),
                     ("dataset", "dataset_name")):
        assert f"`{old}` is deprecated, use `{new}`" in err
    (args,) = parse_args(_parser("ppo"), ["--model_name_or_path", "p", "--ref_model_name_or_path", "q"], "segrl ppo")
    assert (_field(args, "model_name_or_path", "policy"), _field(args, "ref_model_name_or_path", "reference_model")) \
        == ("p", "q")
    assert "deprecated" not in capsys.readouterr().err


def _field(args, *names):
    """The value of the first of ``names`` the config has (PPO's fields are being renamed to the one names)."""
    return next(getattr(args, n) for n in names if hasattr(args, n))


def test_an_option_of_the_same_name_is_not_renamed(capsys):
    """TRL GRPO has its own `delta` (two-sided clipping): it is not the ASR `asr_delta`."""
    _, args = parse_args(_parser("grpo"), ["--delta", "2.0", "--output_dir", "x"], "segrl grpo")
    assert args.delta == 2.0 and args.asr_delta != 2.0
    assert "deprecated" not in capsys.readouterr().err


def test_cpu_defaults_are_chosen_and_said(capsys, monkeypatch):
    import segrl.commands._common as common

    monkeypatch.setattr(common, "_has_gpu", lambda: False)
    _, args, _ = parse_args(_parser("dpo"), ["--output_dir", "x"], "segrl dpo")
    assert args.bf16 is False and args.use_cpu is True
    assert "no GPU found: using" in capsys.readouterr().err
    _, args, _ = parse_args(_parser("dpo"), ["--output_dir", "x", "--use_cpu", "false"], "segrl dpo")
    assert args.use_cpu is False  # explicit values win


def test_num_threads(monkeypatch):
    import torch

    for var in ("SEGRL_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)  # restored (absent) after the test
    before = torch.get_num_threads()
    try:
        parse_args(_parser("fit-norm"), ["--num_threads", "1", "--reward_model_path", "r"], "segrl fit-norm")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_init_writes_examples_and_data(tmp_path, capsys):
    target = tmp_path / "ex"
    assert main(["init", str(target)]) == 0
    names = {p.name for p in (target / "configs").glob("*.yaml")}
    assert names == {p.name for p in CONFIGS}
    assert (target / "data" / "tiny_prefs.jsonl").read_text() == (ROOT / "segrl/data/tiny_prefs.jsonl").read_text()
    assert "segrl train-rm" in (target / "README.md").read_text()
    assert main(["init", str(target)]) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(["init", str(target), "--overwrite", "true"]) == 0


def test_installed_package_carries_examples_and_data(tmp_path):
    """`pip install` (no deps, into a folder) and use it from outside the clone: `segrl init` and `builtin:`."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT)], check=True, capture_output=True, timeout=600)
    assert (target / "segrl" / "examples" / "configs" / "rm_segment.yaml").is_file()
    license_files = list(target.glob("segrl-*.dist-info/licenses/LICENSE"))
    assert license_files and "Apache License" in license_files[0].read_text()
    meta = next(target.glob("segrl-*.dist-info/METADATA")).read_text()
    assert "License-Expression: Apache-2.0" in meta
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**ENV, "PYTHONPATH": str(target)}
    code = ("import segrl, sys; assert segrl.__file__.startswith(sys.argv[1]), segrl.__file__; "
            "from segrl.cli import main; rc = main(['init', 'ex']); "
            "from segrl.data_checks import load_data; print('ROWS', len(load_data('builtin:tiny_prefs'))); "
            "raise SystemExit(rc)")
    out = subprocess.run([sys.executable, "-c", code, str(target)], cwd=work, capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "ROWS 48" in out.stdout and (work / "ex" / "configs" / "dpo_asr_segment_rm.yaml").is_file()


def test_help_timing_report():
    """Not an assertion beyond `--help` staying fast: prints the measured wall time of a cold process."""
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "segrl", "dpo", "--help"], capture_output=True, text=True, env=ENV,
                         timeout=120)
    elapsed = time.perf_counter() - t
    assert out.returncode == 0
    print(f"segrl dpo --help: {elapsed:.2f} s (cold process, including the interpreter start)")
    assert elapsed < 5.0


def test_viz_takes_asr_delta(capsys):
    from segrl.commands.viz import parse_config

    assert parse_config(["--asr_delta", "0.3", "--token_rewards_file", "x"]).delta == 0.3
    assert "deprecated" not in capsys.readouterr().err
    assert parse_config(["--delta", "0.2", "--token_rewards_file", "x"]).delta == 0.2
    assert "`delta` is deprecated, use `asr_delta`" in capsys.readouterr().err


@pytest.mark.parametrize("config", ["dpo", "rs", "rm"])
def test_python_configs_choose_bf16_from_the_hardware_without_deprecation_noise(config, monkeypatch, tmp_path):
    import warnings

    import segrl.hardware as hardware

    monkeypatch.setattr(hardware, "bf16_supported", lambda: False)  # a CPU-only machine
    if config == "dpo":
        from segrl.dpo import ASRDPOConfig as cls
    elif config == "rs":
        from segrl.rs import ASRRejectionSamplingConfig as cls
    else:
        from segrl.rm import SegmentRewardConfig as cls
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers' gradient_checkpointing rename
        args = cls(output_dir=str(tmp_path))
    assert args.bf16 is False  # TRL alone would say True and fail on this machine
    assert args.activation_checkpointing is True and args.gradient_checkpointing is True  # TRL's default kept
    assert cls(output_dir=str(tmp_path), gradient_checkpointing=False).activation_checkpointing is False


def test_global_num_threads_reaches_the_pipeline(monkeypatch, tmp_path):
    """`segrl demo --num_threads 2`: the global option is stripped before the demo config is parsed, so
    the pipeline must take it from the environment instead of its own default of 1."""
    from segrl.pipeline import stages
    from segrl.pipeline.options import PipelineOptions

    seen = {}

    class FakePipeline:
        def __init__(self, output_dir, **kwargs):
            seen.update(kwargs)

    monkeypatch.setattr(stages, "Pipeline", FakePipeline)
    options = PipelineOptions(output_dir=str(tmp_path))
    monkeypatch.delenv("SEGRL_NUM_THREADS", raising=False)
    options.build()
    assert seen["num_threads"] == 1  # the option's default
    monkeypatch.setenv("SEGRL_NUM_THREADS", "2")
    options.build()
    assert seen["num_threads"] == 2


def test_global_options_also_before_the_command(monkeypatch, capsys):
    import torch

    from segrl.cli import main

    for var in ("SEGRL_NUM_THREADS", "SEGRL_DEBUG", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    before = torch.get_num_threads()
    try:
        assert main(["--num_threads", "1", "--debug", "fit-norm", "--help"]) == 0
        assert os.environ["SEGRL_NUM_THREADS"] == "1" and os.environ["SEGRL_DEBUG"] == "1"
        assert main(["--num_threads=x", "fit-norm", "--help"]) == 2
        assert "`--num_threads` must be a positive integer" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("fails", [False, True])
def test_the_process_group_is_released_when_a_command_ends(fails, monkeypatch, tmp_path, capsys):
    """A live Gloo group at interpreter exit can abort a finished torchrun rank (SIGABRT,
    pytorch/pytorch#190489): ``segrl`` destroys the group a command created, also when it failed."""
    import importlib

    import torch.distributed as dist

    module = importlib.import_module("segrl.commands.viz")

    def fake_main(argv):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        if fails:
            raise RuntimeError("boom")
        return 0

    monkeypatch.setattr(module, "main", fake_main)
    try:
        assert main(["viz"]) == (1 if fails else 0)
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
