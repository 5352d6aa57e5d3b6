"""Critic-free dense variant: TRL GRPOTrainer with (B, T) segment advantages."""

from __future__ import annotations

import math

import pytest
import torch
from rm_fixtures import TEST_ARGS, rm_env  # noqa: F401

from segrl import ops
from segrl.grpo import SegmentGRPOConfig, SegmentGRPOTrainer, dense_group_advantages


def test_dense_group_advantages_hand_values():
    # one row, two segments: tokens [0 0 1 -1]; normalised segment rewards 1.0 and 3.0
    seg = torch.tensor([[1.0, 3.0]])
    valid = torch.tensor([[True, True]])
    ids = torch.tensor([[0, 0, 1, -1]])
    # group mean 1.0, std 2.0 -> normalised (0 - 0) / 2.0001 = 0 and (3 - 1) / 2.0001 ~ 1
    adv = dense_group_advantages(seg, valid, ids, torch.tensor([1.0]), torch.tensor([2.0]))
    # token t gets the sum over segments ending at or after t: t0, t1 -> 0 + 1 ; t2 -> 1 ; EOS (no segment) -> 0
    expected = 2.0 / 2.0001
    assert adv[0].tolist() == pytest.approx([expected, expected, expected, 0.0])


def test_bandit_equals_outcome_grpo():
    # bandit: one segment per response covering every token -> every token gets (r - mean) / (std + 1e-4)
    r = torch.tensor([[2.0], [0.0]])
    ids = torch.tensor([[0, 0, 0], [0, 0, -1]])
    mean, std = r.mean(), r.std()
    adv = dense_group_advantages(r, torch.ones(2, 1, dtype=torch.bool), ids, mean.expand(2), std.expand(2))
    outcome = (r.squeeze(1) - mean) / (std + 1e-4)
    assert adv[0].tolist() == pytest.approx([outcome[0].item()] * 3)
    assert adv[1].tolist() == pytest.approx([outcome[1].item()] * 2 + [0.0])


@pytest.fixture(scope="module")
def segment_rm(rm_env):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from segrl.rm import SegmentRewardModel

    model = AutoModelForSequenceClassification.from_pretrained(rm_env.init_dir, num_labels=1)
    ref = AutoModelForCausalLM.from_pretrained(rm_env.ref_dir)
    coef = ops.LocationNormalizerCoef(a_mu=0.0, b_mu=0.0, a_sigma=0.0, b_sigma=1.0)
    return SegmentRewardModel(model, rm_env.tokenizer, threshold=2.0, reference_model=ref, normalizer=coef)


@pytest.mark.parametrize("asr", [False, True])
def test_grpo_trains_with_dense_advantages(rm_env, segment_rm, tmp_path, asr):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(rm_env.init_dir)
    args = SegmentGRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, max_completion_length=8,
        max_steps=2, learning_rate=1e-3, mask_type="asr" if asr else "none", beta=0.0,
        **{k: v for k, v in TEST_ARGS.items()},
    )
    prompts = Dataset.from_list([{"prompt": f"{a}+{b}="} for a in range(1, 5) for b in range(1, 3)])
    trainer = SegmentGRPOTrainer(policy, args=args, train_dataset=prompts, processing_class=rm_env.tokenizer,
                                 segment_reward_model=segment_rm)
    batch = trainer._generate_and_score_completions(
        [{"prompt": p} for p in ["1+1=", "1+1=", "1+1=", "1+1="]]
    )
    assert batch["advantages"].shape == batch["completion_ids"].shape
    if asr:
        assert "tool_mask" in batch
        assert int(batch["num_items_in_batch"]) == int((batch["completion_mask"] * batch["tool_mask"]).sum())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert len(changed) == len(before)
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert "rm/segments_per_response" in logged  # README "Logged metrics": rm/* and asr/* in every trainer
    if asr:
        assert {"asr/kept_token_fraction", "asr/fallbacks"} <= logged


def test_missing_fit_is_an_error(rm_env, segment_rm, tmp_path):
    from segrl.rm import SegmentRewardModel

    unfitted = SegmentRewardModel(segment_rm.model, rm_env.tokenizer, threshold=math.inf)
    with pytest.raises(ValueError, match="fit-norm"):
        SegmentGRPOTrainer(rm_env.init_dir, args=SegmentGRPOConfig(output_dir=str(tmp_path), **TEST_ARGS),
                           segment_reward_model=unfitted)


def test_grpo_cli(rm_env, segment_rm, tmp_path):
    import json

    from segrl.cli import main

    rm_dir = tmp_path / "rm"
    segment_rm.save_pretrained(rm_dir)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{a}+{a}="}) + "\n" for a in range(1, 9)))
    args = ["grpo", "--model_name_or_path", rm_env.init_dir, "--segment_reward_model", str(rm_dir),
            "--dataset_name", str(data), "--output_dir", str(tmp_path / "out"), "--per_device_train_batch_size", "4",
            "--num_generations", "4", "--max_completion_length", "6", "--max_steps", "1", "--beta", "0.0"]
    for key, value in TEST_ARGS.items():
        args += [f"--{key}", str(value)]
    assert main(args) == 0
    assert (tmp_path / "out" / "config.json").exists()


# ---------------------------------------------------------------------------------------------------------------------
# The glue between TRL's generation batch and segrl.ops: each test names the injected bug it guards against.
# ---------------------------------------------------------------------------------------------------------------------


