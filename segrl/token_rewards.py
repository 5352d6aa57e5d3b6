"""Token-reward sources shared by ASR-DPO and ASR rejection sampling.

The keep masks themselves are :func:`segrl.ops.keep_mask` (options: :class:`segrl.asr_options.ASRArguments`);
:func:`boundary_token_table` gives the step ends of ``kind="stepwise"``.

**Sources** of token rewards, each producing one float per completion token *as TRL tokenised the
completion* (so ``len == len(chosen_ids)``, EOS included):

- ``"columns"``: precomputed lists in the dataset (``chosen_token_rewards`` / ``rejected_token_rewards``),
  checked and aligned by :func:`align_token_rewards`;
- ``"segment_rm"``: a segment reward model's spread per-token rewards, from the one segment-RM
  source :class:`segrl.rewards.SegmentRMRewards` run on TRL's own ids;
- ``"implicit"``: the DPO implicit reward ``beta * (log pi - log pi_ref)`` of a given model pair
  (:class:`ImplicitTokenRewards`).

Nothing here imports transformers at module import time.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Sequence

import torch

from segrl.asr_options import DEFAULT_BOUNDARY_CHARS

__all__ = [
    "DEFAULT_BOUNDARY_CHARS",
    "TOKEN_REWARD_SOURCES",
    "ImplicitTokenRewards",
    "add_token_reward_columns",
    "align_token_rewards",
    "boundary_token_table",
    "check_same_tokenizer",
]

TOKEN_REWARD_SOURCES = ("columns", "segment_rm", "implicit")


# --------------------------------------------------------------------------------------------------
# Step boundaries (for segrl.ops.keep_mask(kind="stepwise"))
# --------------------------------------------------------------------------------------------------


def boundary_token_table(tokenizer, chars: str = DEFAULT_BOUNDARY_CHARS) -> torch.Tensor:
    """Which token ids end a step: those whose decoded text contains any of ``chars``.

    Every id of the tokenizer (added tokens included) is decoded once, on its own. Look up a batch
    with ``table[ids]``.

    Returns:
        BoolTensor of shape (V,), ``V = len(tokenizer)``.
    """
    if not chars:
        raise ValueError("`step_boundary_chars` must not be empty for mask_type='stepwise'")
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return torch.tensor([any(c in text for c in chars) for text in texts], dtype=torch.bool)


class StepBoundaries:
    """Step-end flags of response tokens for ``mask_type="stepwise"``, shared by every trainer.

    The tokenizer's table (:func:`boundary_token_table`) is built on first use, once.
    ``boundaries(ids, mask)`` -> BoolTensor (B, T): ``ids`` end a step and are valid response tokens.
    """

    def __init__(self, tokenizer, chars: str = DEFAULT_BOUNDARY_CHARS):
        self.tokenizer, self.chars = tokenizer, chars
        self._table: torch.Tensor | None = None

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self._table is None:
            self._table = boundary_token_table(self.tokenizer, self.chars)
        table = self._table.to(ids.device)
        # ids past the tokenizer (a model vocabulary padded beyond it) never end a step
        in_table = ids < len(table)
        return table[ids.clamp(max=len(table) - 1)] & in_table & mask.bool()


# --------------------------------------------------------------------------------------------------
# Precomputed columns
# --------------------------------------------------------------------------------------------------


def align_token_rewards(values, completion_ids: Sequence[int], *, eos_token_id: int | None, column: str,
                        row: int) -> list[float]:
    """Check one row's precomputed token rewards against TRL's completion ids; return them aligned.

    The rewards must give one float per completion token as TRL tokenises the completion (prompt
    and completion are tokenised jointly and split where they diverge from the prompt; for plain
    text TRL appends EOS). Accepted lengths:

    - ``len(completion_ids)``: used as is;
    - ``len(completion_ids) - 1`` when the last completion token is EOS (rewards computed on the
      text before TRL appended EOS): EOS gets **the reward of the token before it**, so it joins the
      last segment whatever the baseline (an empty list for an EOS-only completion gives ``[0.0]``).

    Raises:
        ValueError: naming ``column`` and ``row`` on any other length, a non-numeric entry, NaN or inf.
    """
    if values is None:
        raise ValueError(f"`{column}` is missing in row {row} (None); every row needs its token rewards")
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"`{column}` in row {row} must be a list of floats, got {type(values).__name__}")
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"`{column}` in row {row} must contain only numbers") from None
    bad = [t for t, v in enumerate(floats) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"`{column}` in row {row} has a NaN or inf at token {bad[0]}")
    n = len(completion_ids)
    if len(floats) == n:
        return floats
    ends_with_eos = n > 0 and eos_token_id is not None and completion_ids[-1] == eos_token_id
    if ends_with_eos and len(floats) == n - 1:
        return floats + [floats[-1] if floats else 0.0]
    expected = f"{n}" + (f" (or {n - 1}, without the EOS TRL appended)" if ends_with_eos else "")
    raise ValueError(
        f"`{column}` in row {row} has {len(floats)} values but TRL tokenised that completion into {n} tokens; "
        f"expected {expected}: one float per completion token"
    )


# --------------------------------------------------------------------------------------------------
# Model-based sources
# --------------------------------------------------------------------------------------------------


def check_same_tokenizer(source_tokenizer, policy_tokenizer, name: str) -> None:
    """Raise ``ValueError`` unless both tokenizers map the same strings to the same ids.

    Token rewards are indexed by the policy's token ids; a source with another vocabulary would
    score other tokens.
    """
    if source_tokenizer is None:
        raise ValueError(
            f"`{name}` carries no tokenizer, so it cannot be checked against the policy's; token rewards need the "
            "policy's exact tokenizer"
        )
    a, b = source_tokenizer.get_vocab(), policy_tokenizer.get_vocab()
    if a != b:
        differ = len(set(a.items()) ^ set(b.items()))
        raise ValueError(
            f"tokenizer mismatch: `{name}` has a vocabulary of {len(a)} tokens and the policy {len(b)} "
            f"({differ} (token, id) entries differ). Token rewards are per policy token id: use a reward source "
            "trained with the policy's tokenizer"
        )


def _cache_key(*parts) -> str:
    """A key that changes when a model on disk changes (paths plus file mtimes); random for in-memory models."""
    out = []
    for part in parts:
        if isinstance(part, (str, os.PathLike)) and os.path.isdir(part):
            stamps = sorted((f, os.stat(os.path.join(part, f)).st_mtime_ns) for f in os.listdir(part))
            out.append((os.path.abspath(part), stamps))
        elif isinstance(part, (str, int, float, bool, type(None))):
            out.append(part)
        else:
            return uuid.uuid4().hex
    return repr(out)


class ImplicitTokenRewards:
    """The DPO implicit reward ``beta * (log pi(y_t|.) - log pi_ref(y_t|.))`` per completion token.

    Args:
        policy, ref_model: causal LMs or paths to them (a trained DPO policy and its reference).
        beta: the implicit-reward scale, ``> 0``.
        policy_tokenizer: the *trained* policy's tokenizer; when the pair's directory ships a
            tokenizer it must match (``ValueError`` otherwise), and both models' vocabularies must
            cover it.
        batch_size: rows per forward pass.
        device: where to run the two models (default: where they are, CPU for paths).
    """

    def __init__(self, policy, ref_model, *, beta: float = 0.1, policy_tokenizer=None, batch_size: int = 8,
                 device=None):
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
            raise ValueError(f"`implicit_beta` must be a positive number, got {beta!r}")
        self._key = _cache_key("implicit", *(m if isinstance(m, (str, os.PathLike)) else object()
                                             for m in (policy, ref_model)), float(beta))
        from segrl.rewards.implicit import _check_vocab, _load

        for name, model in (("implicit_policy", policy), ("implicit_ref", ref_model)):
            if isinstance(model, (str, os.PathLike)) and policy_tokenizer is not None:
                tok = _tokenizer_at(model)
                if tok is not None:
                    check_same_tokenizer(tok, policy_tokenizer, name)
        self.policy = _load(policy, "implicit_policy")
        self.ref_model = _load(ref_model, "implicit_ref")
        if device is not None:
            self.policy.to(device)
            self.ref_model.to(device)
        if policy_tokenizer is not None:
            _check_vocab(policy_tokenizer, implicit_policy=self.policy, implicit_ref=self.ref_model)
        self.beta, self.batch_size = float(beta), batch_size

    def cache_key(self) -> str:
        return self._key

    def __call__(self, prompt_ids, completion_ids) -> list[list[float]]:
        from segrl.rewards.implicit import _token_stats

        enc = _encode_ids(prompt_ids, completion_ids, pad_id=0)
        lp_pi, _ = _token_stats(self.policy, enc, batch_size=self.batch_size, logprobs=True, entropy=False)
        lp_ref, _ = _token_stats(self.ref_model, enc, batch_size=self.batch_size, logprobs=True, entropy=False)
        rewards = self.beta * (lp_pi - lp_ref)
        return [rewards[i, : len(c)].tolist() for i, c in enumerate(completion_ids)]


def _tokenizer_at(path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(os.fspath(path))
    except (OSError, ValueError, TypeError):
        return None


def _encode_ids(prompt_ids, completion_ids, *, pad_id: int):
    """``segrl.rewards.implicit``'s encoded-batch tuple built from token ids (TRL's, not re-tokenised)."""
    from segrl.rewards.implicit import encode_id_rows

    return encode_id_rows(prompt_ids, completion_ids, pad_id=pad_id)


def add_token_reward_columns(dataset, source, *, batch_size: int = 64, name: str = "train"):
    """Add ``chosen_token_rewards`` / ``rejected_token_rewards`` to a TRL-tokenised preference dataset.

    ``source(prompt_ids, completion_ids) -> list[list[float]]`` is called on TRL's own
    ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids``, once per ``batch_size`` rows, in this
    process (models are not shipped to ``dataset_num_proc`` workers). The cache fingerprint is
    derived from the source's :meth:`cache_key` (model paths and file times), not from hashing the
    model.
    """
    from datasets import Dataset
    from datasets.fingerprint import Hasher

    def compute(batch):
        return {f"{side}_token_rewards": source(batch["prompt_ids"], batch[f"{side}_ids"])
                for side in ("chosen", "rejected")}

    kwargs = dict(batched=True, batch_size=batch_size)
    if isinstance(dataset, Dataset):
        kwargs["desc"] = f"Computing token rewards for {name} dataset"
        kwargs["new_fingerprint"] = Hasher.hash((dataset._fingerprint, source.cache_key(), "segrl-token-rewards-v1"))
    return dataset.map(compute, **kwargs)
