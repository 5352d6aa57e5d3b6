"""Dense-reward PPO on tiny offline models with a rule-scored task (docs/method.md#ppo)."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

from segrl import ops
from segrl.models.tiny import make_tiny_model_dir
from segrl.ppo import SegmentPPOConfig, SegmentPPOTrainer, SegmentRewardSource

IDENTITY = ops.LocationNormalizerCoef(a_mu=0.0, b_mu=0.0, a_sigma=0.0, b_sigma=1.0)
PROMPTS = [f"{a}+{b}=" for a in range(1, 10) for b in range(1, 4)]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(make_tiny_model_dir(tmp_path_factory.mktemp("ppo") / "policy", seed=1))


class DigitScore:
    """Rule 'reward model': per-position score = fraction of digit tokens in the response so far.

    A prefix score, like an RM read at each position; the policy raises it by writing digits.
    """

    def __init__(self, tokenizer):
        vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        self.is_digit = torch.tensor([any(ch.isdigit() for ch in t) for t in vocab], dtype=torch.float32)

    def __call__(self, query_responses, attention_mask, context_length):
        hits = self.is_digit.to(query_responses.device)[query_responses].clone()
        hits[:, :context_length] = 0
        valid = attention_mask.float().clone()
        valid[:, :context_length] = 0
        return hits.cumsum(dim=1) / valid.cumsum(dim=1).clamp(min=1) * 4.0


def make_trainer(tiny_dir, tmp_path, *, threshold, asr=False, iterations=12, **overrides):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    policy = AutoModelForCausalLM.from_pretrained(tiny_dir)
    ref = AutoModelForCausalLM.from_pretrained(tiny_dir)
    critic = AutoModelForTokenClassification.from_pretrained(tiny_dir, num_labels=1)
    args = SegmentPPOConfig(
        output_dir=str(tmp_path), num_iterations=iterations, rollout_batch_size=16, mini_batch_size=8,
        max_new_tokens=12, learning_rate=1e-2, critic_learning_rate=3e-3, kl_coef=0.01,
        use_cpu=True, seed=0, **({"mask_type": "asr"} if asr else {}), **overrides,
    )
    source = SegmentRewardSource(DigitScore(tok), threshold=threshold, normalizer=IDENTITY)
    return SegmentPPOTrainer(args, policy=policy, ref_model=ref, critic=critic, reward_source=source,
                             tokenizer=tok, prompts=PROMPTS)


@pytest.fixture(scope="module")
def segment_threshold(tiny_dir, tmp_path_factory):
    """The median reference entropy of a rollout: about half the tokens start a segment."""
    trainer = make_trainer(tiny_dir, tmp_path_factory.mktemp("probe"), threshold=0.0, iterations=1)
    batch = trainer.rollout(trainer._prompt_batch(0))
    ctx = int(batch["context_length"])
    _, entropy = trainer._logprobs(trainer.ref_model, batch["query_responses"], batch["attention_mask"], ctx,
                                   batch["responses"], with_entropy=True)
    return float(entropy[batch["response_mask"]].median())


@pytest.mark.parametrize("arm", ["bandit", "token", "segment"])
def test_reward_rises_for_each_arm(tiny_dir, tmp_path, arm, segment_threshold):
    threshold = {"bandit": math.inf, "token": 0.0, "segment": segment_threshold}[arm]
    history = make_trainer(tiny_dir, tmp_path, threshold=threshold, iterations=14).train()
    first = sum(h["reward"] for h in history[:3]) / 3
    last = sum(h["reward"] for h in history[-3:]) / 3
    assert last > first + 0.3, (first, last)
    segments = history[0]["rm/segments_per_response"]
    length = history[0]["response_length"]
    if arm == "bandit":
        assert all(h["rm/segments_per_response"] == 1.0 for h in history)
    elif arm == "token":  # every token but EOS is a segment (random models never have zero entropy)
        assert history[0]["rm/mean_segment_length"] == pytest.approx(1.0)  # one token per segment
        assert segments >= length - 1 - 1e-6
    else:
        assert 1.0 < segments < length - 1
    assert (tmp_path / "metrics.jsonl").exists() and (tmp_path / "config.json").exists()


def test_asr_ppo_runs_and_masks(tiny_dir, tmp_path):
    history = make_trainer(tiny_dir, tmp_path, threshold=0.0, asr=True, iterations=3).train()
    assert all(0.0 < h["asr/kept_token_fraction"] < 1.0 for h in history)


def test_masked_tokens_get_zero_policy_gradient(tiny_dir, tmp_path):
    trainer = make_trainer(tiny_dir, tmp_path, threshold=0.0, asr=True, iterations=1)
    batch = trainer.rollout(trainer._prompt_batch(0))
    ctx = int(batch["context_length"])
    policy = trainer.accelerator.unwrap_model(trainer.policy)
    logits = torch.nn.Parameter(
        policy(input_ids=batch["query_responses"], attention_mask=batch["attention_mask"]).logits.detach()
    )
    from trl.trainer.utils import selective_log_softmax

    logprobs = selective_log_softmax(logits[:, ctx - 1 : -1], batch["responses"])
    loss, _ = ops.ppo_policy_loss(logprobs, batch["logprobs"], batch["advantages"], batch["loss_mask"])
    loss.backward()
    grad = logits.grad[:, ctx - 1 : -1].abs().sum(dim=-1)
    dropped = batch["response_mask"] & ~batch["loss_mask"]
    assert dropped.any() and batch["loss_mask"].any()
    assert (grad[dropped] == 0).all()
    assert (grad[batch["loss_mask"]] > 0).all()


def test_every_trainable_parameter_changes(tiny_dir, tmp_path):
    trainer = make_trainer(tiny_dir, tmp_path, threshold=2.0, iterations=2)
    before_p = {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}
    before_c = {n: p.detach().clone() for n, p in trainer.critic.named_parameters()}
    trainer.train()
    for n, p in trainer.policy.named_parameters():
        assert not torch.equal(before_p[n], p.detach()), f"policy parameter {n} did not change"
    for n, p in trainer.critic.named_parameters():
        assert not torch.equal(before_c[n], p.detach()), f"critic parameter {n} did not change"


def test_resume_continues_the_same_trajectory(tiny_dir, tmp_path):
    full = make_trainer(tiny_dir, tmp_path / "full", threshold=2.0, iterations=4, save_steps=2)
    full_history = full.train()
    resumed = make_trainer(tiny_dir, tmp_path / "full", threshold=2.0, iterations=4,
                           resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    assert resumed.iteration == 0
    resumed_history = resumed.train()
    assert len(resumed_history) == 4
    for a, b in zip(full_history[2:], resumed_history[2:]):
        assert a["reward"] == pytest.approx(b["reward"], abs=1e-5)
        assert a["policy_loss"] == pytest.approx(b["policy_loss"], abs=1e-5)
    for (n, p), (_, q) in zip(full.policy.named_parameters(), resumed.policy.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


def test_missing_normalizer_is_an_error():
    with pytest.raises(ValueError, match="normalizer"):
        SegmentRewardSource(lambda *a: None, threshold=1.0, normalizer=None)


def test_tensorboard_logging(tiny_dir, tmp_path):
    pytest.importorskip("tensorboard")
    trainer = make_trainer(tiny_dir, tmp_path, threshold=0.0, iterations=2, report_to="tensorboard")
    trainer.train()
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert events, "no tensorboard event file written"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"reward", "kl", "rm/segments_per_response", "asr/kept_token_fraction", "policy_loss"} <= tags
    assert len(acc.Scalars("reward")) == 2


# ---------------------------------------------------------------------------------------------------------------------
# The glue between the rollout and segrl.ops: each test names the injected bug it guards against.
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def asr_rollout(tiny_dir, tmp_path_factory):
    """One ASR-PPO rollout batch (default ASR options: sequence_mean baseline, "auto" delta) and its trainer."""
    trainer = make_trainer(tiny_dir, tmp_path_factory.mktemp("asr_rollout"), threshold=0.0,
                           mask_type="asr", iterations=1)
    return trainer, trainer.rollout(trainer._prompt_batch(0))


def test_advantages_are_whitened_gae_over_the_rollout_batch(asr_rollout):
    """Guards against: PPO advantage whitening removed (or whitened per row / over padding)."""
    trainer, b = asr_rollout
    mask = b["response_mask"]
    raw, _ = ops.gae_advantages(b["rewards"], b["values"], mask, gamma=trainer.args.gamma, lam=trainer.args.lam)
    valid = raw[mask].double()
    expected = torch.where(mask, (raw.double() - valid.mean()) / (valid.var(unbiased=False) + 1e-8).sqrt(), 0.0)
    torch.testing.assert_close(b["advantages"].double(), expected, rtol=1e-4, atol=1e-5)
    adv = b["advantages"][mask].double()
    assert abs(adv.mean().item()) < 1e-5 and adv.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-4)
    assert not torch.allclose(raw[mask].double(), adv, atol=1e-2)  # whitening did change the numbers


def test_sequence_sign_is_reward_at_least_the_batch_mean(asr_rollout):
    """Guards against: PPO sequence sign flipped (above-mean responses must keep their above-baseline tokens)."""
    trainer, b = asr_rollout
    seq, mask, r = b["seq_rewards"], b["response_mask"], b["token_rewards"]
    sign = torch.where(seq >= seq.mean(), 1, -1)  # by hand: ties +1
    assert (sign == 1).any() and (sign == -1).any()
    options = trainer.args.mask_kwargs()
    assert (options["baseline"], options["delta"]) == ("sequence_mean", "auto")  # the new defaults
    expected = ops.keep_mask(r, mask, sign, **options)
    assert torch.equal(b["loss_mask"], expected.keep)
    assert trainer.asr_delta == pytest.approx(expected.delta)
    # armed: with the sign flipped the mask would differ
    assert not torch.equal(ops.keep_mask(r, mask, -sign, **options).keep, expected.keep)


def test_sequence_reward_is_the_mean_of_segment_rewards(asr_rollout):
    """Guards against: PPO sequence reward mean -> sum (the reward behind the sequence sign and the logged reward)."""
    trainer, b = asr_rollout
    ctx = int(b["context_length"])
    mask, seg = b["response_mask"], b["segment_ids"]
    per_position = DigitScore(trainer.tokenizer)(b["query_responses"], b["attention_mask"], ctx)
    values = per_position[:, ctx: ctx + mask.shape[1]]
    ends, valid = ops.segment_end_values(values, seg)
    counts = valid.sum(dim=1)
    assert (counts > 1).any()  # several segments somewhere: a sum would differ from the mean
    eos = values.gather(1, (mask.sum(dim=1, keepdim=True) - 1)).squeeze(1)
    expected = torch.where(counts > 0, (ends * valid).sum(dim=1) / counts.clamp(min=1), eos)
    torch.testing.assert_close(b["seq_rewards"], expected, rtol=1e-5, atol=1e-6)


def test_sequence_score_hand_values():
    """Guards against: PPO sequence reward mean -> sum, on numbers worked out by hand."""

    def score_fn(query_responses, attention_mask, context_length):
        # per-position RM values; the prompt is 1 token, the response 4 tokens (last = EOS)
        return torch.tensor([[0.0, 1.0, 2.0, 6.0, 5.0]])

    source = SegmentRewardSource(score_fn, threshold=0.0, normalizer=IDENTITY)  # c = 0: one segment per token
    mask = torch.ones(1, 4, dtype=torch.bool)
    dense = source(torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 5), 1, mask, torch.ones(1, 4))
    # segments = tokens 0, 1, 2 (EOS in none); values at their ends 1, 2, 6 -> score (1 + 2 + 6) / 3 = 3
    assert dense.seq_rewards.tolist() == pytest.approx([3.0])
    assert dense.segment_ids.tolist() == [[0, 1, 2, -1]]
    assert dense.token_rewards[0].tolist() == pytest.approx([1.0, 2.0, 6.0, 0.0])  # identity normaliser, even spread


def test_asr_options_fail_at_construction_and_asr_alias():
    """Bad ASR options fail when the config is built, not at the first rollout; `asr` maps to `mask_type`."""
    for bad, name in (({"asr_neutral": "maybe"}, "asr_neutral"), ({"asr_empty": "all"}, "asr_empty"),
                      ({"asr_delta": -0.1}, "asr_delta"), ({"asr_delta": "wide"}, "asr_delta"),
                      ({"asr_baseline": "median"}, "asr_baseline"), ({"mask_type": "random"}, "mask_type"),
                      ({"asr": True, "mask_type": "tokenwise"}, "asr")):
        with pytest.raises(ValueError, match=name):
            SegmentPPOConfig(**bad)
    assert SegmentPPOConfig().mask_type == "none"
    assert SegmentPPOConfig(asr=True).mask_type == "asr"
    assert SegmentPPOConfig(asr=False).mask_type == "none"
    assert SegmentPPOConfig(asr=False, mask_type="tokenwise").mask_type == "tokenwise"  # an old YAML's `asr: false`
    with pytest.raises(ValueError, match="asr"):
        SegmentPPOConfig(asr=False, mask_type="asr")
    config = SegmentPPOConfig(asr_delta="0.25")
    assert config.asr_delta == 0.25 and (config.asr_baseline, SegmentPPOConfig().asr_delta) == ("sequence_mean", "auto")


@pytest.mark.parametrize("mask_type", ["tokenwise", "stepwise"])
def test_tokenwise_and_stepwise_masks(tiny_dir, tmp_path, mask_type):
    """PPO gains the other keep masks of segrl.ops.keep_mask; the loss mask is that op's result."""
    from segrl.token_rewards import boundary_token_table

    trainer = make_trainer(tiny_dir, tmp_path, threshold=0.0, mask_type=mask_type, iterations=1,
                           step_boundary_chars="0123456789")
    b = trainer.rollout(trainer._prompt_batch(0))
    seq, mask = b["seq_rewards"], b["response_mask"]
    boundary = boundary_token_table(trainer.tokenizer, "0123456789")[b["responses"]] & mask
    expected = ops.keep_mask(b["token_rewards"], mask, torch.where(seq >= seq.mean(), 1, -1),
                             is_boundary=boundary, **trainer.args.mask_kwargs())
    assert torch.equal(b["loss_mask"], expected.keep)
    assert b["loss_mask"].sum() < mask.sum()
