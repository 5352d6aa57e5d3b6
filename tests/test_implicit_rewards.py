"""Per-token log-probs, entropies and implicit DPO rewards in the response-token layout (docs/method.md#tensor-conventions)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from segrl.models import build_tiny_causal_lm
from segrl.rewards import (
    ResponseBatch,
    implicit_token_rewards,
    response_token_entropy,
    response_token_logprobs,
    tokenize_pairs,
)

PROMPTS = ["7+3+6=", "2+5=", "Q: What do bees make?\nA:", "9+1+1+4="]
RESPONSES = ["7+3=10;10+6=16;=16", "2+5=7;=7", " Bees make honey.", "9+1=10;10+1=11;11+4=15;=15"]


class EchoLM(torch.nn.Module):
    """A stub causal LM whose logits at position i put weight ``scale`` on token ``input_ids[i]``.

    So ``log p(y_t)`` is high exactly when response token ``t`` equals the token just before it
    in the full sequence, which pins down the one-position shift without trusting any real model.
    """

    def __init__(self, vocab_size: int, scale: float = 5.0):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab_size)
        self.scale = scale
        self.dummy = torch.nn.Parameter(torch.zeros(()))  # a device to read

    def get_output_embeddings(self):
        return None

    def forward(self, input_ids, attention_mask=None):
        logits = self.scale * torch.nn.functional.one_hot(input_ids, self.config.vocab_size).float()
        return SimpleNamespace(logits=logits + 0 * self.dummy)

    def hi_lo(self):
        v, s = self.config.vocab_size, self.scale
        log_z = math.log(math.exp(s) + v - 1)
        return s - log_z, -log_z


# --------------------------------------------------------------------------------------------------
# tokenize_pairs
# --------------------------------------------------------------------------------------------------


def test_tokenize_pairs_layout(tiny_tokenizer):
    tok = tiny_tokenizer
    input_ids, attn, start, batch = tokenize_pairs(tok, PROMPTS, RESPONSES)
    assert isinstance(batch, ResponseBatch) and len(batch) == len(PROMPTS)
    assert batch.response_ids.dtype == torch.long and batch.mask.dtype == torch.bool
    for b, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        r_ids = tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(r_ids)
        assert int(start[b]) == len(p_ids)
        assert input_ids[b, : len(p_ids) + n].tolist() == p_ids + r_ids
        assert attn[b].tolist() == [1] * (len(p_ids) + n) + [0] * (input_ids.shape[1] - len(p_ids) - n)
        assert batch.response_ids[b, :n].tolist() == r_ids
        assert batch.mask[b].tolist() == [True] * n + [False] * (batch.mask.shape[1] - n)
        assert (batch.response_ids[b, n:] == tok.pad_token_id).all()
        assert (input_ids[b, len(p_ids) + n:] == tok.pad_token_id).all()
        assert batch.tokens[b][-1] == "<|eos|>" and "".join(batch.tokens[b][:-1]) == r
    assert batch.mask.shape[1] == int(batch.lengths.max())


def test_tokenize_pairs_eos_handling(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    _, _, _, with_eos = tokenize_pairs(tiny_tokenizer, ["1+1="], ["1+1=2<|eos|>"])
    assert with_eos.response_ids[0].tolist().count(eos) == 1  # not appended twice
    _, _, _, no_eos = tokenize_pairs(tiny_tokenizer, ["1+1="], ["1+1=2"], add_eos=False)
    assert eos not in no_eos.response_ids[0].tolist()
    assert int(no_eos.lengths[0]) == int(with_eos.lengths[0]) - 1


def test_tokenize_pairs_empty_prompt_gets_bos(tiny_tokenizer):
    input_ids, _, start, _ = tokenize_pairs(tiny_tokenizer, [""], ["hello"])
    assert int(start[0]) == 1 and int(input_ids[0, 0]) == tiny_tokenizer.bos_token_id


def test_tokenize_pairs_truncation(tiny_tokenizer):
    prompt, response = "1+2+3+4=", "1+2=3;3+3=6;6+4=10;=10"
    n_p = len(tiny_tokenizer(prompt)["input_ids"])
    input_ids, attn, start, batch = tokenize_pairs(tiny_tokenizer, [prompt], [response], max_length=n_p + 4)
    assert attn.sum() == n_p + 4 and int(start[0]) == n_p  # response cut on the right, prompt kept
    full = tiny_tokenizer(response)["input_ids"]
    assert batch.response_ids[0].tolist() == full[:4]
    # A prompt longer than max_length is cut on the left, leaving one response token.
    input_ids, attn, start, batch = tokenize_pairs(tiny_tokenizer, [prompt], [response], max_length=3)
    assert attn.sum() == 3 and int(start[0]) == 2 and int(batch.lengths[0]) == 1
    assert input_ids[0, :2].tolist() == tiny_tokenizer(prompt)["input_ids"][-2:]


@pytest.mark.parametrize(
    ("prompts", "responses", "match"),
    [
        (["a", "b"], ["x"], "responses"),
        (["a"], [""], r"responses\[0\]"),
        (["a", "b"], ["x", ""], r"responses\[1\]"),
        ("abc", ["x", "y", "z"], "prompts"),
        (["a"], "x", "responses"),
        ([], [], "prompts"),
        (["a"], [3], r"responses\[0\]"),
    ],
)
def test_tokenize_pairs_errors(tiny_tokenizer, prompts, responses, match):
    with pytest.raises(ValueError, match=match):
        tokenize_pairs(tiny_tokenizer, prompts, responses)


def test_response_batch_select(tiny_tokenizer):
    _, _, _, batch = tokenize_pairs(tiny_tokenizer, PROMPTS, RESPONSES)
    sub = batch.select([2, 0])
    assert torch.equal(sub.response_ids, batch.response_ids[[2, 0]]) and sub.tokens == [batch.tokens[2], batch.tokens[0]]


# --------------------------------------------------------------------------------------------------
# Index shift
# --------------------------------------------------------------------------------------------------


def test_shift_with_echo_model(tiny_tokenizer):
    # The prompt ends with "=" and the response starts with "=": response token 0 is predicted by
    # the *last prompt token*, so it must get the high log-prob; an off-by-one would miss it.
    model = EchoLM(len(tiny_tokenizer))
    hi, lo = model.hi_lo()
    prompts, responses = ["5+5="], ["=10;=10"]
    logp, batch = response_token_logprobs(model, tiny_tokenizer, prompts, responses)
    input_ids, _, start, _ = tokenize_pairs(tiny_tokenizer, prompts, responses)
    seq = input_ids[0].tolist()
    expected = [hi if seq[int(start[0]) + t - 1] == y else lo for t, y in enumerate(batch.response_ids[0].tolist())]
    torch.testing.assert_close(logp[0], torch.tensor(expected))
    assert expected[0] == hi and lo in expected  # the check can tell a shift apart


def test_logprobs_match_manual_full_forward(tiny_pair):
    tokenizer, _, policy = tiny_pair
    logp, batch = response_token_logprobs(policy, tokenizer, PROMPTS, RESPONSES)
    for b, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        p_ids = tokenizer(p)["input_ids"]
        r_ids = tokenizer(r)["input_ids"] + [tokenizer.eos_token_id]
        with torch.no_grad():
            logits = policy(input_ids=torch.tensor([p_ids + r_ids])).logits[0].float()
        manual = torch.stack([torch.log_softmax(logits[len(p_ids) + t - 1], -1)[y] for t, y in enumerate(r_ids)])
        torch.testing.assert_close(logp[b, : len(r_ids)], manual, rtol=1e-5, atol=1e-5)
        # ... and the neighbouring (wrong) index gives different numbers, so the check has teeth.
        shifted = torch.stack([torch.log_softmax(logits[len(p_ids) + t], -1)[y] for t, y in enumerate(r_ids[:-1])])
        assert not torch.allclose(logp[b, : len(r_ids) - 1], shifted, atol=1e-3)


def test_entropy_matches_manual(tiny_pair):
    tokenizer, sft, _ = tiny_pair
    ent, batch = response_token_entropy(sft, tokenizer, PROMPTS[:2], RESPONSES[:2])
    for b in range(2):
        p_ids = tokenizer(PROMPTS[b])["input_ids"]
        n = int(batch.lengths[b])
        r_ids = batch.response_ids[b, :n].tolist()
        with torch.no_grad():
            logits = sft(input_ids=torch.tensor([p_ids + r_ids])).logits[0].float()
        lp = torch.log_softmax(logits[len(p_ids) - 1: len(p_ids) + n - 1], -1)
        torch.testing.assert_close(ent[b, :n], -(lp.exp() * lp).sum(-1), rtol=1e-5, atol=1e-5)
    assert (ent[batch.mask] >= 0).all() and (ent[batch.mask] <= math.log(len(tokenizer)) + 1e-4).all()


def test_entropy_with_echo_model(tiny_tokenizer):
    model = EchoLM(len(tiny_tokenizer), scale=3.0)
    ent, batch = response_token_entropy(model, tiny_tokenizer, ["1+1="], ["1+1=2"])
    v, s = len(tiny_tokenizer), 3.0
    p_hi = math.exp(s) / (math.exp(s) + v - 1)
    p_lo = 1 / (math.exp(s) + v - 1)
    h = -(p_hi * math.log(p_hi) + (v - 1) * p_lo * math.log(p_lo))
    torch.testing.assert_close(ent[0], torch.full((int(batch.lengths[0]),), h))


# --------------------------------------------------------------------------------------------------
# Padding, batching, rewards
# --------------------------------------------------------------------------------------------------


def test_padding_is_zero_and_batching_invariant(tiny_pair):
    tokenizer, sft, policy = tiny_pair
    prompts, responses = PROMPTS * 3, RESPONSES * 3  # 12 rows of varied length
    lp8, b8 = response_token_logprobs(policy, tokenizer, prompts, responses, batch_size=8)
    lp1, b1 = response_token_logprobs(policy, tokenizer, prompts, responses, batch_size=1)
    ent8, _ = response_token_entropy(sft, tokenizer, prompts, responses, batch_size=8)
    ent1, _ = response_token_entropy(sft, tokenizer, prompts, responses, batch_size=1)
    r8, _ = implicit_token_rewards(policy, sft, tokenizer, prompts, responses, batch_size=8)
    r1, _ = implicit_token_rewards(policy, sft, tokenizer, prompts, responses, batch_size=1)
    assert torch.equal(b8.response_ids, b1.response_ids) and torch.equal(b8.mask, b1.mask)
    assert (~b8.mask).any()  # there is padding to check
    for big, one in ((lp8, lp1), (ent8, ent1), (r8, r1)):
        assert big.dtype == torch.float32 and big.shape == b8.mask.shape
        assert (big[~b8.mask] == 0).all() and (one[~b8.mask] == 0).all()
        torch.testing.assert_close(big, one, rtol=1e-5, atol=1e-6)
    assert (lp8[b8.mask] < 0).all() and (ent8[b8.mask] > 0).all()


def test_implicit_rewards_definition(tiny_pair):
    tokenizer, sft, policy = tiny_pair
    r, batch = implicit_token_rewards(policy, sft, tokenizer, PROMPTS, RESPONSES, beta=0.25)
    lp_pi, _ = response_token_logprobs(policy, tokenizer, PROMPTS, RESPONSES)
    lp_ref, _ = response_token_logprobs(sft, tokenizer, PROMPTS, RESPONSES)
    torch.testing.assert_close(r, 0.25 * (lp_pi - lp_ref))
    assert r[batch.mask].abs().max() > 0  # the pair differs
    same, _ = implicit_token_rewards(sft, sft, tokenizer, PROMPTS, RESPONSES)
    assert (same == 0).all()


def test_models_as_paths(tiny_pair, tiny_pair_dir):
    tokenizer, sft, policy = tiny_pair
    from_modules, _ = implicit_token_rewards(policy, sft, tokenizer, PROMPTS, RESPONSES)
    from_paths, _ = implicit_token_rewards(str(tiny_pair_dir.policy), tiny_pair_dir.sft, tokenizer, PROMPTS, RESPONSES)
    torch.testing.assert_close(from_paths, from_modules)


def test_no_grad_and_mode_restored(tiny_tokenizer):
    model = build_tiny_causal_lm(tiny_tokenizer).train()
    logp, _ = response_token_logprobs(model, tiny_tokenizer, PROMPTS, RESPONSES)
    assert model.training and not logp.requires_grad
    model.eval()
    response_token_entropy(model, tiny_tokenizer, PROMPTS, RESPONSES)
    assert not model.training


def test_vocab_mismatch_errors(tiny_tokenizer):
    good = build_tiny_causal_lm(tiny_tokenizer)
    small = build_tiny_causal_lm(tiny_tokenizer, vocab_size=len(tiny_tokenizer) - 10)
    padded = build_tiny_causal_lm(tiny_tokenizer, vocab_size=len(tiny_tokenizer) + 64)
    with pytest.raises(ValueError, match="ref_model"):
        implicit_token_rewards(good, small, tiny_tokenizer, PROMPTS, RESPONSES)
    with pytest.raises(ValueError, match="policy"):
        implicit_token_rewards(small, good, tiny_tokenizer, PROMPTS, RESPONSES)
    with pytest.raises(ValueError, match="`model`"):
        response_token_logprobs(small, tiny_tokenizer, PROMPTS, RESPONSES)
    with pytest.raises(ValueError, match="vocab sizes"):
        implicit_token_rewards(good, padded, tiny_tokenizer, PROMPTS, RESPONSES)
    # A model padding its vocabulary beyond the tokenizer (as Qwen2 does) is fine on its own.
    logp, batch = response_token_logprobs(padded, tiny_tokenizer, PROMPTS, RESPONSES)
    assert (logp[batch.mask] < 0).all()


def test_argument_errors(tiny_pair):
    tokenizer, sft, policy = tiny_pair
    with pytest.raises(ValueError, match="responses"):
        implicit_token_rewards(policy, sft, tokenizer, PROMPTS, RESPONSES[:2])
    with pytest.raises(ValueError, match="responses"):
        implicit_token_rewards(policy, sft, tokenizer, ["a"], [""])
    with pytest.raises(ValueError, match="beta"):
        implicit_token_rewards(policy, sft, tokenizer, PROMPTS, RESPONSES, beta=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        response_token_logprobs(policy, tokenizer, PROMPTS, RESPONSES, batch_size=0)
    with pytest.raises(ValueError, match="policy"):
        implicit_token_rewards(object(), sft, tokenizer, PROMPTS, RESPONSES)
