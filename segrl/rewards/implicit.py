"""Per-token log-probs, entropies and implicit DPO rewards in segrl's response-token layout.

Layout (docs/method.md#tensor-conventions): every tensor is ``(B, T)`` over **response tokens only**, right-padded;
``x[b, t]`` belongs to response token ``t``, whose log-probability is ``log pi(y_t | x, y_<t)``.
A causal LM's logits at sequence position ``i`` predict the token at ``i + 1``, so response token
``t`` (at position ``response_start[b] + t`` of ``input_ids``) is scored by the logits at position
``response_start[b] + t - 1``. That one-position shift is done here, once, and tested.

Prompt and response are tokenised **separately** and concatenated (``prompt_ids + response_ids
[+ eos]``), so the response tokens are exactly the tokens of the response text. TRL's DPOTrainer
instead tokenises ``prompt + response`` jointly and splits where it diverges from the prompt; the
two agree whenever the prompt ends on a token boundary (as the built-in data does).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from segrl.padding import pad_rows

__all__ = [
    "ResponseBatch",
    "implicit_token_rewards",
    "response_token_entropy",
    "response_token_logprobs",
    "tokenize_pairs",
]


@dataclass
class ResponseBatch:
    """The response tokens of a batch, in the ``(B, T)`` layout of the core ops.

    Attributes:
        response_ids: ``LongTensor`` of shape ``(B, T)``, right-padded with the pad id.
        mask: ``BoolTensor`` of shape ``(B, T)``, True on real response tokens (EOS included when
            it was appended).
        tokens: for each row, the decoded text of each of its ``n_b`` tokens (for display).
    """

    response_ids: torch.Tensor
    mask: torch.Tensor
    tokens: list[list[str]]

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        """``n_b`` per row. Shape: ``(B,)``."""
        return self.mask.sum(-1)

    def select(self, rows: torch.Tensor | Sequence[int]) -> "ResponseBatch":
        """The sub-batch of the given row indices (padding width unchanged)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        return ResponseBatch(self.response_ids[rows], self.mask[rows], [self.tokens[i] for i in rows.tolist()])


# --------------------------------------------------------------------------------------------------
# Tokenisation
# --------------------------------------------------------------------------------------------------


def _check_texts(prompts, responses) -> None:
    for name, value in (("prompts", prompts), ("responses", responses)):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ValueError(f"`{name}` must be a list of strings, got {type(value).__name__}")
        bad = [i for i, v in enumerate(value) if not isinstance(v, str)]
        if bad:
            raise ValueError(f"`{name}[{bad[0]}]` must be a str, got {type(value[bad[0]]).__name__}")
    if len(prompts) != len(responses):
        raise ValueError(f"`prompts` has {len(prompts)} items but `responses` has {len(responses)}; they must match")
    if not prompts:
        raise ValueError("`prompts` and `responses` are empty; need at least one pair")
    empty = [i for i, r in enumerate(responses) if not r]
    if empty:
        raise ValueError(f"`responses[{empty[0]}]` is empty; every response needs at least one token")


def tokenize_pairs(tokenizer, prompts: Sequence[str], responses: Sequence[str], *, max_length: int = 512,
                   add_eos: bool = True):
    """Tokenise (prompt, response) pairs into a right-padded batch plus the response layout.

    The prompt is encoded with the tokenizer's own special tokens (e.g. a Llama BOS), the response
    without, and EOS is appended to the response if ``add_eos`` and it does not already end with it.
    An empty prompt becomes ``[bos]`` (the first response token needs a context); without a BOS
    token that is an error. Sequences longer than ``max_length`` keep the response start: the
    response is cut on the right, and only if the prompt leaves no room for one response token is
    the prompt cut on the left.

    Returns:
        ``(input_ids, attention_mask, response_start, batch)``: ``input_ids`` and
        ``attention_mask`` of shape ``(B, L)`` (right-padded with the pad id; mask 1/0 long),
        ``response_start`` of shape ``(B,)`` — the position in ``input_ids`` of response token 0 —
        and a :class:`ResponseBatch` of shape ``(B, T)``.
    """
    _check_texts(prompts, responses)
    if max_length < 2:
        raise ValueError(f"`max_length` must be >= 2 (one prompt and one response token), got {max_length}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("`tokenizer` has neither a pad nor an eos token to pad with")
    eos_id = tokenizer.eos_token_id
    if add_eos and eos_id is None:
        raise ValueError("`tokenizer` has no eos token; pass add_eos=False")

    prompt_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    response_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    seqs, starts, resps = [], [], []
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        if not p:
            if tokenizer.bos_token_id is None:
                raise ValueError(f"`prompts[{i}]` encodes to no tokens and the tokenizer has no bos token")
            p = [tokenizer.bos_token_id]
        if add_eos and (not r or r[-1] != eos_id):
            r = r + [eos_id]
        if not r:
            raise ValueError(f"`responses[{i}]` encodes to no tokens")
        if len(p) + len(r) > max_length:
            keep_r = min(len(r), max(1, max_length - len(p)))
            r, p = r[:keep_r], p[len(p) - (max_length - keep_r):]
        seqs.append(p + r)
        starts.append(len(p))
        resps.append(r)

    # Decoded one by one for display: a token's own text, special tokens spelled out.
    tokens = [tokenizer.batch_decode([[t] for t in r]) for r in resps]
    return encode_id_rows([p[: n] for p, n in zip(seqs, starts)], resps, pad_id=pad_id, tokens=tokens)


def encode_id_rows(prompt_ids, response_ids, *, pad_id: int, tokens=None):
    """The encoded-batch tuple of :func:`tokenize_pairs` from token ids (no re-tokenisation).

    Args:
        prompt_ids: ``B`` lists of prompt token ids, each non-empty.
        response_ids: ``B`` lists of response token ids.
        pad_id: id written into padding positions.
        tokens: optional display strings per response token.

    Returns:
        ``(input_ids (B, L), attention_mask (B, L), response_start (B,), ResponseBatch (B, T))``,
        right-padded.
    """
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("implicit token rewards need at least one prompt token per row (e.g. a BOS token)")
    input_ids, attention_mask = pad_rows([list(p) + list(r) for p, r in zip(prompt_ids, response_ids)], pad_id)
    resp_ids, resp_mask = pad_rows([list(r) for r in response_ids], pad_id)
    starts = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long)
    batch = ResponseBatch(resp_ids, resp_mask.bool(), tokens if tokens is not None else [])
    return input_ids, attention_mask, starts, batch


