"""Preference pairs for the pipeline: sampled from the SFT model (on-policy) or synthetic.

``sampled`` (default): ``k`` responses per training prompt from the SFT policy at temperature 1;
the chosen response is the one with the fewest wrong parts (steps and answer, judged by
:func:`segrl.tasks.step_flags`), the rejected one the one with the most; prompts whose samples all
tie are dropped. This is the recipe of ``research/asr-toy-findings.md``: the SFT model drops carries
greedily but gets many right when sampling, so the pairs carry the credit-assignment conflict
(a chosen response with a wrong step, a rejected one with correct steps) in about half the cases.

``synthetic``: :func:`segrl.tasks.make_preference_pairs` with a fixed conflict fraction.

Every row also gets the oracle token rewards (``chosen_token_rewards`` / ``rejected_token_rewards``,
:func:`segrl.tasks.oracle_token_rewards`): the upper-bound reward source.
"""

from __future__ import annotations

import random

import torch

from segrl.padding import pad_rows

__all__ = ["attach_oracle_rewards", "pairs_from_samples", "sample_responses", "train_prompts"]


def train_prompts(n: int, seed: int, *, min_terms: int = 4, max_terms: int = 6) -> list[str]:
    """``n`` distinct prompts from the training side of the partition (never held out)."""
    from segrl.tasks.arith import (  # the task's own sampler
        _draw_train_terms,
        _prompt_text,
    )

    rng = random.Random(f"pipeline-prompts-{seed}")
    seen: dict[str, None] = {}
    for _ in range(50 * n):
        seen.setdefault(_prompt_text(_draw_train_terms(rng, min_terms, max_terms)))
        if len(seen) == n:
            break
    return list(seen)


@torch.no_grad()
def sample_responses(model, tokenizer, prompts, *, k: int, temperature: float = 1.0, seed: int = 0,
                     batch_size: int = 64, max_new_tokens: int = 80, progress=None) -> list[list[str]]:
    """``k`` sampled completions per prompt (text, special tokens removed). Seeded; the caller's
    global RNG state is left untouched. ``progress(done, total)`` after every batch."""
    tok = tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id
    out: list[list[str]] = []
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for lo in range(0, len(prompts), batch_size):
            chunk = prompts[lo: lo + batch_size]
            enc = tok(chunk, add_special_tokens=False)["input_ids"]
            ids, attn = pad_rows(enc, pad, side="left")
            width = ids.shape[1]
            gen = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=temperature,
                                 top_k=0, top_p=1.0, max_new_tokens=max_new_tokens, num_return_sequences=k,
                                 pad_token_id=pad, eos_token_id=eos)
            new = gen[:, width:].tolist()
            for i in range(len(chunk)):
                texts = []
                for row in new[i * k: (i + 1) * k]:
                    if eos in row:
                        row = row[: row.index(eos)]
                    texts.append(tok.decode(row, skip_special_tokens=True).split("\n", 1)[0])
                out.append(texts)
            if progress is not None:
                progress(min(lo + batch_size, len(prompts)), len(prompts))
    model.train(was_training)
    return out


def _n_wrong(prompt: str, response: str) -> int:
    from segrl.tasks import step_flags

    return sum(not ok for ok in step_flags(prompt, response))


def pairs_from_samples(prompts, samples) -> list[dict]:
    """Best-vs-worst pairs by the number of wrong parts; prompts whose samples tie are dropped.
    Empty responses are never used."""
    rows = []
    for prompt, cands in zip(prompts, samples):
        cands = [c for c in dict.fromkeys(cands) if c.strip()]  # distinct, non-empty, in sampling order
        if len(cands) < 2:
            continue
        wrong = [_n_wrong(prompt, c) for c in cands]
        best = min(range(len(cands)), key=wrong.__getitem__)
        worst = max(range(len(cands)), key=wrong.__getitem__)
        if wrong[best] == wrong[worst]:
            continue
        rows.append({"prompt": prompt, "chosen": cands[best], "rejected": cands[worst]})
    return rows


def attach_oracle_rewards(rows, tokenizer) -> list[dict]:
    """Add the oracle ``chosen_token_rewards`` / ``rejected_token_rewards`` columns (EOS included)."""
    from segrl.tasks import oracle_token_rewards

    out = []
    for r in rows:
        out.append({**r,
                    "chosen_token_rewards": oracle_token_rewards(tokenizer, r["prompt"], r["chosen"]),
                    "rejected_token_rewards": oracle_token_rewards(tokenizer, r["prompt"], r["rejected"])})
    return out
