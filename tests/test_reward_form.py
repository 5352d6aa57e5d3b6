"""reward_form = "value" | "delta" (docs/method.md#reward-form): hand-computed cases on the pure
function, the segment RM's scoring methods, the normaliser stored with its form, and fit-norm."""

from __future__ import annotations

import json
import math

import pytest
import torch
from rm_fixtures import THRESHOLD, rm_env, seq_cls, tiny_rows  # noqa: F401

from segrl.ops import LocationNormalizerCoef
from segrl.rm.scoring import form_segment_rewards, segment_sequence_scores, segment_token_rewards

# --------------------------------------------------------------------------------------------------
# Pure tensors, by hand
# --------------------------------------------------------------------------------------------------

# Three responses of a dense RM with c = 1 (right-padded to T = 5):
#   row 0: 5 tokens, entropies [0, .5, 3, .1, 4] -> segments {0, 1}, {2, 3}, EOS (4) in none;
#          values [1, 3, 2, 5, 9]: segment ends read 3 (t=1) and 5 (t=3); last prompt value 0.5.
#   row 1: 3 tokens, one segment {0, 1} (K = 1), end value 7; last prompt value 2.
#   row 2: EOS only (K = 0): no segment, score = the EOS value 6.
VALUES = torch.tensor([[1.0, 3.0, 2.0, 5.0, 9.0], [4.0, 7.0, 100.0, 0.0, 0.0], [6.0, 0.0, 0.0, 0.0, 0.0]])
ENTROPY = torch.tensor([[0.0, 0.5, 3.0, 0.1, 4.0], [0.0, 0.2, 0.0, 0.0, 0.0], [0.0] * 5])
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
START = torch.tensor([0.5, 2.0, -3.0])


def _seg(threshold=1.0, values=VALUES, entropy=ENTROPY, mask=MASK):
    return segment_sequence_scores(values, None if math.isinf(threshold) else entropy, mask, threshold)


def test_delta_by_hand_k2_k1_k0():
    seg = _seg()
    delta = form_segment_rewards(seg.seg_rewards, seg.seg_valid, START, "delta")
    # row 0: 3 - 0.5 = 2.5, 5 - 3 = 2; row 1 (K = 1): 7 - 2 = 5; row 2 (K = 0): nothing.
    assert delta.tolist() == [[2.5, 2.0], [5.0, 0.0], [0.0, 0.0]]
    assert form_segment_rewards(seg.seg_rewards, seg.seg_valid, START, "value").tolist() == [[3, 5], [7, 0], [0, 0]]
    out = segment_token_rewards(seg, MASK, start_values=START, reward_form="delta", mode="even")
    assert out.token_rewards.tolist() == [[1.25, 1.25, 1.0, 1.0, 0.0], [2.5, 2.5, 0.0, 0.0, 0.0], [0.0] * 5]
    # The training score is the mean raw segment value whatever the form (K = 0: the EOS value).
    assert out.scores.tolist() == [4.0, 7.0, 6.0]
    assert out.num_segments.tolist() == [2, 1, 0] and out.reward_form == "delta"
    value = segment_token_rewards(seg, MASK, start_values=START, reward_form="value", mode="end")
    assert value.token_rewards.tolist() == [[0, 3, 0, 5, 0], [0, 7, 0, 0, 0], [0] * 5]


def test_delta_normalised_by_hand():
    # mu(p) = 1, sigma(p) = 2 everywhere: r_hat = (d - 1) / 2, then spread evenly.
    coef = LocationNormalizerCoef(a_mu=0.0, b_mu=1.0, a_sigma=0.0, b_sigma=2.0)
    out = segment_token_rewards(_seg(), MASK, start_values=START, reward_form="delta", normalizer=coef)
    expected = [[0.375, 0.375, 0.25, 0.25, 0.0], [1.0, 1.0, 0.0, 0.0, 0.0], [0.0] * 5]
    torch.testing.assert_close(out.token_rewards, torch.tensor(expected))
    assert out.seg_rewards.tolist() == [[2.5, 2.0], [5.0, 0.0], [0.0, 0.0]]  # stored before normalisation


def test_delta_bandit_includes_eos():
    # c = inf: one segment of every token, EOS included, read at EOS: 9 - 0.5, 7 ... row 1 ends at t=2 (100).
    out = segment_token_rewards(_seg(math.inf), MASK, start_values=START, reward_form="delta", mode="even")
    assert out.seg_rewards[:, 0].tolist() == [8.5, 98.0, 9.0]
    torch.testing.assert_close(out.token_rewards[0], torch.full((5,), 8.5 / 5))
    assert out.token_rewards[2].tolist() == [9.0, 0, 0, 0, 0]


