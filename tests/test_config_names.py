"""One name per concept in the Python configs: the renamed fields keep their old names as deprecated aliases.

ASRDPOConfig ``token_reward_model``, ASRRejectionSamplingConfig ``reward_model`` and SegmentGRPOConfig
``segment_reward_model`` are now ``reward_model_path``; SegmentRewardConfig ``reference_model`` is
``ref_model_name_or_path`` (as in SegmentPPOConfig and the command line).
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import yaml

from segrl.commands._common import parse_args
from segrl.deprecation import apply_renamed_fields

TEST_ARGS = dict(bf16=False, use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True)


def _dpo(**kw):
    from segrl.dpo import ASRDPOConfig

    return ASRDPOConfig(**TEST_ARGS, **kw)


def _rs(**kw):
    from segrl.rs import ASRRejectionSamplingConfig

    return ASRRejectionSamplingConfig(**TEST_ARGS, **kw)


def _grpo(**kw):
    from segrl.grpo import SegmentGRPOConfig

    return SegmentGRPOConfig(**TEST_ARGS, per_device_train_batch_size=4, num_generations=4, **kw)


def _rm(**kw):
    from segrl.rm import SegmentRewardConfig

    return SegmentRewardConfig(**TEST_ARGS, **kw)


# (builder, old name, new name)
RENAMES = [
    (_dpo, "token_reward_model", "reward_model_path"),
    (_rs, "reward_model", "reward_model_path"),
    (_grpo, "segment_reward_model", "reward_model_path"),
    (_rm, "reference_model", "ref_model_name_or_path"),
]
IDS = [f"{b.__name__[1:]}.{old}" for b, old, _ in RENAMES]


@pytest.mark.parametrize("make,old,new", RENAMES, ids=IDS)
def test_old_name_warns_and_sets_the_new_field(make, old, new, tmp_path):
    with pytest.warns(FutureWarning) as record:
        args = make(output_dir=str(tmp_path), **{old: "runs/rm"})
    messages = [str(w.message) for w in record if f"`{old}`" in str(w.message)]
    assert messages and f"`{new}`" in messages[0], [str(w.message) for w in record]
    assert record[0].filename == __file__  # points at the caller, not at segrl
    assert getattr(args, new) == "runs/rm"
    assert getattr(args, old) is None  # consumed: one field to read, and dataclasses.replace works
    if make is not _grpo:  # TRL's GRPOConfig cannot be replace()d at all (generation_batch_size is set twice)
        assert getattr(dataclasses.replace(args, **{new: "other"}), new) == "other"


@pytest.mark.parametrize("make,old,new", RENAMES, ids=IDS)
def test_new_name_works_without_a_warning(make, old, new, tmp_path):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        args = make(output_dir=str(tmp_path), **{new: "runs/rm"})
    assert not [w for w in record if f"`{old}`" in str(w.message)]
    assert getattr(args, new) == "runs/rm" and getattr(args, old) is None


@pytest.mark.parametrize("make,old,new", RENAMES, ids=IDS)
def test_both_names_with_different_values_is_an_error(make, old, new, tmp_path):
    with pytest.raises(ValueError, match=rf"`{old}` \(deprecated\) = 'a' and `{new}` = 'b' disagree"):
        make(output_dir=str(tmp_path), **{old: "a", new: "b"})
    with pytest.warns(FutureWarning):  # the same value twice is only the deprecation
        assert getattr(make(output_dir=str(tmp_path), **{old: "a", new: "a"}), new) == "a"


def test_apply_renamed_fields_by_hand():
    @dataclasses.dataclass
    class Cfg:
        new: str | None = None
        old: str | None = None

    cfg = Cfg(old="x")
    with pytest.warns(FutureWarning, match="`old` is deprecated, use `new`"):
        apply_renamed_fields(cfg, {"old": "new"})
    assert (cfg.new, cfg.old) == ("x", None)
    cfg = Cfg(new="y")
    apply_renamed_fields(cfg, {"old": "new"})  # nothing to map: no warning (filterwarnings=error would fail)
    assert (cfg.new, cfg.old) == ("y", None)


def test_ppo_config_uses_the_same_names():
    from segrl.ppo import SegmentPPOConfig

    names = {f.name for f in dataclasses.fields(SegmentPPOConfig)}
    assert {"model_name_or_path", "reward_model_path", "ref_model_name_or_path", "dataset_name"} <= names


# -------------------------------------------------------------------------------------------------- CLI


def _parser(command: str):
    import importlib

    from segrl.cli import COMMANDS

    return importlib.import_module(COMMANDS[command][0]).make_parser()


CLI = [("dpo", "token_reward_model", "reward_model_path"), ("rs", "reward_model", "reward_model_path"),
       ("grpo", "segment_reward_model", "reward_model_path"), ("train-rm", "reference_model", "ref_model_name_or_path"),
       ("dpo", "rm_path", "reward_model_path")]


def _config_of(outputs, field):
    return next(o for o in outputs if hasattr(o, field))


@pytest.mark.parametrize("command,old,new", CLI)
def test_cli_old_flag_and_yaml_key_set_the_new_field(command, old, new, tmp_path, capsys):
    base = ["--output_dir", str(tmp_path)]
    outputs = parse_args(_parser(command), base + [f"--{old}", "runs/rm"], f"segrl {command}")
    assert f"`{old}` is deprecated, use `{new}`" in capsys.readouterr().err
    assert getattr(_config_of(outputs, new), new) == "runs/rm"

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({old: "runs/rm2"}))
    outputs = parse_args(_parser(command), base + ["--config", str(config)], f"segrl {command}")
    assert f"`{old}` is deprecated, use `{new}`" in capsys.readouterr().err
    assert getattr(_config_of(outputs, new), new) == "runs/rm2"

    outputs = parse_args(_parser(command), base + [f"--{new}", "runs/rm3"], f"segrl {command}")
    assert "deprecated" not in capsys.readouterr().err
    assert getattr(_config_of(outputs, new), new) == "runs/rm3"


@pytest.mark.parametrize("command,old,new", CLI[:4])
def test_fast_help_lists_the_old_field_on_the_new_name(command, old, new):
    import contextlib
    import io

    from segrl.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main([command, "--help"]) == 0
    text = buf.getvalue()
    flat = " ".join(text.split())  # help lines are wrapped
    assert f"--{new}" in text and f"[deprecated name: --{old}]" in flat
    assert f"\n  --{old} " not in text  # not an option of its own


# ---------------------------------------------------------------------------------------- metric names


def test_pipeline_readers_take_the_namespaced_metric_and_the_old_key():
    from segrl.pipeline.runners.common import metric

    assert metric({"asr/kept_token_fraction": 0.4, "kept_token_fraction": 0.9}, "asr/kept_token_fraction",
                  "kept_token_fraction") == 0.4  # the new key wins
    assert metric({"rs/kept_token_fraction": 0.7}, "asr/kept_token_fraction", "rs/kept_token_fraction") == 0.7
    assert metric({"segments_per_response": 3.0}, "rm/segments_per_response", "segments_per_response") == 3.0
    assert metric({}, "rm/segments_per_response", "segments_per_response") is None
