"""ASRArguments: the one definition of the ASR options, checked at construction (errors name the field)."""

import dataclasses

import pytest
import torch

from segrl import ops
from segrl.asr_options import ASRArguments


def test_defaults_are_the_trainer_defaults():
    # Trainer-level defaults: sequence-mean baseline, delta resolved as the 0.3-quantile of |r - b|.
    args = ASRArguments()
    assert (args.mask_type, args.asr_baseline, args.asr_delta, args.asr_delta_quantile) == (
        "asr", "sequence_mean", "auto", 0.3)
    assert (args.asr_neutral, args.asr_empty) == ("drop", "full")
    assert args.mask_kwargs() == {"kind": "asr", "baseline": "sequence_mean", "delta": "auto",
                                  "delta_quantile": 0.3, "neutral": "drop", "empty": "full"}


def test_strings_from_a_cli_are_parsed():
    args = ASRArguments(asr_baseline="0.5", asr_delta="0.05", asr_delta_quantile="0.4")
    assert args.asr_baseline == 0.5 and args.asr_delta == 0.05 and args.asr_delta_quantile == 0.4
    assert ASRArguments(asr_delta="AUTO").asr_delta == "auto"
    assert ASRArguments(asr_delta=0).asr_delta == 0.0
    assert ASRArguments(asr_baseline="position_mean").asr_baseline == "position_mean"


@pytest.mark.parametrize("field, value", [
    ("mask_type", "segments"),
    ("asr_baseline", "median"),
    ("asr_baseline", float("nan")),
    ("asr_baseline", True),
    ("asr_delta", -0.1),
    ("asr_delta", "big"),
    ("asr_delta", float("inf")),
    ("asr_delta", True),
    ("asr_delta_quantile", 1.5),
    ("asr_delta_quantile", -0.01),
    ("asr_delta_quantile", float("nan")),
    ("asr_delta_quantile", "q"),
    ("asr_neutral", "maybe"),
    ("asr_empty", "half"),
])
def test_bad_values_are_rejected_at_construction(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        ASRArguments(**{field: value})


def test_stepwise_needs_boundary_chars():
    with pytest.raises(ValueError, match="step_boundary_chars"):
        ASRArguments(mask_type="stepwise", step_boundary_chars="")
    ASRArguments(mask_type="asr", step_boundary_chars="")  # only step-wise reads them


def test_every_field_has_a_help_string():
    for f in dataclasses.fields(ASRArguments):
        assert f.metadata.get("help"), f.name


def test_mask_kwargs_drive_keep_mask():
    r = torch.tensor([[1.0, -1.0, 0.2, -0.3]])
    m = torch.ones(1, 4, dtype=torch.bool)
    kwargs = ASRArguments(mask_type="tokenwise", asr_baseline="zero").mask_kwargs()
    assert ops.keep_mask(r, m, torch.tensor([1]), **kwargs).keep.tolist() == [[True, False, True, False]]


def test_trainer_configs_share_the_fields():
    from segrl.dpo import ASRDPOConfig
    from segrl.rs.config import ASRRejectionSamplingConfig

    names = {f.name for f in dataclasses.fields(ASRArguments)}
    for config in (ASRDPOConfig, ASRRejectionSamplingConfig):
        assert issubclass(config, ASRArguments)
        fields = {f.name: f for f in dataclasses.fields(config)}
        for name in names:  # one definition: the same help string and default as ASRArguments
            assert fields[name].metadata["help"] == {f.name: f for f in dataclasses.fields(ASRArguments)}[
                name].metadata["help"]
        with pytest.raises(ValueError, match="asr_delta"):
            config(output_dir="/tmp/unused", asr_delta=-1.0, use_cpu=True)
        cfg = config(output_dir="/tmp/unused", asr_delta="0.05", report_to="none", use_cpu=True)
        assert cfg.asr_delta == 0.05 and cfg.asr_baseline == "sequence_mean"
