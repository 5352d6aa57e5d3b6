"""segment_loss="prefix_pairs": Bradley-Terry between every chosen and every rejected segment reward."""

from __future__ import annotations

import math

import pytest
import torch
from rm_fixtures import rm_env, seg_config, tiny_rows  # noqa: F401

from segrl.rm.scoring import SegmentScores, parse_segment_loss, prefix_pairs_loss


def _nls(x: float) -> float:
    return math.log1p(math.exp(-x))  # -log sigmoid(x)


def _seg(rewards, valid, scores):
    rewards, valid = torch.tensor(rewards), torch.tensor(valid)
    return SegmentScores(torch.tensor(scores), torch.zeros(len(scores), 1, dtype=torch.long), rewards, valid,
                         valid.sum(dim=1))


def test_prefix_pairs_by_hand():
    # Pair 0: chosen segments (1, 2), rejected (0, 5); pair 1: chosen (3) [slot 1 is padding], rejected has
    # no segment (EOS-only response of a dense RM) and competes with its score -1.
    seg = _seg([[1.0, 2.0], [3.0, 9.0], [0.0, 5.0], [0.0, 0.0]],
               [[True, True], [True, False], [True, True], [False, False]],
               [1.5, 3.0, 2.5, -1.0])
    pair0 = (_nls(1 - 0) + _nls(1 - 5) + _nls(2 - 0) + _nls(2 - 5)) / 4
    pair1 = _nls(3 - (-1))
    assert prefix_pairs_loss(seg).item() == pytest.approx((pair0 + pair1) / 2, rel=1e-6)
    margin = torch.tensor([0.5, 2.0])
    pair0 = (_nls(0.5) + _nls(-4.5) + _nls(1.5) + _nls(-3.5)) / 4
    assert prefix_pairs_loss(seg, margin).item() == pytest.approx((pair0 + _nls(2.0)) / 2, rel=1e-6)


def test_one_segment_each_is_plain_bradley_terry():
    scores = torch.tensor([0.3, -1.2, 2.0, 0.1])
    seg = _seg(scores[:, None].tolist(), [[True]] * 4, scores.tolist())
    want = -torch.nn.functional.logsigmoid(scores[:2] - scores[2:]).mean()
    torch.testing.assert_close(prefix_pairs_loss(seg), want)


def test_differs_from_bt_on_the_mean():
    # Means are equal (1.5 vs 1.5): BT on the mean gives log 2; every chosen prefix vs every rejected one does not.
    seg = _seg([[0.0, 3.0], [1.5, 1.5]], [[True, True], [True, True]], [1.5, 1.5])
    assert prefix_pairs_loss(seg).item() == pytest.approx((_nls(-1.5) + _nls(1.5)) / 2, rel=1e-6)
    assert prefix_pairs_loss(seg).item() != pytest.approx(math.log(2), rel=1e-3)


def test_bad_names_raise():
    with pytest.raises(ValueError, match="segment_loss"):
        parse_segment_loss("sum")
    with pytest.raises(ValueError, match="rows"):
        prefix_pairs_loss(_seg([[1.0]], [[True]], [1.0]))


def test_trainer_uses_prefix_pairs(rm_env, tmp_path):
    """The trainer's loss at c = 0 is prefix_pairs_loss of the per-token values, computed by hand."""
    from datasets import Dataset

    from segrl.rm import SegmentRewardTrainer
    from segrl.rm.data import tokenize_preference_example
    from segrl.rm.model import per_position_values

    rows = []
    for i, r in enumerate(tiny_rows(3)):
        ex = tokenize_preference_example(r, rm_env.tokenizer, i)
        for side in ("chosen", "rejected"):
            ex[f"{side}_entropy"] = [1.0] * (len(ex[f"{side}_ids"]) - ex["prompt_length"])
        rows.append(ex)
    ds = Dataset.from_list(rows)
    trainer = SegmentRewardTrainer(model=rm_env.init_dir, args=seg_config(tmp_path, 0.0, segment_loss="prefix_pairs"),
                                   train_dataset=ds, processing_class=rm_env.tokenizer, ref_model=rm_env.ref_dir)
    batch = trainer.data_collator([ds[i] for i in range(3)])
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
        want = 0.0
        for ex in rows:
            seg_values = []
            for side in ("chosen", "rejected"):
                ids, p = ex[f"{side}_ids"], ex["prompt_length"]
                v, _ = per_position_values(trainer.model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
                seg_values.append(v[0, p:-1].tolist())  # c = 0: one segment per token, EOS excluded
            terms = [_nls(w - l) for w in seg_values[0] for l in seg_values[1]]
            want += sum(terms) / len(terms) / len(rows)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="segment_loss"):
        seg_config(tmp_path, 0.0, segment_loss="sum")


def test_pipeline_option_and_cache_key():
    from segrl.pipeline.options import PipelineOptions
    from segrl.pipeline.settings import RMSettings, settings_key

    # The default keeps the key RMs were cached under before segment_loss existed (hash of the old fields).
    assert settings_key(RMSettings().key()) == "188b213e01a5557d"
    rm = PipelineOptions(rm_segment_loss="prefix_pairs").stage_settings()["rm"]
    assert rm.segment_loss == "prefix_pairs"
    assert settings_key(rm.key()) != settings_key(RMSettings().key())
    with pytest.raises(ValueError, match="rm_segment_loss"):
        RMSettings(segment_loss="sum")
