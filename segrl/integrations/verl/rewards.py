"""Token-reward sources for verl: the segrl segment-RM adapter and dense ``rm_scores`` assembly.

- :class:`TokenRewardSource`: what :class:`~segrl.integrations.verl.SegmentDenseRewardManager` calls
  per response (``prompt_ids, response_ids -> (T,) rewards``).
- :class:`SegmentRMTokenRewards` / :func:`segment_rm_token_rewards`: that source for a trained segrl
  segment RM, a thin adapter onto segrl's one segment-RM source :class:`segrl.rewards.SegmentRMRewards`
  (``reward.custom_reward_function.path=pkg://segrl.integrations.verl``,
  ``.name=segment_rm_token_rewards``).
- :func:`dense_scores_tensor`: per-row token rewards -> verl's ``rm_scores`` (bs, response_length).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

if TYPE_CHECKING:
    from verl import DataProto

__all__ = ["SegmentRMTokenRewards", "TokenRewardSource", "dense_scores_tensor", "segment_rm_token_rewards"]


@runtime_checkable
class TokenRewardSource(Protocol):
    """Dense token rewards for one response.

    ``prompt_ids``: the prompt's token ids (no padding). ``response_ids``: the response's token ids
    (no padding, EOS included when generated). Returns one reward per response token: shape (T,)
    with ``T = len(response_ids)``, as a tensor, array or list of floats. Token ``t`` is
    ``response_ids[t]``, the same token whose log-prob verl puts at response position ``t``.
    """

    def __call__(self, prompt_ids: list[int], response_ids: list[int]) -> Any: ...


class SegmentRMTokenRewards:
    """A :class:`TokenRewardSource` backed by a trained segrl segment reward model.

    A thin adapter onto :class:`segrl.rewards.SegmentRMRewards` (docs/method.md#segment-rm: entropy
    segments of the frozen reference, segment rewards in the RM's reward form, location-normalised,
    spread over their tokens), adding lazy loading, a lock and the reward clamp. The RM must share
    the policy's tokenizer: ids are passed through unchanged (out-of-vocabulary ids are an error).

    Args:
        model_path: directory written by ``segrl train-rm`` / ``SegmentRewardModel.save_pretrained``.
        model: an already loaded ``SegmentRewardModel`` (instead of ``model_path``).
        mode: spreading of a segment reward over its tokens: ``"even"`` | ``"end"`` | ``"repeat"``.
        normalize: apply the fitted location normaliser (a missing fit is an error, never identity).
        reward_form: ``"value"`` | ``"delta"`` (docs/method.md#reward-form); ``None``: the RM's, the
            form its normaliser was fitted on (another one with ``normalize`` is an error).
        reference_model: override the reference model stored with the RM (path or module).
        device: where to load the RM (default: CPU; pass ``"cuda"`` if the reward worker owns a GPU).
        batch_size: rows per RM forward pass in :meth:`score_batch`.
        clamp: clamp every token reward to ``[-clamp, clamp]`` (docs/method.md#ppo: 10, before verl
            subtracts the KL penalty); ``None`` disables it.

    The model is loaded on first use and calls are serialised with a lock: verl's reward loop runs
    sources in a thread pool, and one model shared by many threads would only thrash.
    """

    def __init__(self, model_path: str | os.PathLike | None = None, *, model=None, mode: str = "even",
                 normalize: bool = True, reward_form: str | None = None, reference_model=None, device=None,
                 batch_size: int = 8, clamp: float | None = 10.0):
        from segrl.rm.scoring import parse_reward_form

        if (model_path is None) == (model is None):
            raise ValueError("pass exactly one of `model_path` and `model`")
        if mode not in ("even", "end", "repeat"):
            raise ValueError(f"`mode` must be one of ('even', 'end', 'repeat'), got {mode!r}")
        if int(batch_size) < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
        if reward_form is not None:
            parse_reward_form(reward_form)
        self.model_path = None if model_path is None else os.fspath(model_path)
        self.mode, self.normalize, self.batch_size = mode, bool(normalize), int(batch_size)
        self.reward_form = reward_form
        if clamp is not None and not (isinstance(clamp, (int, float)) and clamp >= 0):
            raise ValueError(f"`clamp` must be a number >= 0 or None, got {clamp!r}")
        self.reference_model, self.device = reference_model, device
        self.clamp = None if clamp is None else float(clamp)
        self._rm = model
        self._source = None
        self._lock = threading.Lock()

    @property
    def source(self):
        """The :class:`segrl.rewards.SegmentRMRewards` doing the scoring (built lazily, once)."""
        if self._source is None:
            with self._lock:
                if self._source is None:
                    # Imported here: segrl.rm pulls in transformers, which the estimator/loss do not need.
                    from segrl.rewards.segment_rm import SegmentRMRewards

                    model = self._rm if self._rm is not None else self.model_path
                    self._source = SegmentRMRewards(
                        model, mode=self.mode, normalize=self.normalize, reward_form=self.reward_form,
                        batch_size=self.batch_size, device=self.device, reference_model=self.reference_model,
                        name="model_path",
                    )
        return self._source

    @property
    def rm(self):
        """The underlying ``segrl.rm.SegmentRewardModel`` (loaded lazily, once)."""
        return self.source.model

    def __call__(self, prompt_ids, response_ids) -> torch.Tensor:
        """Token rewards of one response. Shape: (T,) fp32 on CPU, ``T = len(response_ids)``."""
        return self.score_batch([prompt_ids], [response_ids])[0]

    def score_batch(self, prompt_ids, response_ids) -> list[torch.Tensor]:
        """Token rewards of several responses in batched RM passes; one (T_b,) tensor per row."""
        prompts = [[int(t) for t in p] for p in prompt_ids]
        responses = [[int(t) for t in r] for r in response_ids]
        source = self.source
        with self._lock:
            rewards, _ = source.token_rewards(prompts, responses)  # checks one reward per token of every row
        if self.clamp is not None:
            rewards = rewards.clamp(-self.clamp, self.clamp)
        return [rewards[b, : len(r)].float().cpu() for b, r in enumerate(responses)]


_SOURCES: dict[tuple, SegmentRMTokenRewards] = {}
_SOURCES_LOCK = threading.Lock()


def segment_rm_token_rewards(prompt_ids, response_ids, *, model_path: str, mode: str = "even",
                             normalize: bool = True, reward_form: str | None = None, reference_model: str | None = None,
                             device: str | None = None, batch_size: int = 8, clamp: float | None = 10.0) -> torch.Tensor:
    """verl ``custom_reward_function`` entry point: dense token rewards from a segment RM.

    Use with ``reward.custom_reward_function.path=pkg://segrl.integrations.verl``,
    ``reward.custom_reward_function.name=segment_rm_token_rewards`` and
    ``+reward.custom_reward_function.reward_kwargs.model_path=/path/to/segment_rm`` (other keyword
    arguments likewise). One :class:`SegmentRMTokenRewards` is cached per process and setting, so
    each reward-loop worker loads the RM once.

    Returns:
        Tensor of shape (T,), ``T = len(response_ids)``.
    """
    key = (os.fspath(model_path), mode, bool(normalize), reward_form, reference_model, device, int(batch_size), clamp)
    with _SOURCES_LOCK:
        source = _SOURCES.get(key)
        if source is None:
            source = _SOURCES[key] = SegmentRMTokenRewards(model_path, mode=mode, normalize=normalize,
                                                           reward_form=reward_form, reference_model=reference_model,
                                                           device=device, batch_size=batch_size, clamp=clamp)
    return source(prompt_ids, response_ids)


def _checked_token_rewards(value, n_tokens: int, row: int) -> list[float]:
    """A source's output as ``n_tokens`` finite floats, or ``ValueError`` naming the row."""
    if isinstance(value, torch.Tensor):
        value = value.detach().float().cpu().reshape(-1).tolist()
    elif isinstance(value, np.ndarray):
        value = value.astype(np.float64).reshape(-1).tolist()
    elif isinstance(value, (int, float)) or not isinstance(value, Sequence):
        raise ValueError(
            f"token-reward source returned {type(value).__name__} for row {row}; it must return one reward per "
            f"response token (a sequence of {n_tokens} floats), not a scalar"
        )
    rewards = [float(v) for v in value]
    if len(rewards) != n_tokens:
        raise ValueError(f"token-reward source returned {len(rewards)} rewards for row {row}, which has {n_tokens} tokens")
    if not all(math.isfinite(v) for v in rewards):
        raise ValueError(f"token-reward source returned NaN or inf for row {row}")
    return rewards


def dense_scores_tensor(data: DataProto, scores: Sequence) -> torch.Tensor:
    """Per-row token rewards -> verl's ``rm_scores``: shape (bs, response_length), fp32, 0 at padding.

    ``scores[b]`` is a sequence with one reward per valid response token of row ``b`` (as
    :meth:`SegmentDenseRewardManager.run_single` returns). A plain number is accepted too and put on
    the last valid token, exactly like verl's scalar default, so mixing managers stays possible.
    """
    prompt_len = data.batch["prompts"].shape[-1]
    response_mask = data.batch["attention_mask"][:, prompt_len:].bool()
    out = torch.zeros(data.batch["responses"].shape, dtype=torch.float32)
    if len(scores) != out.shape[0]:
        raise ValueError(f"got {len(scores)} scores for a batch of {out.shape[0]} rows")
    lengths = response_mask.sum(dim=1).tolist()
    for b, (score, n) in enumerate(zip(scores, lengths)):
        if isinstance(score, (int, float)) and not isinstance(score, bool):
            if n > 0:
                out[b, n - 1] = float(score)
            continue
        rewards = _checked_token_rewards(score, n, b)
        # Valid response tokens are contiguous from position 0 (responses are right-padded).
        out[b, :n] = torch.tensor(rewards, dtype=torch.float32)
    return out

