"""segment_threshold="auto" (resolved from the training entropies, stored as a number) and the
warning for a dense RM with about one segment per response."""

from __future__ import annotations

import json
import math
import warnings

import pytest
from rm_fixtures import rm_env, seg_config, tiny_rows  # noqa: F401

from segrl.rm.entropy import (
    DEFAULT_SEGMENT_TARGET_LENGTH,
    resolve_segment_threshold,
    segment_stats,
    warn_if_few_segments,
)

# Dense segmentation cuts tokens 1 .. n-2 (token 0 always starts a segment, the EOS is in none).
#   row 0: 5 tokens, candidates [3, 1, .5];  row 1: 4 tokens, candidates [2, .2];  row 2: 2 tokens, none.
# In segments: 4 + 3 + 1 = 8 tokens over R = 3 responses.
ENTROPIES = [[0.0, 3.0, 1.0, 0.5, 0.0], [0.0, 2.0, 0.2, 0.0], [0.0, 9.0]]


def test_segment_stats_by_hand():
    stats = segment_stats(ENTROPIES, 0.9)  # cuts at 3, 1 (row 0) and 2 (row 1): K = 3, 2, 1
    assert stats.segments_per_response == pytest.approx(2.0)
    assert stats.mean_segment_length == pytest.approx(8 / 6)
    assert segment_stats(ENTROPIES, math.inf).segments_per_response == 1.0  # bandit: one each
    assert segment_stats(ENTROPIES, 0.0).segments_per_response == pytest.approx((4 + 3 + 1) / 3)


@pytest.mark.parametrize(
    "target, cuts, expected",
    [
        (2.0, 1, 2.5),          # m = round(8 / 2 - 3) = 1: between the 1st (3) and 2nd (2) largest
        (8 / 5, 2, 1.5),        # m = round(5 - 3) = 2: between 2 and 1
        (1.0, 5, 0.1),          # m = 5 = every candidate: half the smallest (0.2)
        (4.0, 0, 3.0),          # m = round(2 - 3) < 0 -> 0: the largest, nothing is above it
    ],
)
def test_resolve_threshold_by_hand(target, cuts, expected):
    c = resolve_segment_threshold(ENTROPIES, target)
    assert c == pytest.approx(expected)
    stats = segment_stats(ENTROPIES, c)
    assert stats.segments_per_response * 3 == pytest.approx(3 + cuts)


def test_resolve_threshold_errors():
    with pytest.raises(ValueError, match="segment_target_length"):
        resolve_segment_threshold(ENTROPIES, 0.5)
    with pytest.raises(ValueError, match="no response has more than 2 tokens"):
        resolve_segment_threshold([[0.0, 1.0], [0.0]])
    with pytest.raises(ValueError, match="NaN"):
        resolve_segment_threshold([[0.0, float("nan"), 1.0]])


def test_few_segments_warning_names_threshold_and_suggests_one():
    with pytest.warns(UserWarning, match=r"segment_threshold=5 gives 1.00 segments per response.*try "
                                         r"segment_threshold=2\.5 \(mean segment length 2 tokens\)"):
        warn_if_few_segments(ENTROPIES, 5.0, target_length=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_few_segments(ENTROPIES, 0.9)  # 2 segments per response: fine
        warn_if_few_segments(ENTROPIES, math.inf)  # the bandit RM is one segment by design


def test_config_accepts_auto_and_checks_target(tmp_path):
    assert seg_config(tmp_path, threshold="auto").segment_threshold == "auto"
    assert seg_config(tmp_path, threshold="inf").segment_threshold == math.inf
    assert seg_config(tmp_path).segment_target_length == DEFAULT_SEGMENT_TARGET_LENGTH
    with pytest.raises(ValueError, match="`segment_threshold` must be a number >= 0, 'inf' or 'auto'"):
        seg_config(tmp_path, threshold="often")
    with pytest.raises(ValueError, match="segment_target_length"):
        seg_config(tmp_path, threshold="auto", segment_target_length=0.5)


def test_train_rm_cli_parses_auto():
    from segrl.commands.train_rm import parse_config

    cpu = ["--output_dir", "z", "--use_cpu", "true", "--bf16", "false"]
    _, training_args, _ = parse_config(["--model_name_or_path", "x", "--dataset_name", "y", *cpu,
                                        "--segment_threshold", "auto", "--segment_target_length", "3"])[:3]
    assert training_args.segment_threshold == "auto" and training_args.segment_target_length == 3.0
    _, training_args, _ = parse_config([*cpu, "--segment_threshold", "1.5"])[:3]
    assert training_args.segment_threshold == 1.5


def test_trainer_resolves_auto_and_saves_the_number(rm_env, tmp_path):
    from datasets import Dataset

    from segrl.rm import SegmentRewardModel, SegmentRewardTrainer

    rows = tiny_rows(8)
    trainer = SegmentRewardTrainer(rm_env.init_dir, args=seg_config(tmp_path, threshold="auto",
                                                                   segment_target_length=3.0),
                                   train_dataset=Dataset.from_list(rows), processing_class=rm_env.tokenizer,
                                   ref_model=rm_env.ref_dir)
    c = trainer.segment_threshold
    assert isinstance(c, float) and trainer.args.segment_threshold == c
    ds = trainer.train_dataset
    entropies = list(ds["chosen_entropy"]) + list(ds["rejected_entropy"])
    assert c == pytest.approx(resolve_segment_threshold(entropies, 3.0))
    assert segment_stats(entropies, c).mean_segment_length == pytest.approx(3.0, abs=0.3)
    trainer.save_model(str(tmp_path / "rm"))
    saved = json.loads((tmp_path / "rm" / "config.json").read_text())["segment_rm"]
    assert saved["threshold"] == pytest.approx(c)
    assert saved["threshold_auto"] == {"segment_target_length": 3.0}
    assert SegmentRewardModel.from_pretrained(tmp_path / "rm").threshold == pytest.approx(c)


def test_trainer_warns_on_about_one_segment(rm_env, tmp_path):
    from datasets import Dataset

    from segrl.rm import SegmentRewardTrainer

    with pytest.warns(UserWarning, match=r"segment_threshold=50 gives 1\.00 segments per response.*try "
                                         r"segment_threshold="):
        SegmentRewardTrainer(rm_env.init_dir, args=seg_config(tmp_path, threshold=50.0),
                             train_dataset=Dataset.from_list(tiny_rows(4)), processing_class=rm_env.tokenizer,
                             ref_model=rm_env.ref_dir)
