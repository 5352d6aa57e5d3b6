"""The dense reward managers and the segment-RM token-reward source, on verl's data structures."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch
from omegaconf import OmegaConf
from verl_helpers import rollout_batch

from segrl.integrations import verl as plugin

PROMPTS = [[5, 6, 7], [8], [9, 10]]
RESPONSES = [[11, 12, 13, 2], [14, 2], [15, 16, 17, 18, 2]]


class RecordingSource:
    """Stand-in token-reward source: reward of token t = (id % 5 - 2) / 2; records every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompt_ids, response_ids):
        self.calls.append((list(prompt_ids), list(response_ids)))
        return [(t % 5 - 2) / 2 for t in response_ids]


def _expected_scores(responses=RESPONSES):
    width = max(map(len, responses))
    out = torch.zeros(len(responses), width)
    for b, r in enumerate(responses):
        out[b, : len(r)] = torch.tensor([(t % 5 - 2) / 2 for t in r])
    return out


def _verl_config(**reward):
    conf = {
        "reward": {
            "reward_manager": {"source": "register", "name": "segrl_dense"},
            "reward_model": {"enable": True, "enable_resource_pool": False},
            "custom_reward_function": {"path": None, "name": "compute_score", "reward_kwargs": {}},
        }
    }
    return OmegaConf.merge(OmegaConf.create(conf), OmegaConf.create({"reward": reward}))


def _run_all(manager, data):
    async def run():
        return await asyncio.gather(*(manager.run_single(data[i : i + 1]) for i in range(len(data))))

    return asyncio.run(run())


@pytest.mark.parametrize("prompt_padding", ["left", "right"])
def test_run_single_and_assemble_write_dense_rm_scores(prompt_padding):
    from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls

    cls = get_reward_manager_cls("segrl_dense")
    assert cls is plugin.SegmentDenseRewardManager
    source = RecordingSource()
    manager = cls(config=None, tokenizer=None, compute_score=None, token_reward_fn=source)
    data = rollout_batch(PROMPTS, RESPONSES, prompt_padding=prompt_padding)
    outputs = _run_all(manager, data)
    # the source saw exactly the unpadded ids of each row
    assert sorted(source.calls) == sorted(zip(PROMPTS, RESPONSES))
    assert [len(o["reward_score"]) for o in outputs] == [len(r) for r in RESPONSES]
    scores = cls.assemble_rm_scores(data, [o["reward_score"] for o in outputs])
    assert scores.shape == data.batch["responses"].shape
    torch.testing.assert_close(scores, _expected_scores(), atol=0, rtol=0)  # 0 at padding too
    assert outputs[0]["reward_extra_info"]["segrl_response_tokens"] == 4


def test_through_verl_load_reward_manager_with_a_custom_reward_function(tmp_path):
    from verl.trainer.ppo.reward import load_reward_manager

    source_file = tmp_path / "toy_source.py"
    source_file.write_text(
        "def toy_rewards(prompt_ids, response_ids, scale=1.0):\n"
        "    return [scale * (t % 5 - 2) / 2 for t in response_ids]\n"
    )
    config = _verl_config(custom_reward_function={"path": str(source_file), "name": "toy_rewards",
                                                  "reward_kwargs": {"scale": 2.0}})
    manager = load_reward_manager(config, tokenizer=None)
    assert isinstance(manager, plugin.SegmentDenseRewardManager)
    data = rollout_batch(PROMPTS, RESPONSES)
    outputs = _run_all(manager, data)
    scores = manager.assemble_rm_scores(data, [o["reward_score"] for o in outputs])
    torch.testing.assert_close(scores, 2.0 * _expected_scores(), atol=0, rtol=0)  # reward_kwargs reached it


def test_refuses_the_paths_where_dense_rewards_would_be_lost():
    cls = plugin.SegmentDenseRewardManager
    with pytest.raises(ValueError, match="colocated"):
        cls(_verl_config(reward_model={"enable": False}), None, compute_score=RecordingSource())
    with pytest.raises(ValueError, match="colocated"):
        cls(_verl_config(reward_model={"enable": True, "enable_resource_pool": True}), None,
            compute_score=RecordingSource())
    with pytest.raises(ValueError, match="custom_reward_function"):
        cls(_verl_config(), None, compute_score=RecordingSource())


@pytest.mark.parametrize(
    "bad, match",
    [(lambda p, r: 1.0, "scalar"), (lambda p, r: [0.0] * (len(r) + 1), "rewards for row"),
     (lambda p, r: [math.nan] * len(r), "NaN")],
)
def test_bad_sources_fail_loudly(bad, match):
    manager = plugin.SegmentDenseRewardManager(None, None, token_reward_fn=bad)
    with pytest.raises(ValueError, match=match):
        _run_all(manager, rollout_batch(PROMPTS, RESPONSES))