def _stats_stub(scale_rewards: str, g: int):
    """Just enough of a trainer for ``_group_segment_stats``: one process, groups of ``g`` rows."""
    from types import SimpleNamespace

    acc = SimpleNamespace(gather=lambda t: t, process_index=0, num_processes=1)
    stub = SimpleNamespace(accelerator=acc, num_generations=g, num_generations_eval=g,
                           model=SimpleNamespace(training=True), scale_rewards=scale_rewards)
    stub._gathered_groups = lambda local: SegmentGRPOTrainer._gathered_groups(stub, local)
    return stub


def test_group_std_is_unbiased_hand_values():
    """Guards against: GRPO group std made biased (TRL's GRPO uses the unbiased std, n - 1)."""
    seg = torch.tensor([[1.0, 3.0], [5.0, 99.0], [2.0, 0.0], [2.0, -7.0]])
    valid = torch.tensor([[True, True], [True, False], [True, False], [True, False]])
    # group 1 = rows 0-1: values 1, 3, 5 -> mean 3, unbiased var (4 + 0 + 4) / 2 = 4 -> std 2
    # (biased: sqrt(8 / 3) = 1.633); group 2 = rows 2-3: values 2, 2 -> mean 2, std 0
    mean, std = SegmentGRPOTrainer._group_segment_stats(_stats_stub("group", 2), seg, valid)
    assert mean.tolist() == pytest.approx([3.0, 3.0, 2.0, 2.0])
    assert std.tolist() == pytest.approx([2.0, 2.0, 0.0, 0.0])
    # scale_rewards="batch": all five values 1, 3, 5, 2, 2 -> mean 2.6, unbiased var 9.2 / 4 = 2.3
    mean, std = SegmentGRPOTrainer._group_segment_stats(_stats_stub("batch", 2), seg, valid)
    assert mean.tolist() == pytest.approx([2.6] * 4)
    assert std.tolist() == pytest.approx([math.sqrt(2.3)] * 4)


@pytest.mark.parametrize("mask_type", ["asr", "stepwise"])
def test_asr_mask_follows_the_sign_against_the_group_mean(rm_env, segment_rm, tmp_path, mask_type):
    """Guards against: GRPO sequence sign flipped (a response scored above its group's mean keeps its
    above-baseline tokens). The tool_mask must be segrl.ops.keep_mask with the hand-computed signs
    (for the ASR mask and, gained through keep_mask, the step-wise one)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from segrl.ppo.trainer import response_mask_from

    policy = AutoModelForCausalLM.from_pretrained(rm_env.init_dir)
    args = SegmentGRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4, max_completion_length=8,
        max_steps=1, mask_type=mask_type, beta=0.0, step_boundary_chars="0123456789+=", **TEST_ARGS,
    )
    assert (args.asr_baseline, args.asr_delta) == ("sequence_mean", "auto")  # the new defaults
    prompts = Dataset.from_list([{"prompt": f"{a}+{a}="} for a in range(1, 5)])
    trainer = SegmentGRPOTrainer(policy, args=args, train_dataset=prompts, processing_class=rm_env.tokenizer,
                                 segment_reward_model=segment_rm)
    out = trainer._generate_and_score_completions([{"prompt": p} for p in ["1+1="] * 4 + ["2+3="] * 4])
    mask, _ = response_mask_from(out["completion_ids"], rm_env.tokenizer.eos_token_id)
    prompt_ids = [row[m.bool()].tolist() for row, m in zip(out["prompt_ids"], out["prompt_mask"])]
    completion_ids = [row[m].tolist() for row, m in zip(out["completion_ids"], mask)]
    seg = segment_rm.segment_token_ids(prompt_ids, completion_ids)
    rewards = ops.spread_segment_rewards(segment_rm.normalized_segment_rewards(seg), seg.segment_ids, mode="even")
    padded = torch.zeros(mask.shape)
    padded[:, : rewards.shape[1]] = rewards
    scores = seg.scores.view(2, 4)
    sign = torch.where(scores >= scores.mean(dim=1, keepdim=True), 1, -1).flatten()  # by hand, ties +1
    boundary = None
    if mask_type == "stepwise":
        from segrl.token_rewards import boundary_token_table

        boundary = boundary_token_table(rm_env.tokenizer, "0123456789+=")[out["completion_ids"]] & mask
    expected = ops.keep_mask(padded, mask, sign, is_boundary=boundary, **args.mask_kwargs())
    assert torch.equal(out["tool_mask"].bool(), expected.keep)
    flipped = ops.keep_mask(padded, mask, -sign, is_boundary=boundary, **args.mask_kwargs())
    assert not torch.equal(flipped.keep, expected.keep)  # armed
    logged = trainer._metrics["train" if trainer.model.training else "eval"]
    if mask_type == "asr":
        assert logged["asr/delta"] == [pytest.approx(expected.delta)]
    else:
        assert (expected.segment_ids.max(dim=1).values > 0).any()  # some response has several steps


def test_grpo_asr_options_fail_at_construction(tmp_path):
    """Bad ASR options fail when the config is built (not at the first generation); `asr` maps to `mask_type`."""
    for bad, name in (({"asr_neutral": "maybe"}, "asr_neutral"), ({"asr_empty": "all"}, "asr_empty"),
                      ({"asr_delta": -1.0}, "asr_delta")):
        with pytest.raises(ValueError, match=name):
            SegmentGRPOConfig(output_dir=str(tmp_path), **bad, **TEST_ARGS)
    assert SegmentGRPOConfig(output_dir=str(tmp_path), asr=True, **TEST_ARGS).mask_type == "asr"
    assert SegmentGRPOConfig(output_dir=str(tmp_path), **TEST_ARGS).mask_type == "none"
