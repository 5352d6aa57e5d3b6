"""The pipeline's ASR options (``segrl experiment`` / ``segrl demo``) take their defaults from
``ASRArguments``, accept ``asr_delta="auto"`` and key the cached runs on exactly what they depend on."""

from __future__ import annotations

import pytest

from segrl.asr_options import ASRArguments
from segrl.pipeline.options import PipelineOptions
from segrl.pipeline.settings import DPOSettings


def test_defaults_are_asr_arguments_defaults():
    asr = ASRArguments()
    dpo = PipelineOptions().stage_settings()["dpo"]
    # The values docs/method.md#asr-mask sets for the trainers; the pipeline must not keep its own copy.
    assert (dpo.asr_baseline, dpo.asr_delta, dpo.asr_delta_quantile) == ("sequence_mean", "auto", 0.3)
    assert (asr.asr_baseline, asr.asr_delta, asr.asr_delta_quantile) == ("sequence_mean", "auto", 0.3)
    assert DPOSettings().asr_delta == "auto"


def test_delta_auto_number_and_bad_values():
    assert PipelineOptions(asr_delta="AUTO").stage_settings()["dpo"].asr_delta == "auto"
    assert PipelineOptions(asr_delta="0.05").asr_delta == 0.05  # a flag's string is a number
    assert PipelineOptions(asr_delta=0.05).stage_settings()["dpo"].asr_delta == 0.05
    with pytest.raises(ValueError, match="asr_delta"):
        PipelineOptions(asr_delta="-1").stage_settings()
    with pytest.raises(ValueError, match="asr_delta_quantile"):
        PipelineOptions(asr_delta_quantile=1.5).stage_settings()
    with pytest.raises(ValueError, match="asr_baseline"):
        PipelineOptions(asr_baseline="median").stage_settings()


def _keys(tmp_path, **options):
    pipeline = PipelineOptions(output_dir=str(tmp_path), **options).build()
    return {m: pipeline.method_key(0, m) for m in ("dpo", "asr_dpo_segrm", "asr_dpo_oracle", "ppo_segment",
                                                   "asr_ppo_segment", "asr_rs_segrm")}


def test_cache_keys_follow_the_asr_options(tmp_path):
    base = _keys(tmp_path)
    quantile = _keys(tmp_path, asr_delta_quantile=0.5)
    number = _keys(tmp_path, asr_delta=0.05)
    number_q = _keys(tmp_path, asr_delta=0.05, asr_delta_quantile=0.5)
    baseline = _keys(tmp_path, asr_baseline="batch_mean")
    # Unmasked runs do not depend on the ASR options: their cache survives a change of them.
    for m in ("dpo", "ppo_segment"):
        assert base[m] == quantile[m] == number[m] == baseline[m]
    # Masked runs do: the quantile counts only when delta is "auto".
    for m in ("asr_dpo_segrm", "asr_ppo_segment", "asr_rs_segrm"):
        assert len({base[m], quantile[m], number[m], baseline[m]}) == 4
        assert number[m] == number_q[m]
    # The oracle's baseline is fixed at zero, so the configured baseline does not enter its key.
    assert base["asr_dpo_oracle"] == baseline["asr_dpo_oracle"]
    assert base["asr_dpo_oracle"] != quantile["asr_dpo_oracle"]


def test_dpo_loss_of_each_method():
    from segrl.pipeline.runners.dpo import loss_args
    from segrl.pipeline.settings import METHODS

    s = DPOSettings(beta=0.1)
    assert loss_args(s, METHODS["asr_dpo_segrm"]) == {"beta": 0.1, "loss_type": ["sigmoid"]}
    assert loss_args(s, METHODS["asr_dpo_segrm_norm"]) == {"beta": pytest.approx(1.0), "loss_type": ["sigmoid_norm"]}
    assert loss_args(s, METHODS["asr_dpo_segrm_nll"]) == {"beta": 0.1, "loss_type": ["sigmoid", "sft"],
                                                          "loss_weights": [1.0, 1.0]}
    # The configured loss applies to every method without its own (the YAML's dpo_loss_type / dpo_sft_weight).
    s2 = PipelineOptions(dpo_loss_type="sigmoid_norm", dpo_sft_weight=0.5).stage_settings()["dpo"]
    assert loss_args(s2, METHODS["tokenwise_dpo_segrm"]) == {"beta": 0.1, "loss_type": ["sigmoid_norm", "sft"],
                                                             "loss_weights": [1.0, 0.5]}
    assert loss_args(s2, METHODS["asr_dpo_segrm_nll"])["loss_weights"] == [1.0, 1.0]
    with pytest.raises(ValueError, match="dpo_loss_type"):
        PipelineOptions(dpo_loss_type="ipo").stage_settings()
    with pytest.raises(ValueError, match="dpo_sft_weight"):
        PipelineOptions(dpo_sft_weight=-1.0).stage_settings()