# --------------------------------------------------------------------------------------------------
# Forward passes
# --------------------------------------------------------------------------------------------------


def _response_logits(model, input_ids, attention_mask, response_start, batch: ResponseBatch) -> torch.Tensor:
    """fp32 logits of the distributions that predict each response token. Shape: ``(B, T, V)``.

    Runs with autograd as the caller has it. The batch is trimmed to its longest real sequence so a
    micro-batch never pays for another micro-batch's padding.
    """
    device = next(model.parameters()).device
    width = int(attention_mask.sum(-1).max())
    t_max = batch.mask.shape[1]
    logits = model(
        input_ids=input_ids[:, :width].to(device), attention_mask=attention_mask[:, :width].to(device)
    ).logits
    # Response token t sits at response_start + t and is predicted by the logits one position earlier.
    pos = response_start.to(device)[:, None] + torch.arange(t_max, device=device)[None, :] - 1
    pos = pos.clamp(0, width - 1)  # padding columns: any valid index, zeroed by the caller
    return logits.gather(1, pos[..., None].expand(-1, -1, logits.shape[-1])).float()


def _sequence_token_logprobs(model, input_ids, attention_mask, response_start, batch: ResponseBatch) -> torch.Tensor:
    """``log pi(y_t | x, y_<t)`` per response token, differentiable, 0 at padding. Shape: ``(B, T)``.

    One forward pass over the whole batch, on the model's device; used for training loops.
    """
    logits = _response_logits(model, input_ids, attention_mask, response_start, batch)
    mask = batch.mask.to(logits.device)
    ids = batch.response_ids.to(logits.device).masked_fill(~mask, 0)  # pad id may be out of range
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[..., None]).squeeze(-1)
    return logp.masked_fill(~mask, 0.0)


class _EvalMode:
    """``model.eval()`` for the duration, then the caller's train/eval mode back."""

    def __init__(self, model):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def _load(model, name: str):
    if isinstance(model, (str, os.PathLike)):
        from transformers import AutoModelForCausalLM

        from segrl._deepspeed import whole_model_loading

        with whole_model_loading():
            return AutoModelForCausalLM.from_pretrained(os.fspath(model))
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"`{name}` must be a causal LM module or a path to one, got {type(model).__name__}")
    return model


def _vocab_size(model) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return head.weight.shape[0]
    return int(model.config.vocab_size)


def _check_vocab(tokenizer, **models) -> None:
    # A model may pad its vocabulary beyond the tokenizer (e.g. Qwen2), never the other way round;
    # two models scored against each other must share one vocabulary.
    n_tok = len(tokenizer)
    sizes = {}
    for name, model in models.items():
        sizes[name] = _vocab_size(model)
        if sizes[name] < n_tok:
            raise ValueError(
                f"`{name}` has vocab size {sizes[name]} but the tokenizer has {n_tok} tokens: tokenizer mismatch"
            )
    if len(set(sizes.values())) > 1:
        desc = ", ".join(f"`{k}`: {v}" for k, v in sizes.items())
        raise ValueError(f"models have different vocab sizes ({desc}): they must share the tokenizer")


