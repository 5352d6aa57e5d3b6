"""The one segment-RM reward source (segrl.rewards.SegmentRMRewards): the token-id path and the
rollout path agree with each other and with the RM's training score, and every consumer (ASR-DPO,
rejection sampling, PPO, GRPO's segment rewards) gets its rewards, in the RM's reward form, from it."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from rm_fixtures import THRESHOLD, rm_env, seq_cls, tiny_rows  # noqa: F401

from segrl.ops import LocationNormalizerCoef
from segrl.rewards import SegmentRMRewards

COEF = LocationNormalizerCoef(a_mu=0.5, b_mu=0.2, a_sigma=0.1, b_sigma=1.5)


@pytest.fixture
def make_rm(rm_env, seq_cls):
    from segrl.rm import SegmentRewardModel

    def make(threshold=THRESHOLD, reward_form="value", normalizer=COEF):
        return SegmentRewardModel(seq_cls, rm_env.tokenizer, threshold=threshold, reference_model=rm_env.ref_dir,
                                  normalizer=normalizer, reward_form=reward_form)

    return make


def _ids(rm, n=4, side="chosen"):
    rows = tiny_rows(n)
    return rm.tokenize([r["prompt"] for r in rows], [r[side] for r in rows])


def _rollout_batch(prompt_ids, response_ids, pad_id):
    """PPO's layout: left-padded prompts, right-padded responses."""
    width_p, width_r = max(map(len, prompt_ids)), max(map(len, response_ids))
    qr = torch.full((len(prompt_ids), width_p + width_r), pad_id)
    attn = torch.zeros_like(qr)
    resp_mask = torch.zeros(len(prompt_ids), width_r, dtype=torch.bool)
    for b, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        qr[b, width_p - len(p): width_p] = torch.tensor(p)
        qr[b, width_p: width_p + len(r)] = torch.tensor(r)
        attn[b, width_p - len(p): width_p + len(r)] = 1
        resp_mask[b, : len(r)] = True
    return qr, attn, width_p, resp_mask


