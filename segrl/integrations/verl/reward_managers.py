"""The verl reward-loop manager ``segrl_dense``: dense segment-level token rewards into ``rm_scores``.

Dense rewards only reach the trainer on verl's **colocated reward-model path**
(``reward.reward_model.enable=True``, ``enable_resource_pool=False``): there
``RewardLoopManager.compute_rm_score`` calls :meth:`SegmentDenseRewardManager.assemble_rm_scores`,
which writes our (bs, response_len) tensor. On the default asynchronous path the agent loop puts
one scalar ``reward_score`` on the last response token, so the manager refuses to start there.
"""

from __future__ import annotations

import asyncio
import inspect

import torch
from verl import DataProto

from segrl.integrations.verl.common import REWARD_MANAGER_NAME, config_get
from segrl.integrations.verl.rewards import _checked_token_rewards, dense_scores_tensor

__all__ = ["SegmentDenseRewardManager"]


def _row_token_ids(data: DataProto, row: int) -> tuple[list[int], list[int]]:
    """Unpadded ``(prompt_ids, response_ids)`` of one row of a verl batch.

    ``attention_mask`` is read as a boolean mask over ``[prompts | responses]``, so both of verl's
    layouts work: left-padded prompts (rollout batches) and right-padded prompts (the colocated
    reward path rebuilds ``[prompts | responses]`` from nested tensors, prompts padded on the right).
    """
    prompts, responses = data.batch["prompts"], data.batch["responses"]
    attention = data.batch["attention_mask"][row].bool()
    prompt_len = prompts.shape[-1]
    prompt_ids = prompts[row][attention[:prompt_len]].tolist()
    response_ids = responses[row][attention[prompt_len:]].tolist()
    return prompt_ids, response_ids



def _check_colocated_path(config) -> None:
    """Refuse configs on which verl 0.9.1 would drop the dense rewards (or never call us)."""
    if config is None or config_get(config, "reward") is None:
        return  # constructed by hand (tests, custom loops): nothing to check
    if not config_get(config, "reward.reward_model.enable", False) or config_get(
        config, "reward.reward_model.enable_resource_pool", False
    ):
        raise ValueError(
            f"reward manager '{REWARD_MANAGER_NAME}' returns dense token rewards, which verl 0.9.1 only keeps on the "
            "colocated reward-model path: set reward.reward_model.enable=True and "
            "reward.reward_model.enable_resource_pool=False (on the asynchronous path the agent loop writes one "
            "scalar on the last token)"
        )
    if not config_get(config, "reward.custom_reward_function.path"):
        raise ValueError(
            f"reward manager '{REWARD_MANAGER_NAME}' needs a token-reward source: set "
            "reward.custom_reward_function.path (e.g. pkg://segrl.integrations.verl) and .name (e.g. "
            "segment_rm_token_rewards); without it verl sends colocated batches to its own RM server instead"
        )


def _load_reward_loop_base():
    from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

    return RewardManagerBase


class SegmentDenseRewardManager(_load_reward_loop_base()):
    """Reward-loop manager that writes dense segment-level token rewards into ``rm_scores``.

    verl turns ``rm_scores`` into ``token_level_scores`` (and, minus the in-reward KL, into
    ``token_level_rewards``). The token rewards come from the configured ``custom_reward_function``,
    called positionally as ``compute_score(prompt_ids, response_ids)`` (verl adds the keyword
    arguments of ``custom_reward_function.reward_kwargs``) — see :class:`TokenRewardSource` and
    :func:`segment_rm_token_rewards` for the segment-RM adapter.

    Args:
        config: verl's trainer config. The colocated reward path is required (checked here).
        tokenizer: the policy tokenizer (unused: the source receives token ids).
        compute_score: the token-reward source built by verl from ``custom_reward_function``.
        token_reward_fn: a source passed directly (overrides ``compute_score``; for custom loops).
    """

    def __init__(self, config, tokenizer, compute_score=None, reward_router_address=None, reward_model_tokenizer=None,
                 token_reward_fn=None, **kwargs):
        super().__init__(config, tokenizer, compute_score)
        if token_reward_fn is None:
            _check_colocated_path(config)
        self.source = token_reward_fn if token_reward_fn is not None else compute_score
        if self.source is None:
            raise ValueError("no token-reward source: pass `token_reward_fn` or configure reward.custom_reward_function")
        self.is_async_source = inspect.iscoroutinefunction(self.source)

    async def run_single(self, data: DataProto) -> dict:
        """Dense token rewards of one sample: ``{"reward_score": [r_0, ..., r_{T-1}], "reward_extra_info": ...}``."""
        data = data[-1:]  # multi-sequence outputs: score the last one, as verl's managers do
        prompt_ids, response_ids = _row_token_ids(data, 0)
        if self.is_async_source:
            raw = await self.source(prompt_ids, response_ids)
        else:
            # An RM forward pass blocks: run it off the event loop like verl's naive manager does (on
            # the loop actually running us, not the one captured at construction).
            raw = await asyncio.get_running_loop().run_in_executor(
                None, lambda: self.source(prompt_ids, response_ids)
            )
        rewards = _checked_token_rewards(raw, len(response_ids), 0)
        extra = {"segrl_token_reward_sum": float(sum(rewards)), "segrl_response_tokens": len(rewards)}
        return {"reward_score": rewards, "reward_extra_info": extra}

    @classmethod
    def assemble_rm_scores(cls, data: DataProto, scores: list) -> torch.Tensor:
        """Per-sample token-reward lists -> ``rm_scores``. Shape: (bs, response_length)."""
        return dense_scores_tensor(data, scores)

