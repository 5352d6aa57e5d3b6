"""SegmentRewardModel: per-position read-out, scores by hand, save/load, score_tokens, the
normaliser fit, pairwise evaluation and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from rm_fixtures import THRESHOLD, rm_env, seq_cls, tiny_rows  # noqa: F401

from segrl.ops import LocationNormalizerCoef


@pytest.fixture
def make_rm(rm_env, seq_cls):
    from segrl.rm import SegmentRewardModel

    def make(threshold=THRESHOLD, normalizer=None, reference_model=None):
        ref = reference_model if reference_model is not None else rm_env.ref_dir
        return SegmentRewardModel(seq_cls, rm_env.tokenizer, threshold=threshold, reference_model=ref,
                                  normalizer=normalizer)

    return make


COEF = LocationNormalizerCoef(a_mu=0.5, b_mu=0.2, a_sigma=0.1, b_sigma=1.5)


# --------------------------------------------------------------------------------------------------
# Scores by hand (pure tensors)
# --------------------------------------------------------------------------------------------------


def test_sequence_scores_by_hand():
    from segrl.rm.scoring import segment_sequence_scores

    values = torch.tensor([[1.0, 2.0, 3.0, 4.0, 10.0], [7.0, 0.0, 0.0, 0.0, 0.0], [6.0, 8.0, 0.0, 0.0, 0.0]])
    entropy = torch.tensor([[9.0, 0.5, 3.0, 0.2, 9.0], [9.0, 0, 0, 0, 0], [0.1, 9.0, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    cases = {
        # row 0, c = 1: segments {0,1} and {2,3} (3.0 > 1 starts one), EOS excluded: (2 + 4) / 2.
        # row 1 is only EOS: no segment, the score is the EOS value 7. Row 2: segment {0}: 6.
        1.0: ([3.0, 7.0, 6.0], [2, 0, 1]),
        0.0: ([(1 + 2 + 3 + 4) / 4, 7.0, 6.0], [4, 0, 1]),  # one segment per token but EOS
        5.0: ([4.0, 7.0, 6.0], [1, 0, 1]),  # no entropy > 5 after token 0: one segment ending at token 3
        math.inf: ([10.0, 7.0, 8.0], [1, 1, 1]),  # bandit: the EOS value, EOS included
    }
    for c, (scores, counts) in cases.items():
        out = segment_sequence_scores(values, entropy if not math.isinf(c) else None, mask, c)
        assert out.scores.tolist() == pytest.approx(scores), c
        assert out.num_segments.tolist() == counts, c
    with pytest.raises(ValueError, match="entropy"):
        segment_sequence_scores(values, None, mask, 1.0)
    with pytest.raises(ValueError, match="values"):
        segment_sequence_scores(values.index_put((torch.tensor([1]), torch.tensor([0])), torch.tensor(float("nan"))),
                                entropy, mask, 1.0)


# --------------------------------------------------------------------------------------------------
# Per-position values
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_value_at_last_token_is_the_pooled_logit(rm_env, seq_cls, arch, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from segrl.models import make_tiny_model_dir
    from segrl.rm.model import per_position_values

    tok = rm_env.tokenizer
    if arch != "llama":
        seq_cls = AutoModelForSequenceClassification.from_pretrained(
            make_tiny_model_dir(tmp_path, arch=arch, tokenizer=tok), num_labels=1).eval()
        with torch.no_grad():
            seq_cls.score.weight.normal_(0, 1.0)
    texts = ["1+2=3", "2+2=4;=4 and some more", "7"]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        values, outputs = per_position_values(seq_cls, enc["input_ids"], enc["attention_mask"])
    last = enc["attention_mask"].sum(-1) - 1
    assert values.shape == enc["input_ids"].shape
    torch.testing.assert_close(values[torch.arange(3), last], outputs.logits.squeeze(-1))
    assert values.std() > 0.1  # per position, not one value broadcast


# --------------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold,coef", [(math.inf, None), (math.inf, COEF), (0.0, None), (1.5, COEF)])
def test_save_load_round_trip(make_rm, tmp_path, rm_env, threshold, coef):
    from segrl.rm import SegmentRewardModel

    rm = make_rm(threshold, coef)
    rm.save_pretrained(tmp_path)

    def strict(constant):  # JSON has no Infinity / NaN: a round trip must not rely on Python's extension
        raise AssertionError(f"non-standard JSON constant {constant}")

    config = json.loads((tmp_path / "config.json").read_text(), parse_constant=strict)
    assert config["segment_rm"]["threshold"] == ("inf" if math.isinf(threshold) else threshold)
    loaded = SegmentRewardModel.from_pretrained(tmp_path)
    assert loaded.threshold == threshold
    assert loaded.reference_model == rm_env.ref_dir
    assert loaded.normalizer == coef
    for (n1, p1), (n2, p2) in zip(rm.model.state_dict().items(), loaded.model.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    SegmentRewardModel.write_normalizer(tmp_path, COEF)
    assert SegmentRewardModel.from_pretrained(tmp_path).normalizer == COEF


def test_loading_a_plain_model_is_an_error(rm_env):
    from segrl.rm import SegmentRewardModel

    with pytest.raises(ValueError, match="segment_rm"):
        SegmentRewardModel.from_pretrained(rm_env.init_dir)


# --------------------------------------------------------------------------------------------------
# score_tokens / score_token_ids
# --------------------------------------------------------------------------------------------------


def test_score_tokens_layout_and_spreading(make_rm):
    rows = tiny_rows(5)
    prompts, responses = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    rm = make_rm(THRESHOLD, COEF)
    rewards, mask, seg_ids = rm.score_tokens(prompts, responses, batch_size=2, return_segment_ids=True)
    prompt_ids, response_ids = rm.tokenize(prompts, responses)
    lengths = [len(r) for r in response_ids]
    assert all(r[-1] == rm.tokenizer.eos_token_id for r in response_ids)
    assert rewards.shape == mask.shape == seg_ids.shape == (5, max(lengths))
    assert rewards.dtype == torch.float32 and mask.dtype == torch.bool
    assert mask.sum(-1).tolist() == lengths
    eos = torch.tensor(lengths) - 1
    assert torch.all(rewards[torch.arange(5), eos] == 0)  # dense RM: EOS belongs to no segment
    assert torch.all(rewards[~mask] == 0) and torch.all(seg_ids[~mask] == -1)
    assert int(seg_ids.max()) >= 2  # the reference really segments these responses
    # "even": each segment's tokens sum to its normalised reward; "end": all on the segment's last token.
    seg = rm.segment_token_ids(prompt_ids, response_ids)
    normed = rm.normalized_segment_rewards(seg)
    for b in range(5):
        for k in range(int(seg.num_segments[b])):
            torch.testing.assert_close(rewards[b][seg_ids[b] == k].sum(), normed[b, k])
    end, _ = rm.score_token_ids(prompt_ids, response_ids, mode="end")
    torch.testing.assert_close(end.sum(-1), normed.sum(-1))
    # The text API is the id API on `tokenize`, and batching does not change anything.
    ids_rewards, ids_mask = rm.score_token_ids(prompt_ids, response_ids, batch_size=5)
    torch.testing.assert_close(ids_rewards, rewards, rtol=1e-5, atol=1e-6)
    assert torch.equal(ids_mask, mask)
    # Raw segment rewards without normalising: mean of the row's segment rewards is the training score.
    raw, _ = rm.score_token_ids(prompt_ids, response_ids, mode="end", normalize=False)
    torch.testing.assert_close(raw.sum(-1) / seg.num_segments, seg.scores)


def test_bandit_scores_put_everything_at_eos_and_need_no_reference(make_rm, rm_env):
    rows = tiny_rows(3)
    rm = make_rm(math.inf, COEF, reference_model=rm_env.other_dir)  # never loaded for c = inf
    rewards, mask = rm.score_tokens([r["prompt"] for r in rows], [r["rejected"] for r in rows], mode="even")
    eos = mask.sum(-1) - 1
    assert rm._reference_module is None
    lengths = mask.sum(-1).float()
    # One segment of n tokens: (r - mu(1)) / sigma(1) / n on each, mu(1) = b_mu, sigma(1) = b_sigma.
    scores = rm.segment_token_ids(*rm.tokenize([r["prompt"] for r in rows], [r["rejected"] for r in rows])).scores
    expected = (scores - COEF.b_mu) / COEF.b_sigma / lengths
    torch.testing.assert_close(rewards[torch.arange(3), eos], expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(rewards[mask], expected.repeat_interleave(mask.sum(-1)), rtol=1e-5, atol=1e-6)


def test_normalised_scores_without_a_fit_raise(make_rm):
    rm = make_rm(THRESHOLD, None)
    with pytest.raises(ValueError, match="fit-norm"):
        rm.score_tokens(["1+1="], ["2"])
    rewards, _ = rm.score_tokens(["1+1="], ["2"], normalize=False)
    assert torch.isfinite(rewards).all()


def test_nan_reference_weights_raise(rm_env):
    from transformers import AutoModelForCausalLM

    from segrl.rm.entropy import reference_entropy

    ref = AutoModelForCausalLM.from_pretrained(rm_env.ref_dir).eval()
    with torch.no_grad():
        ref.model.norm.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="reference_model"):
        reference_entropy(ref, [[5, 6, 7, 2]], [1])


def test_score_token_ids_bad_input(make_rm, rm_env):
    rm = make_rm(THRESHOLD, COEF)
    with pytest.raises(ValueError, match="response_ids\\[1\\]"):
        rm.score_token_ids([[5], [6]], [[7, 2], []])
    with pytest.raises(ValueError, match="rows"):
        rm.score_token_ids([[5]], [[7, 2], [8, 2]])
    with pytest.raises(ValueError, match="vocabulary"):
        rm.score_token_ids([[5]], [[10**6, 2]])
    with pytest.raises(ValueError, match="empty"):
        rm.score_tokens(["1+1="], [""])
    with pytest.raises(ValueError, match="reference_model"):
        make_rm(THRESHOLD, COEF, reference_model=rm_env.other_dir).score_tokens(["1+1="], ["2"])


# --------------------------------------------------------------------------------------------------
# Normaliser fit and evaluation
# --------------------------------------------------------------------------------------------------


def test_fit_normalizer_dense_and_bandit(make_rm, tmp_path):
    from datasets import Dataset

    from segrl.rm import fit_normalizer
    from segrl.rm.normalizer_fit import collect_segment_rewards

    ds = Dataset.from_list(tiny_rows(12))
    rm = make_rm(THRESHOLD, None)
    fit = fit_normalizer(rm, ds, n_pairs=10, plot_path=tmp_path / "fit.png", progress=False)
    assert rm.normalizer == fit.coef and fit.n_pairs == 10
    assert fit.buckets.locations.size > 3 and fit.n_segments > 20
    assert fit.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Every segment of both sides is counted: segments = sum of K over chosen and rejected.
    locs, rewards, _ = collect_segment_rewards(rm, ds, n_pairs=10, progress=False)
    assert locs.size == fit.n_segments and np.all((locs > 0) & (locs <= 1))
    rm.score_tokens(["1+1="], ["2"])  # normalised scoring works once fitted

    bandit = make_rm(math.inf, None)
    fit = fit_normalizer(bandit, ds, progress=False, plot_path=tmp_path / "bandit.png")
    scores = []
    for key in ("chosen", "rejected"):
        ids = bandit.tokenize([r["prompt"] for r in ds], [r[key] for r in ds])
        scores += bandit.segment_token_ids(*ids).scores.tolist()
    assert fit.buckets.locations.tolist() == [1.0] and fit.n_segments == 24
    assert fit.coef.b_mu == pytest.approx(np.mean(scores), abs=1e-5)
    assert fit.coef.b_sigma == pytest.approx(np.std(scores), abs=1e-5)
    assert (tmp_path / "bandit.png").is_file()


def test_evaluate_pairwise_matches_scores(make_rm, tmp_path):
    from datasets import Dataset

    from segrl.rm import evaluate_pairwise

    rows = tiny_rows(6)
    rm = make_rm(THRESHOLD, None)
    result = evaluate_pairwise(rm, Dataset.from_list(rows), batch_size=4, output_json=tmp_path / "e.json",
                               progress=False)
    s_w = rm.segment_token_ids(*rm.tokenize([r["prompt"] for r in rows], [r["chosen"] for r in rows])).scores
    s_l = rm.segment_token_ids(*rm.tokenize([r["prompt"] for r in rows], [r["rejected"] for r in rows])).scores
    assert result["n_pairs"] == 6
    assert result["accuracy"] == pytest.approx(float((s_w > s_l).float().mean()))
    assert result["mean_margin"] == pytest.approx(float((s_w - s_l).mean()), abs=1e-5)
    assert result["threshold"] == THRESHOLD
    assert json.loads((tmp_path / "e.json").read_text()) == result