@pytest.mark.parametrize("form", ["value", "delta"])
@pytest.mark.parametrize("threshold", [THRESHOLD, math.inf])
def test_id_path_and_rollout_path_agree(make_rm, form, threshold):
    rm = make_rm(threshold, form)
    prompt_ids, response_ids = _ids(rm)
    source = SegmentRMRewards(rm)
    assert source.reward_form == form
    out = source.score(prompt_ids, response_ids)
    rewards, mask = source.token_rewards(prompt_ids, response_ids)
    torch.testing.assert_close(rewards, out.token_rewards)
    assert source(prompt_ids, response_ids) == [out.token_rewards[b, : len(r)].tolist()
                                                for b, r in enumerate(response_ids)]
    # The sequence score is the RM's training score (same code as the trainer's loss).
    torch.testing.assert_close(out.scores, rm.sequence_scores(prompt_ids, response_ids))
    torch.testing.assert_close(source.sequence_scores(prompt_ids, response_ids), out.scores)

    # PPO's layout, with the reference entropies PPO computes itself.
    seg = rm.segment_token_ids(prompt_ids, response_ids)
    qr, attn, ctx, resp_mask = _rollout_batch(prompt_ids, response_ids, rm.pad_token_id)
    roll = source.score_rollout(qr, attn, ctx, resp_mask, seg.entropy)
    torch.testing.assert_close(roll.token_rewards, out.token_rewards, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(roll.scores, out.scores, atol=1e-5, rtol=1e-5)
    assert torch.equal(roll.segment_ids, out.segment_ids)


def test_every_consumer_gets_the_rms_form(make_rm):
    """PPO (rollouts), GRPO (normalised segment rewards) and the plain source follow the RM's form."""
    from segrl.ops import spread_segment_rewards
    from segrl.ppo.rewards import source_from_reward_model

    value_rm, delta_rm = make_rm(reward_form="value"), make_rm(reward_form="delta")
    prompt_ids, response_ids = _ids(value_rm)
    delta = delta_rm.score(prompt_ids, response_ids).token_rewards
    value = value_rm.score(prompt_ids, response_ids).token_rewards
    assert not torch.allclose(delta, value)

    seg = delta_rm.segment_token_ids(prompt_ids, response_ids)
    qr, attn, ctx, resp_mask = _rollout_batch(prompt_ids, response_ids, delta_rm.pad_token_id)
    ppo = source_from_reward_model(delta_rm)
    assert ppo.reward_form == "delta"
    dense = ppo(qr, attn, ctx, resp_mask, seg.entropy)
    torch.testing.assert_close(dense.token_rewards, delta, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dense.seq_rewards, seg.scores, atol=1e-5, rtol=1e-5)

    grpo = spread_segment_rewards(delta_rm.normalized_segment_rewards(seg), seg.segment_ids)
    torch.testing.assert_close(grpo, delta)

    # An explicit form must match the normaliser's.
    with pytest.raises(ValueError, match="fitted on reward_form='value'"):
        SegmentRMRewards(value_rm, reward_form="delta")
    raw = SegmentRMRewards(value_rm, reward_form="delta", normalize=False)
    torch.testing.assert_close(raw.token_rewards(prompt_ids, response_ids)[0],
                               value_rm.score_token_ids(prompt_ids, response_ids, reward_form="delta",
                                                        normalize=False)[0])


def test_dpo_and_rejection_sampling_use_the_source(make_rm, rm_env, tmp_path):
    from datasets import Dataset

    from segrl.dpo import ASRDPOConfig, ASRDPOTrainer
    from segrl.models.tiny import build_tiny_causal_lm
    from segrl.rs import ASRRejectionSampler, ASRRejectionSamplingConfig

    tok = rm_env.tokenizer
    rm = make_rm(reward_form="delta")
    policy = build_tiny_causal_lm(tok, hidden_size=32, num_layers=1, seed=1)
    common = dict(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, bf16=False,
                  gradient_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no",
                  disable_tqdm=True)
    trainer = ASRDPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(policy),
                            args=ASRDPOConfig(token_reward_source="segment_rm", **common),
                            train_dataset=Dataset.from_list(tiny_rows(2)), processing_class=tok,
                            token_reward_model=rm)
    for ex in trainer.train_dataset:
        for side in ("chosen", "rejected"):
            expected, _ = rm.score_token_ids([ex["prompt_ids"]], [ex[f"{side}_ids"]], reward_form="delta")
            assert ex[f"{side}_token_rewards"] == pytest.approx(expected[0].tolist(), abs=1e-5)

    sampler = ASRRejectionSampler(copy.deepcopy(policy), ASRRejectionSamplingConfig(**common, num_candidates=2),
                                  processing_class=tok, reward_model=rm)
    p_ids, r_ids = _ids(rm, 2)
    records = [{"prompt": "x", "prompt_ids": p, "candidates": ["a", "b"], "candidate_ids": [r, r]}
               for p, r in zip(p_ids, r_ids)]
    scored = sampler.score(records)
    assert isinstance(sampler._reward_source(), SegmentRMRewards)
    expected = rm.score(p_ids, r_ids)
    for b, rec in enumerate(scored):
        assert rec["token_rewards"][0] == pytest.approx(expected.token_rewards[b, : len(r_ids[b])].tolist(), abs=1e-5)
        assert rec["scores"][0] == pytest.approx(float(expected.scores[b]), abs=1e-5)


