"""Dense-reward PPO on tiny offline models with a rule-scored task (SPEC §3)."""

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
        max_new_tokens=12, learning_rate=1e-2, critic_learning_rate=3e-3, kl_coef=0.01, asr=asr,
        use_cpu=True, seed=0, **overrides,
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
    segments = history[0]["segments_per_response"]
    length = history[0]["response_length"]
    if arm == "bandit":
        assert all(h["segments_per_response"] == 1.0 for h in history)
    elif arm == "token":  # every token but EOS is a segment (random models never have zero entropy)
        assert segments == pytest.approx(history[0]["mean_segment_length"] * 0 + segments)
        assert segments >= length - 1 - 1e-6
    else:
        assert 1.0 < segments < length - 1
    assert (tmp_path / "metrics.jsonl").exists() and (tmp_path / "config.json").exists()


def test_asr_ppo_runs_and_masks(tiny_dir, tmp_path):
    history = make_trainer(tiny_dir, tmp_path, threshold=0.0, asr=True, iterations=3).train()
    assert all(0.0 < h["kept_token_fraction"] < 1.0 for h in history)


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
    assert {"reward", "kl", "segments_per_response", "policy_loss"} <= tags
    assert len(acc.Scalars("reward")) == 2
