"""The segment RM learns: on pairs that differ in a learnable way, held-out pairwise accuracy rises
well above chance within a few seconds of CPU training."""

from __future__ import annotations

import pytest
from rm_fixtures import THRESHOLD, rm_env, seg_config, thanks_prefs  # noqa: F401


@pytest.mark.parametrize("threshold", [THRESHOLD])
def test_heldout_accuracy_rises(rm_env, tmp_path, threshold):
    from datasets import Dataset

    from segrl.rm import SegmentRewardModel, SegmentRewardTrainer, evaluate_pairwise

    train, heldout = Dataset.from_list(thanks_prefs(64, seed=0)), Dataset.from_list(thanks_prefs(32, seed=1))
    args = seg_config(tmp_path, threshold, max_steps=-1, num_train_epochs=2, per_device_train_batch_size=8,
                      learning_rate=3e-3, logging_steps=4)
    trainer = SegmentRewardTrainer(model=rm_env.init_dir, args=args, train_dataset=train,
                                   processing_class=rm_env.tokenizer, ref_model=rm_env.ref_dir)
    before = evaluate_pairwise(SegmentRewardModel.from_trainer(trainer), heldout, progress=False)
    trainer.train()
    after = evaluate_pairwise(SegmentRewardModel.from_trainer(trainer), heldout, progress=False)
    assert after["segments_per_response"] > 2  # trained as a segment RM, not a bandit one
    assert after["accuracy"] >= 0.85, (before, after)
    assert after["mean_margin"] > before["mean_margin"] + 0.5
