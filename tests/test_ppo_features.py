"""segrl ppo as a TRL user scales it: chat prompts, episode counting, gradient accumulation, LR schedule,
LoRA (reference = adapter-disabled base), mixed precision, gradient checkpointing, evaluation, resume."""

from __future__ import annotations

import math

import pytest
import torch
from test_ppo_trainer import IDENTITY, PROMPTS, DigitScore
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

from segrl.models.tiny import make_tiny_model_dir
from segrl.ppo import PPOCallback, SegmentPPOConfig, SegmentPPOTrainer, SegmentRewardSource


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(make_tiny_model_dir(tmp_path_factory.mktemp("ppo_features") / "policy", seed=1, hidden_size=32,
                                   num_layers=1))


def make(tiny_dir, tmp_path, *, prompts=PROMPTS, peft=False, **overrides):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    policy = AutoModelForCausalLM.from_pretrained(tiny_dir)
    ref = AutoModelForCausalLM.from_pretrained(tiny_dir)
    if peft:
        from peft import LoraConfig, get_peft_model

        policy = get_peft_model(policy, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM"))
        ref = None
    torch.manual_seed(0)
    critic = AutoModelForTokenClassification.from_pretrained(tiny_dir, num_labels=1)
    options = dict(output_dir=str(tmp_path), rollout_batch_size=8, mini_batch_size=4, max_new_tokens=6,
                   learning_rate=1e-2, critic_learning_rate=1e-2, use_cpu=True, seed=0, lr_scheduler_type="constant")
    options.update(overrides)
    eval_prompts = options.pop("eval_prompts", None)
    callbacks = options.pop("callbacks", None)
    source = SegmentRewardSource(DigitScore(tok), threshold=0.0, normalizer=IDENTITY)
    return SegmentPPOTrainer(SegmentPPOConfig(**options), policy=policy, ref_model=ref, critic=critic,
                             reward_source=source, tokenizer=tok, prompts=prompts, eval_prompts=eval_prompts,
                             callbacks=callbacks)


def _params(trainer):
    return {n: p.detach().clone() for n, p in trainer.accelerator.unwrap_model(trainer.policy).named_parameters()}


def test_chat_prompts_are_rendered_with_the_template(tiny_dir, tmp_path):
    """transformers 5's apply_chat_template(tokenize=True) returns a BatchEncoding (crashed with
    ``too many dimensions 'str'``); conversations must give the template's tokens."""
    chats = [[{"role": "user", "content": p}] for p in PROMPTS[:8]]
    trainer = make(tiny_dir, tmp_path, prompts=chats, num_iterations=1)
    tok = trainer.tokenizer
    text = "<|im_start|>user\n1+1=<|im_end|>\n<|im_start|>assistant\n"  # CHATML_TEMPLATE by hand
    assert trainer.prompt_ids[0] == tok(text, add_special_tokens=False)["input_ids"]
    assert all(isinstance(t, int) for t in trainer.prompt_ids[0])
    history = trainer.train()
    assert len(history) == 1 and math.isfinite(history[0]["reward"])


def test_iterations_from_total_episodes_and_epochs(tiny_dir, tmp_path):
    # TRL counts prompts over all processes: ceil(40 / 8) = 5 iterations; 2 epochs of 27 prompts: ceil(54 / 8) = 7
    assert make(tiny_dir, tmp_path, total_episodes=40).num_iterations == 5
    assert make(tiny_dir, tmp_path, num_train_epochs=2).num_iterations == 7
    assert make(tiny_dir, tmp_path).num_iterations == 4  # default: one epoch, ceil(27 / 8)
    with pytest.warns(FutureWarning, match="num_iterations"):
        config = SegmentPPOConfig(num_iterations=3)
    assert config.num_iterations == 3
    for bad, name in (({"total_episodes": 0}, "total_episodes"), ({"num_train_epochs": 0}, "num_train_epochs"),
                      ({"gradient_accumulation_steps": 3}, "gradient_accumulation_steps"),
                      ({"lr_scheduler_type": "zigzag"}, "lr_scheduler_type"), ({"eval_split": 1.5}, "eval_split"),
                      ({"bf16": True, "fp16": True}, "fp16"), ({"dtype": "int8"}, "dtype")):
        with pytest.raises(ValueError, match=name):
            SegmentPPOConfig(**bad)


def test_gradient_accumulation_gives_the_same_update(tiny_dir, tmp_path):
    """Micro-batches share the mini-batch's token denominator: 2 accumulated micro-batches = 1 mini-batch
    (same gradient of the one optimiser step; no clipping, so a scaled gradient would show)."""
    options = dict(num_iterations=1, rollout_batch_size=8, mini_batch_size=8, max_grad_norm=1e9)
    one = make(tiny_dir, tmp_path / "a", **options)  # each trainer seeds the global RNG: build, then train
    h1 = one.train()
    two = make(tiny_dir, tmp_path / "b", gradient_accumulation_steps=2, **options)
    h2 = two.train()
    for key in ("policy_loss", "value_loss", "clipfrac", "approx_kl"):
        assert h1[0][key] == pytest.approx(h2[0][key], rel=1e-4, abs=1e-7), key
    for model in ("policy", "critic"):
        g1 = {n: p.grad for n, p in getattr(one, model).named_parameters() if p.grad is not None}
        g2 = {n: p.grad for n, p in getattr(two, model).named_parameters() if p.grad is not None}
        assert g1.keys() == g2.keys() and g1
        assert any(g.abs().max() > 1e-4 for g in g1.values())
        for n in g1:
            torch.testing.assert_close(g1[n], g2[n], rtol=1e-4, atol=1e-7, msg=f"{model} {n}")


def test_linear_schedule_with_warmup_hand_values(tiny_dir, tmp_path):
    # 8 rollouts / mini-batch 4 = 2 optimiser steps per iteration, 2 iterations = 4 steps, 2 warm-up steps:
    # lr(s) = lr * s / 2 for s < 2, lr * (4 - s) / (4 - 2) after. Logged at an iteration's start: s = 0, 2.
    trainer = make(tiny_dir, tmp_path, num_iterations=2, lr_scheduler_type="linear", warmup_steps=2,
                   learning_rate=1e-3)
    history = trainer.train()
    assert [h["learning_rate"] for h in history] == pytest.approx([0.0, 1e-3])
    assert trainer.scheduler_policy.get_last_lr()[0] == pytest.approx(0.0)  # s = 4
    assert trainer.scheduler_critic.get_last_lr()[0] == pytest.approx(0.0)
    ratio = make(tiny_dir, tmp_path, num_iterations=2, lr_scheduler_type="linear", warmup_ratio=0.5)
    assert ratio.scheduler_policy.lr_lambdas[0](1) == pytest.approx(0.5)  # ceil(0.5 * 4) = 2 warm-up steps


def test_lora_trains_only_the_adapter_and_the_reference_is_the_base(tiny_dir, tmp_path):
    trainer = make(tiny_dir, tmp_path, peft=True, num_iterations=2)
    assert trainer.ref_model is None and trainer.is_peft
    before = _params(trainer)
    trainer.train()
    after = _params(trainer)
    changed = {n for n in after if not torch.equal(before[n], after[n])}
    assert changed and all("lora_" in n for n in changed), sorted(changed)[:5]
    # the reference log-probs are the untouched base model's, the policy's are not
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    batch = trainer.rollout(trainer._prompt_batch(0))
    ids, mask, ctx = batch["query_responses"], batch["attention_mask"], int(batch["context_length"])
    expected = trainer._logprobs(base, ids, mask, ctx, batch["responses"])
    valid = batch["response_mask"]
    torch.testing.assert_close(batch["ref_logprobs"][valid], expected[valid], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batch["logprobs"][valid], expected[valid], atol=1e-3)
    trainer.save_model(str(tmp_path / "final"))
    assert (tmp_path / "final" / "adapter_config.json").exists()
    with pytest.raises(ValueError, match="ref_model"):
        SegmentPPOTrainer(
            trainer.args, policy=base, ref_model=None, critic=trainer.critic, reward_source=trainer.reward_source,
            tokenizer=trainer.tokenizer, prompts=PROMPTS)


def test_resume_restores_lora_adapters_and_scheduler(tiny_dir, tmp_path):
    options = dict(peft=True, num_iterations=4, lr_scheduler_type="linear", warmup_steps=1, learning_rate=1e-2)
    full = make(tiny_dir, tmp_path / "run", save_steps=2, **options)
    full_history = full.train()
    resumed = make(tiny_dir, tmp_path / "run", resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"),
                   **options)
    resumed_history = resumed.train()
    for a, b in zip(full_history[2:], resumed_history[2:]):
        assert a["learning_rate"] == pytest.approx(b["learning_rate"], abs=1e-12)
        assert a["policy_loss"] == pytest.approx(b["policy_loss"], abs=1e-5)
    assert resumed.scheduler_policy.last_epoch == full.scheduler_policy.last_epoch == 8
    p, q = _params(full), _params(resumed)
    for n in p:
        torch.testing.assert_close(p[n], q[n], rtol=1e-5, atol=1e-6, msg=n)


def _grads(trainer, model="policy"):
    return {n: p.grad for n, p in getattr(trainer, model).named_parameters() if p.grad is not None}


def test_bf16_autocast_and_gradient_checkpointing(tiny_dir, tmp_path):
    options = dict(num_iterations=1, rollout_batch_size=8, mini_batch_size=8, max_grad_norm=1e9)
    plain = make(tiny_dir, tmp_path / "a", **options)
    plain.train()
    ckpt = make(tiny_dir, tmp_path / "b", gradient_checkpointing=True, **options)
    assert ckpt.accelerator.unwrap_model(ckpt.policy).is_gradient_checkpointing
    ckpt.train()
    g1, g2 = _grads(plain), _grads(ckpt)
    assert g1.keys() == g2.keys() and g1
    for n in g1:  # recomputation gives the same gradients
        torch.testing.assert_close(g1[n], g2[n], rtol=1e-4, atol=1e-7, msg=n)
    ids = torch.tensor([[5, 6, 7]])
    fp32 = plain.policy(input_ids=ids).logits
    assert not torch.equal(fp32, fp32.to(torch.bfloat16).float())
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # accelerate's state is a per-process singleton: fp32 so far
    try:
        bf16 = make(tiny_dir, tmp_path / "c", num_iterations=1, bf16=True)
        assert bf16.accelerator.mixed_precision == "bf16"
        out = bf16.policy(input_ids=ids).logits  # computed in bf16 (accelerate returns it as fp32)
        assert torch.equal(out, out.to(torch.bfloat16).float())
        history = bf16.train()
        assert math.isfinite(history[0]["policy_loss"]) and math.isfinite(history[0]["value_loss"])
    finally:
        AcceleratorState._reset_state(True)


def test_periodic_evaluation_and_callback(tiny_dir, tmp_path):
    seen = []

    class Record(PPOCallback):
        def on_evaluate(self, trainer, metrics):
            seen.append((trainer.iteration, dict(metrics)))

    trainer = make(tiny_dir, tmp_path, num_iterations=2, eval_steps=1, eval_prompts=PROMPTS[-5:],
                   callbacks=[Record()], learning_rate=5e-2)
    before = trainer.evaluate()
    assert before["eval_kl"] == pytest.approx(0.0, abs=1e-4)  # policy == reference before training
    assert before == trainer.evaluate()  # greedy: deterministic
    assert 0 < before["eval_response_length"] <= 6
    history = trainer.train()
    assert [it for it, _ in seen] == [1, 2]
    assert all({"eval_reward", "eval_kl", "eval_response_length"} <= set(h) for h in history)
    assert seen[-1][1]["eval_reward"] == history[-1]["eval_reward"]
    assert abs(history[-1]["eval_kl"]) > 1e-3  # the policy moved away from the reference
    assert all(h["time_rollout_s"] > 0 and h["time_scoring_s"] > 0 and h["time_update_s"] > 0 for h in history)
    with pytest.raises(ValueError, match="eval_prompts"):
        make(tiny_dir, tmp_path, eval_steps=1)


def test_rollout_logprobs_from_generate_equal_a_forward_pass(tiny_dir, tmp_path):
    """The rollout reads the policy's log-probs from generate's logits (no second forward): they must be
    the log-probs of the sampled tokens at the sampling temperature, position by position."""
    trainer = make(tiny_dir, tmp_path, num_iterations=1, temperature=0.7, max_new_tokens=10)
    batch = trainer.rollout(trainer._prompt_batch(0))
    ids, mask, ctx = batch["query_responses"], batch["attention_mask"], int(batch["context_length"])
    policy = trainer.accelerator.unwrap_model(trainer.policy)
    expected = trainer._logprobs(policy, ids, mask, ctx, batch["responses"])  # divides by the temperature
    valid = batch["response_mask"]
    assert valid.sum() > valid.shape[0]  # several tokens per row: an off-by-one position would show
    torch.testing.assert_close(batch["logprobs"][valid], expected[valid], rtol=1e-4, atol=1e-4)
    assert (batch["logprobs"][~valid] == 0).all()