def test_rejection_sampling_scores_with_one_rm_pass(make_rm, rm_env, tmp_path):
    """With sequence_score='rm' and an ASR mask, RS gets token rewards and sequence scores from one
    RM (and reference) pass, not two, with the same numbers as the two separate calls."""
    import copy

    from segrl.models.tiny import build_tiny_causal_lm
    from segrl.rs import ASRRejectionSampler, ASRRejectionSamplingConfig

    tok = rm_env.tokenizer
    rm = make_rm()
    calls = []
    real = rm.segment_token_ids
    rm.segment_token_ids = lambda *a, **kw: calls.append(1) or real(*a, **kw)
    policy = build_tiny_causal_lm(tok, hidden_size=32, num_layers=1, seed=1)
    args = ASRRejectionSamplingConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, bf16=False,
                                      gradient_checkpointing=False, use_cpu=True, report_to="none",
                                      save_strategy="no", disable_tqdm=True, num_candidates=2)
    assert args.sequence_score == "rm" and args.mask_type == "asr"
    sampler = ASRRejectionSampler(copy.deepcopy(policy), args, processing_class=tok, reward_model=rm)
    p_ids, r_ids = _ids(rm, 3)
    records = [{"prompt": "x", "prompt_ids": p, "candidates": ["a", "b"], "candidate_ids": [r, r]}
               for p, r in zip(p_ids, r_ids)]
    scored = sampler.score(records)
    assert len(calls) == 1
    flat_p = [p for p in p_ids for _ in range(2)]
    flat_r = [r for r in r_ids for _ in range(2)]
    rewards, _ = rm.score_token_ids(flat_p, flat_r)
    scores = rm.sequence_scores(flat_p, flat_r)
    for b, rec in enumerate(scored):
        for k in range(2):
            assert rec["token_rewards"][k] == pytest.approx(rewards[2 * b + k, : len(r_ids[b])].tolist(), abs=1e-6)
            assert rec["scores"][k] == pytest.approx(float(scores[2 * b + k]), abs=1e-6)


def test_source_errors(make_rm, rm_env):
    from segrl.models import build_tiny_tokenizer

    rm = make_rm()
    with pytest.raises(ValueError, match="tokenizer mismatch: `token_reward_model`"):
        SegmentRMRewards(rm, policy_tokenizer=build_tiny_tokenizer(vocab_size=600))
    with pytest.raises(ValueError, match="`mode` must be one of"):
        SegmentRMRewards(rm, mode="middle")
    with pytest.raises(ValueError, match="`reward_form` must be one of"):
        SegmentRMRewards(rm, reward_form="diff")
    with pytest.raises(ValueError, match="`token_reward_model` must be a SegmentRewardModel"):
        SegmentRMRewards(object())
    with pytest.raises(ValueError, match="fit-norm"):
        SegmentRMRewards(make_rm(normalizer=None))(*_ids(rm, 1))
    with pytest.raises(ValueError, match="`normalizer` is None"):
        SegmentRMRewards.from_score_fn(lambda *a: None, threshold=1.0, normalizer=None)


def test_rule_based_rollout_source_by_hand():
    """from_score_fn: a rule scorer, a hand-made batch, delta form, bandit puts the reward on EOS."""
    from segrl.ppo.rewards import SegmentRewardSource

    identity = LocationNormalizerCoef(a_mu=0.0, b_mu=0.0, a_sigma=0.0, b_sigma=1.0)

    def score_fn(qr, attn, ctx):  # the value at each position is the token id
        return qr.float()

    qr = torch.tensor([[0, 5, 1, 2, 4, 9]])  # one left-padding token, prompt [5, 1], response [2, 4, 9]
    attn = torch.tensor([[0, 1, 1, 1, 1, 1]])
    resp_mask = torch.ones(1, 3, dtype=torch.bool)
    entropy = torch.tensor([[0.0, 3.0, 0.0]])  # c = 1: segments {0}, {1}, EOS in none
    dense = SegmentRewardSource(score_fn, threshold=1.0, normalizer=identity, reward_form="delta")(
        qr, attn, 3, resp_mask, entropy)
    assert dense.token_rewards.tolist() == [[2 - 1, 4 - 2, 0]]
    assert dense.seq_rewards.tolist() == [3.0]  # mean of the values 2 and 4
    bandit = SegmentRewardSource(score_fn, threshold=math.inf, normalizer=identity, reward_form="delta")(
        qr, attn, 3, resp_mask, entropy)
    assert bandit.token_rewards.tolist() == [[0, 0, 9 - 1]] and bandit.seq_rewards.tolist() == [9.0]
