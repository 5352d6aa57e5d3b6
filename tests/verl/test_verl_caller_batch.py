"""The one stack walk of the plugin: how `segrl_asr_gae` finds the critic values verl 0.9.1 does not pass it."""

from __future__ import annotations

import pytest
import torch
from verl import DataProto
from verl_helpers import right_padded

from segrl.integrations import verl as plugin
from segrl.integrations.verl.caller_batch import caller_batch

REWARDS = [[1.0, -1.0, 2.0], [-2.0, 1.0]]
VALUES = [[0.5, 0.2, -0.1], [0.3, 0.1]]


def _data() -> DataProto:
    r, mask = right_padded(REWARDS)
    v, _ = right_padded(VALUES)
    return DataProto.from_dict(tensors={"token_level_rewards": r, "values": v, "response_mask": mask})


# Stand-ins for verl's `compute_advantage(data, ...)` (a local named `data`) and a registered
# estimator that receives only `token_level_rewards` and calls `caller_batch` itself.
def _estimator(token_level_rewards, **kwargs):
    return caller_batch(token_level_rewards, **kwargs)


def _compute_advantage(data, **kwargs):
    return _estimator(data.batch["token_level_rewards"], **kwargs)


def test_finds_the_batch_in_the_callers_frame():
    data = _data()
    assert caller_batch.__module__ == "segrl.integrations.verl.caller_batch"
    assert _compute_advantage(data) is data.batch


def test_a_data_whose_rewards_are_another_tensor_is_never_used():
    # equal values, different storage: an unrelated `data` further up must not be picked
    data = _data()
    other = _data()

    def outer(data):  # holds `data`, but hands the estimator another batch's rewards
        return _estimator(other.batch["token_level_rewards"].clone())

    assert outer(data) is None


def test_no_data_in_the_caller_frames_gives_none():
    rewards = _data().batch["token_level_rewards"]
    assert _estimator(rewards) is None
    batch = _data()  # a `data`-like local under another name is not looked at
    assert _estimator(batch.batch["token_level_rewards"]) is None


def test_search_depth_is_bounded():
    data = _data()

    def outer_holding(data, depth, max_depth):
        # `data` lives here; the estimator is called `depth` frames further down, with its rewards
        return _deeper(depth, data.batch["token_level_rewards"], max_depth)

    def _deeper(depth, rewards, max_depth):
        if depth == 0:
            return _estimator(rewards, max_depth=max_depth)
        return _deeper(depth - 1, rewards, max_depth)

    # frames above the estimator: _deeper x (depth + 1), then outer_holding
    assert outer_holding(data, 2, max_depth=4) is data.batch
    assert outer_holding(data, 2, max_depth=3) is None


def test_the_estimator_reads_values_from_the_caller_and_errors_clearly_without_them():
    data = _data()
    r, mask = right_padded(REWARDS)
    v, _ = right_padded(VALUES)
    conf = {"gamma": 1.0, "lam": 0.95}

    def compute_advantage(data):  # verl's call shape: only rewards, mask, config
        return plugin.compute_segrl_asr_gae_advantage(token_level_rewards=data.batch["token_level_rewards"],
                                                      response_mask=data.batch["response_mask"], config=conf)

    found = compute_advantage(data)
    given = plugin.compute_segrl_asr_gae_advantage(r, mask, config=conf, values=v)
    for a, b in zip(found, given):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    # values are really read from the batch: other values give other returns
    data.batch["values"] = data.batch["values"] + 1.0
    assert not torch.allclose(compute_advantage(data)[1], given[1])

    with pytest.raises(ValueError, match=r"needs critic values: set critic\.enable=True"):
        plugin.compute_segrl_asr_gae_advantage(r, mask, config=conf)  # no caller batch at all
    data.batch.pop("values")
    with pytest.raises(ValueError, match=r"needs critic values: set critic\.enable=True"):
        compute_advantage(data)  # batch found, but the critic is off