@torch.no_grad()
def _token_stats(model, enc, *, batch_size: int, logprobs: bool, entropy: bool):
    """Micro-batched fp32 log-probs and/or entropies of the response tokens, on CPU, 0 at padding.

    Peak memory is about two ``(batch_size, L, V)`` fp32 tensors (the model's logits and the
    gathered response logits); lower ``batch_size`` for large vocabularies.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    input_ids, attention_mask, response_start, batch = enc
    out_lp = torch.zeros(batch.mask.shape, dtype=torch.float32)
    out_h = torch.zeros(batch.mask.shape, dtype=torch.float32)
    with _EvalMode(model):
        for lo in range(0, len(batch), batch_size):
            rows = torch.arange(lo, min(lo + batch_size, len(batch)))
            t_b = int(batch.mask[rows].sum(-1).max())  # this micro-batch's own response width
            sub = ResponseBatch(batch.response_ids[rows, :t_b], batch.mask[rows, :t_b], [])
            logits = _response_logits(model, input_ids[rows], attention_mask[rows], response_start[rows], sub)
            log_z = torch.logsumexp(logits, dim=-1)
            mask = sub.mask.to(logits.device)
            if logprobs:
                # gather - logsumexp: no second (b, T, V) tensor when only log-probs are wanted.
                ids = sub.response_ids.to(logits.device).masked_fill(~mask, 0)
                lp = logits.gather(-1, ids[..., None]).squeeze(-1) - log_z
                out_lp[rows, :t_b] = lp.masked_fill(~mask, 0.0).cpu()
            if entropy:
                logp_all = logits - log_z[..., None]
                h = -(logp_all.exp() * logp_all).sum(-1)
                out_h[rows, :t_b] = h.masked_fill(~mask, 0.0).cpu()
    return out_lp, out_h


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def response_token_logprobs(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], *,
                            batch_size: int = 8, max_length: int = 512, add_eos: bool = True):
    """``log pi(y_t | x, y_<t)`` for every response token, in fp32, without gradients.

    ``model`` is a causal LM module or a path to one. Rows are processed ``batch_size`` at a time;
    the result does not depend on ``batch_size`` beyond float rounding.

    Returns:
        ``(logprobs, batch)``: ``logprobs`` of shape ``(B, T)`` on CPU, 0.0 at padding, and the
        :class:`ResponseBatch` it is laid out on.
    """
    model = _load(model, "model")
    _check_vocab(tokenizer, model=model)
    enc = tokenize_pairs(tokenizer, prompts, responses, max_length=max_length, add_eos=add_eos)
    logp, _ = _token_stats(model, enc, batch_size=batch_size, logprobs=True, entropy=False)
    return logp, enc[3]


def response_token_entropy(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], *,
                           batch_size: int = 8, max_length: int = 512, add_eos: bool = True):
    """Entropy ``H(pi(. | x, y_<t))`` in nats of the distribution that predicted each response token.

    Computed in fp32 over the model's full output vocabulary, without gradients; for docs/method.md#segment-rm pass
    the frozen reference (SFT) model.

    Returns:
        ``(entropy, batch)``: ``entropy`` of shape ``(B, T)`` on CPU, 0.0 at padding.
    """
    model = _load(model, "model")
    _check_vocab(tokenizer, model=model)
    enc = tokenize_pairs(tokenizer, prompts, responses, max_length=max_length, add_eos=add_eos)
    _, ent = _token_stats(model, enc, batch_size=batch_size, logprobs=False, entropy=True)
    return ent, enc[3]


def implicit_token_rewards(policy, ref_model, tokenizer, prompts: Sequence[str], responses: Sequence[str], *,
                           beta: float = 0.1, batch_size: int = 8, max_length: int = 512, add_eos: bool = True):
    """The DPO implicit reward per response token: ``beta * (log pi(y_t|.) - log pi_ref(y_t|.))``.

    ``policy`` and ``ref_model`` are causal LM modules or paths; both must use ``tokenizer``'s
    vocabulary (``ValueError`` naming the model otherwise).

    Returns:
        ``(rewards, batch)``: ``rewards`` of shape ``(B, T)`` fp32 on CPU, 0.0 at padding, and the
        :class:`ResponseBatch`. Summing a row gives the sequence-level implicit reward.
    """
    if not isinstance(beta, (int, float)) or not beta > 0:
        raise ValueError(f"`beta` must be a positive number, got {beta!r}")
    policy = _load(policy, "policy")
    ref_model = _load(ref_model, "ref_model")
    _check_vocab(tokenizer, policy=policy, ref_model=ref_model)
    enc = tokenize_pairs(tokenizer, prompts, responses, max_length=max_length, add_eos=add_eos)
    lp_pi, _ = _token_stats(policy, enc, batch_size=batch_size, logprobs=True, entropy=False)
    lp_ref, _ = _token_stats(ref_model, enc, batch_size=batch_size, logprobs=True, entropy=False)
    rewards = (beta * (lp_pi - lp_ref)).masked_fill(~enc[3].mask, 0.0)
    return rewards, enc[3]