def test_delta_telescopes_to_last_minus_start():
    g = torch.Generator().manual_seed(0)
    values, entropy = torch.randn(4, 9, generator=g), torch.rand(4, 9, generator=g) * 3
    mask = torch.arange(9)[None, :] < torch.tensor([9, 6, 2, 4])[:, None]
    start = torch.randn(4, generator=g)
    seg = segment_sequence_scores(values, entropy, mask, 1.5)
    delta = form_segment_rewards(seg.seg_rewards, seg.seg_valid, start, "delta")
    last = seg.seg_rewards.gather(1, (seg.num_segments - 1).clamp(min=0)[:, None]).squeeze(1)
    torch.testing.assert_close(delta.sum(1), torch.where(seg.num_segments > 0, last - start, torch.zeros(4)))


def test_reward_form_errors():
    seg = _seg()
    with pytest.raises(ValueError, match="`reward_form` must be one of"):
        form_segment_rewards(seg.seg_rewards, seg.seg_valid, START, "diff")
    with pytest.raises(ValueError, match="start_values"):
        form_segment_rewards(seg.seg_rewards, seg.seg_valid, None, "delta")
    with pytest.raises(ValueError, match="start_values"):
        form_segment_rewards(seg.seg_rewards, seg.seg_valid, START[:2], "delta")


# --------------------------------------------------------------------------------------------------
# The segment RM
# --------------------------------------------------------------------------------------------------

COEF = LocationNormalizerCoef(a_mu=0.5, b_mu=0.2, a_sigma=0.1, b_sigma=1.5)


@pytest.fixture
def make_rm(rm_env, seq_cls):
    from segrl.rm import SegmentRewardModel

    def make(threshold=THRESHOLD, normalizer=None, reward_form="value"):
        return SegmentRewardModel(seq_cls, rm_env.tokenizer, threshold=threshold, reference_model=rm_env.ref_dir,
                                  normalizer=normalizer, reward_form=reward_form)

    return make


def _ids(rm, n=4):
    rows = tiny_rows(n)
    return rm.tokenize([r["prompt"] for r in rows], [r["chosen"] for r in rows])


def _per_position(rm, prompt, response):
    from segrl.rm.model import per_position_values

    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        values, _ = per_position_values(rm.model, ids, torch.ones_like(ids))
    return values[0]


def test_rm_delta_matches_a_direct_forward(make_rm):
    rm = make_rm()
    prompt_ids, response_ids = _ids(rm)
    out = rm.score(prompt_ids, response_ids, reward_form="delta", normalize=False, mode="end")
    for b, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        v = _per_position(rm, p, r)
        ids = out.segment_ids[b]
        ends = [t for t in range(len(r) - 1) if ids[t] >= 0 and ids[t + 1] != ids[t]]
        assert len(ends) == int(out.num_segments[b]) >= 2
        previous = [len(p) - 1] + [len(p) + t for t in ends[:-1]]
        expected = torch.zeros(len(r))
        for t, prev in zip(ends, previous):
            expected[t] = v[len(p) + t] - v[prev]
        torch.testing.assert_close(out.token_rewards[b, : len(r)], expected, atol=1e-5, rtol=1e-5)
    # the training score does not depend on the form
    torch.testing.assert_close(out.scores, rm.sequence_scores(prompt_ids, response_ids))


def test_rm_delta_empty_prompt_starts_from_zero(make_rm):
    rm = make_rm(math.inf)
    response = _ids(rm, 1)[1][0]
    out = rm.score([[]], [response], reward_form="delta", normalize=False, mode="end")
    assert out.token_rewards[0, len(response) - 1] == pytest.approx(float(_per_position(rm, [], response)[-1]))


def test_rm_default_form_and_normaliser_form_mismatch(make_rm):
    prompt_ids, response_ids = _ids(make_rm())
    value_rm = make_rm(normalizer=COEF)
    with pytest.raises(ValueError, match=r"fitted on reward_form='value'.*fit-norm --reward_form delta"):
        value_rm.score_token_ids(prompt_ids, response_ids, reward_form="delta")
    raw_delta, _ = value_rm.score_token_ids(prompt_ids, response_ids, reward_form="delta", normalize=False)
    delta_rm = make_rm(normalizer=COEF, reward_form="delta")
    normed, _ = delta_rm.score_token_ids(prompt_ids, response_ids)  # default: the RM's form
    seg = delta_rm.segment_token_ids(prompt_ids, response_ids)
    from segrl.ops import spread_segment_rewards

    expected = spread_segment_rewards(delta_rm.normalized_segment_rewards(seg), seg.segment_ids)
    torch.testing.assert_close(normed, expected)
    assert not torch.allclose(normed, value_rm.score_token_ids(prompt_ids, response_ids)[0])
    assert not torch.allclose(raw_delta, value_rm.score_token_ids(prompt_ids, response_ids, normalize=False)[0])
    with pytest.raises(ValueError, match="fitted on reward_form='delta'"):
        delta_rm.score_tokens(["1+1="], ["2"], reward_form="value")
    with pytest.raises(ValueError, match="reward_form"):
        make_rm(reward_form="diff")