def test_scalar_scores_keep_verl_semantics_last_token():
    data = rollout_batch(PROMPTS, RESPONSES)
    scores = plugin.dense_scores_tensor(data, [1.0, 2.0, 3.0])
    expected = torch.zeros_like(scores)
    expected[0, 3], expected[1, 1], expected[2, 4] = 1.0, 2.0, 3.0
    assert torch.equal(scores, expected)


# ----------------------------------------------------------------------------- real segment RM


def test_segment_rm_adapter_matches_score_token_ids(segment_rm_dir):
    from segrl.rm import SegmentRewardModel

    path, tok = segment_rm_dir
    prompts = [tok.encode("Tell me about the sea. "), tok.encode("2 + 3 = ")]
    responses = [tok.encode("The sea is calm and blue, thank you.") + [tok.eos_token_id], tok.encode("5") + [tok.eos_token_id]]
    direct, mask = SegmentRewardModel.from_pretrained(path).score_token_ids(prompts, responses, mode="even")

    source = plugin.SegmentRMTokenRewards(path)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        got = source(p, r)
        assert got.shape == (len(r),)
        torch.testing.assert_close(got, direct[b, : len(r)], atol=1e-5, rtol=0)
    assert torch.count_nonzero(direct[0]).item() > 1  # dense: several tokens carry reward
    batched = source.score_batch(prompts, responses)
    torch.testing.assert_close(batched[0], direct[0, : len(responses[0])], atol=1e-5, rtol=0)

    # the custom_reward_function entry point, and through the reward manager on a verl batch
    fn_out = plugin.segment_rm_token_rewards(prompts[0], responses[0], model_path=str(path))
    torch.testing.assert_close(fn_out, direct[0, : len(responses[0])], atol=1e-5, rtol=0)
    manager = plugin.SegmentDenseRewardManager(None, None, token_reward_fn=source)
    data = rollout_batch(prompts, responses, pad_id=tok.pad_token_id)
    outputs = _run_all(manager, data)
    scores = manager.assemble_rm_scores(data, [o["reward_score"] for o in outputs])
    torch.testing.assert_close(scores, direct[:, : scores.shape[1]] * mask[:, : scores.shape[1]], atol=1e-5, rtol=0)


def test_segment_rm_adapter_clamps_token_rewards(segment_rm_dir):
    path, tok = segment_rm_dir
    p, r = tok.encode("Tell me about the sea. "), tok.encode("The sea is calm and blue.") + [tok.eos_token_id]
    free = plugin.SegmentRMTokenRewards(path, clamp=None)(p, r)
    bound = float(free.abs().max()) / 2
    assert bound > 0
    clamped = plugin.SegmentRMTokenRewards(path, clamp=bound)(p, r)
    torch.testing.assert_close(clamped, free.clamp(-bound, bound))


def test_segment_rm_adapter_argument_errors():
    with pytest.raises(ValueError, match="exactly one"):
        plugin.SegmentRMTokenRewards()
    with pytest.raises(ValueError, match="mode"):
        plugin.SegmentRMTokenRewards("x", mode="middle")
    with pytest.raises(ValueError, match="clamp"):
        plugin.SegmentRMTokenRewards("x", clamp=-1.0)


def test_segment_rm_adapter_honours_reward_form(segment_rm_dir):
    from segrl.rm import SegmentRewardModel

    path, tok = segment_rm_dir
    p, r = tok.encode("Tell me about the sea. "), tok.encode("The sea is calm and blue.") + [tok.eos_token_id]
    rm = SegmentRewardModel.from_pretrained(path)
    delta, _ = rm.score_token_ids([p], [r], reward_form="delta", normalize=False)
    value, _ = rm.score_token_ids([p], [r], reward_form="value", normalize=False)
    assert not torch.allclose(delta, value)
    got = plugin.SegmentRMTokenRewards(path, reward_form="delta", normalize=False, clamp=None)(p, r)
    torch.testing.assert_close(got, delta[0, : len(r)], atol=1e-5, rtol=0)
    fn_out = plugin.segment_rm_token_rewards(p, r, model_path=str(path), reward_form="delta", normalize=False,
                                             clamp=None)
    torch.testing.assert_close(fn_out, delta[0, : len(r)], atol=1e-5, rtol=0)
    # the RM's normaliser was fitted on "value": normalised delta rewards are a clear error
    with pytest.raises(ValueError, match="fitted on reward_form='value'"):
        plugin.SegmentRMTokenRewards(path, reward_form="delta")(p, r)
    with pytest.raises(ValueError, match="reward_form"):
        plugin.SegmentRMTokenRewards(path, reward_form="diff")