def test_reward_form_saved_with_the_normaliser(make_rm, tmp_path):
    from segrl.rm import SegmentRewardModel

    rm = make_rm(normalizer=COEF, reward_form="delta")
    rm.save_pretrained(tmp_path / "rm")
    config = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert config["segment_rm"]["reward_form"] == "delta"
    assert SegmentRewardModel.from_pretrained(tmp_path / "rm").reward_form == "delta"
    SegmentRewardModel.write_normalizer(tmp_path / "rm", COEF, "value")
    assert SegmentRewardModel.from_pretrained(tmp_path / "rm").reward_form == "value"
    # An RM saved before reward forms existed was fitted on values.
    del config["segment_rm"]["reward_form"]
    (tmp_path / "rm" / "config.json").write_text(json.dumps(config))
    assert SegmentRewardModel.from_pretrained(tmp_path / "rm").reward_form == "value"
    config["segment_rm"]["reward_form"] = "diff"
    (tmp_path / "rm" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="segment_rm.reward_form"):
        SegmentRewardModel.from_pretrained(tmp_path / "rm")


def test_fit_normalizer_on_the_form_in_use(make_rm):
    from datasets import Dataset

    from segrl.rm import fit_normalizer
    from segrl.rm.normalizer_fit import collect_segment_rewards

    ds = Dataset.from_list(tiny_rows(8))
    rm = make_rm()
    locs_v, rewards_v, _ = collect_segment_rewards(rm, ds, progress=False, reward_form="value")
    locs_d, rewards_d, _ = collect_segment_rewards(rm, ds, progress=False, reward_form="delta")
    assert locs_v.tolist() == locs_d.tolist()
    # The delta of a non-first segment is its value minus the previous segment's value.
    later = locs_v > locs_v.min()
    first = [i for i in range(len(locs_v)) if i == 0 or locs_v[i] <= locs_v[i - 1]]
    for i in range(len(locs_v)):
        if i not in first:
            assert rewards_d[i] == pytest.approx(rewards_v[i] - rewards_v[i - 1], abs=1e-5)
    assert later.any()
    fit = fit_normalizer(rm, ds, progress=False, reward_form="delta")
    assert fit.reward_form == "delta" and rm.reward_form == "delta" and rm.normalizer == fit.coef
    rm.score_token_ids(*_ids(rm, 2))  # scores with the fitted form
    with pytest.raises(ValueError, match="fitted on reward_form='delta'"):
        rm.score_token_ids(*_ids(rm, 2), reward_form="value")


def test_fit_norm_cli_reward_form(make_rm, tmp_path):
    from segrl.commands.fit_norm import parse_config, run
    from segrl.rm import SegmentRewardModel

    make_rm().save_pretrained(tmp_path / "rm")
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in tiny_rows(6)))
    cfg = parse_config(["--rm_path", str(tmp_path / "rm"), "--dataset", str(data), "--reward_form", "delta",
                        "--progress", "false", "--device", "cpu"])
    summary = run(cfg)
    assert summary["reward_form"] == "delta"
    assert SegmentRewardModel.from_pretrained(tmp_path / "rm").reward_form == "delta"
    with pytest.raises(SystemExit):  # argparse choices
        parse_config(["--rm_path", str(tmp_path / "rm"), "--dataset", str(data), "--reward_form", "diff"])
    cfg.reward_form = "diff"  # e.g. from Python
    with pytest.raises(ValueError, match="reward_form"):
        run(cfg)


def test_pipeline_rm_settings_carry_the_form():
    """`segrl experiment --rm_reward_form delta` reaches the RM stage's settings (and its cache key)."""
    from segrl.pipeline.settings import RMSettings, settings_key

    assert RMSettings().reward_form == "value"
    assert settings_key(RMSettings()) != settings_key(RMSettings(reward_form="delta"))
    with pytest.raises(ValueError, match="rm_reward_form"):
        RMSettings(reward_form="diff")
