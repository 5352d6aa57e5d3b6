"""Token-reward sources of ASR-DPO (columns, segment RM, implicit reward) and input validation."""

import copy
import math
import os
import tempfile

import pytest
import torch
from datasets import Dataset

from segrl.dpo import ASRDPOConfig, ASRDPOTrainer
from segrl.models.tiny import build_tiny_causal_lm, build_tiny_tokenizer, make_tiny_model_dir
from segrl.models.tiny_data import load_tiny_prefs
from segrl.ops import keep_mask
from segrl.token_rewards import align_token_rewards, boundary_token_table

COMMON = dict(
    output_dir=os.path.join(tempfile.gettempdir(), "segrl-test-dpo"),  # replaced per module below
    per_device_train_batch_size=4, max_steps=1, bf16=False, gradient_checkpointing=False,
    use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
)


@pytest.fixture(scope="module", autouse=True)
def _output_dir(tmp_path_factory):
    # Trainers create their output_dir: keep it out of the working tree.
    COMMON["output_dir"] = str(tmp_path_factory.mktemp("out"))


@pytest.fixture(scope="module")
def tiny():
    tok = build_tiny_tokenizer()
    policy = build_tiny_causal_lm(tok, hidden_size=32, num_layers=1, seed=1)
    ref = build_tiny_causal_lm(tok, hidden_size=32, num_layers=1, seed=2)
    return tok, policy, ref, load_tiny_prefs()[:4]


def _completion_len(tok, prompt, completion):
    return len(tok(prompt + completion + tok.eos_token)["input_ids"]) - len(tok(prompt)["input_ids"])


def _with_rewards(tok, rows, drop_eos=False, fill=0.5):
    out = []
    for r in rows:
        r = dict(r)
        for side in ("chosen", "rejected"):
            n = _completion_len(tok, r["prompt"], r[side]) - (1 if drop_eos else 0)
            r[f"{side}_token_rewards"] = [fill + 0.1 * t for t in range(n)]
        out.append(r)
    return out


def _make(tiny, rows, **kw):
    tok, policy, ref, _ = tiny
    extra = {k: kw.pop(k) for k in ("token_reward_model", "implicit_models") if k in kw}
    return ASRDPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(ref),
                         args=ASRDPOConfig(**{**COMMON, **kw}), train_dataset=Dataset.from_list(rows),
                         processing_class=tok, **extra)


def _loss(trainer):
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    return trainer.compute_loss(trainer.model, batch).item()


# ----------------------------------------------------------------------------------------------
# Columns
# ----------------------------------------------------------------------------------------------


def test_columns_without_eos_give_eos_the_last_reward(tiny):
    tok = tiny[0]
    trainer = _make(tiny, _with_rewards(tok, tiny[3], drop_eos=True))
    ex = trainer.train_dataset[0]
    assert ex["chosen_ids"][-1] == tok.eos_token_id
    r = ex["chosen_token_rewards"]
    assert len(r) == len(ex["chosen_ids"])
    assert r[-1] == r[-2]


def test_align_token_rewards_rules():
    assert align_token_rewards([1, 2], [5, 2], eos_token_id=2, column="c", row=0) == [1.0, 2.0]
    assert align_token_rewards([1], [5, 2], eos_token_id=2, column="c", row=0) == [1.0, 1.0]
    assert align_token_rewards([], [2], eos_token_id=2, column="c", row=0) == [0.0]
    with pytest.raises(ValueError, match=r"`c` in row 3 has 1 values .* 2 tokens"):
        align_token_rewards([1], [5, 6], eos_token_id=2, column="c", row=3)  # no EOS: n - 1 is not allowed
    with pytest.raises(ValueError, match="NaN or inf at token 1"):
        align_token_rewards([1, float("nan")], [5, 2], eos_token_id=2, column="c", row=0)
    with pytest.raises(ValueError, match="list of floats"):
        align_token_rewards("0.1 0.2", [5, 2], eos_token_id=2, column="c", row=0)


@pytest.mark.parametrize("corrupt, match", [
    (lambda r: r["chosen_token_rewards"].append(1.0), r"`chosen_token_rewards` in row 0 has \d+ values"),
    (lambda r: r["rejected_token_rewards"].__setitem__(slice(None), [0.1]), r"`rejected_token_rewards` in row 0"),
    (lambda r: r["chosen_token_rewards"].__setitem__(2, float("inf")), r"`chosen_token_rewards` in row 0 has a NaN"),
    (lambda r: r.pop("rejected_token_rewards"), r"needs a `rejected_token_rewards` column"),
])
def test_bad_reward_columns_are_errors(tiny, corrupt, match):
    rows = _with_rewards(tiny[0], tiny[3])
    if "column" in match:
        for r in rows:
            corrupt(r)
    else:
        corrupt(rows[0])
    with pytest.raises(ValueError, match=match):
        _make(tiny, rows)


def test_mask_none_needs_no_rewards(tiny):
    trainer = _make(tiny, tiny[3], mask_type="none")
    assert math.isfinite(_loss(trainer))


# ----------------------------------------------------------------------------------------------
# Segment RM
# ----------------------------------------------------------------------------------------------


class StandInRM:
    """Implements the segment RM's scoring interface: reward = (id mod 7 - 3) / 3 per token."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.calls = 0

    def score_token_ids(self, prompt_ids, response_ids, *, mode="even", normalize=True, reward_form="value",
                        batch_size=8):
        self.calls += 1
        width = max(map(len, response_ids))
        rewards = torch.zeros(len(response_ids), width)
        mask = torch.zeros(len(response_ids), width, dtype=torch.bool)
        for i, r in enumerate(response_ids):
            rewards[i, : len(r)] = (torch.tensor(r) % 7 - 3).float() / 3
            mask[i, : len(r)] = True
        return rewards, mask


def test_segment_rm_columns_and_on_the_fly_agree(tiny):
    rm = StandInRM(tiny[0])
    pre = _make(tiny, tiny[3], token_reward_source="segment_rm", token_reward_model=rm)
    ex = pre.train_dataset[1]
    assert ex["chosen_token_rewards"] == pytest.approx([(t % 7 - 3) / 3 for t in ex["chosen_ids"]])
    calls = rm.calls
    fly = _make(tiny, tiny[3], token_reward_source="segment_rm", token_reward_model=rm, token_reward_on_the_fly=True)
    assert "chosen_token_rewards" not in fly.train_dataset.column_names
    assert _loss(pre) == pytest.approx(_loss(fly), abs=1e-6)
    assert rm.calls > calls  # scored during the loss


def test_real_segment_rm_scores_trl_ids(tiny):
    pytest.importorskip("segrl.rm.model")
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from segrl.rm.model import SegmentRewardModel

    tok = tiny[0]
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=4, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    rm = SegmentRewardModel(LlamaForSequenceClassification(cfg).eval(), tok, threshold=math.inf)
    trainer = _make(tiny, tiny[3], token_reward_source="segment_rm", token_reward_model=rm,
                    token_reward_normalize=False)
    ex = trainer.train_dataset[0]
    expected, mask = rm.score_token_ids([ex["prompt_ids"]], [ex["chosen_ids"]], normalize=False)
    assert ex["chosen_token_rewards"] == pytest.approx(expected[0, : int(mask[0].sum())].tolist(), abs=1e-6)
    assert math.isfinite(_loss(trainer))


def test_segment_rm_tokenizer_mismatch_is_an_error(tiny):
    other = copy.deepcopy(tiny[0])
    other.add_tokens(["<|extra|>"])
    with pytest.raises(ValueError, match="tokenizer mismatch: `token_reward_model`"):
        _make(tiny, tiny[3], token_reward_source="segment_rm", token_reward_model=StandInRM(other))


def test_segment_rm_source_needs_a_model(tiny):
    with pytest.raises(ValueError, match="needs `reward_model_path`"):
        _make(tiny, tiny[3], token_reward_source="segment_rm")


# ----------------------------------------------------------------------------------------------
# Implicit reward
# ----------------------------------------------------------------------------------------------


def test_implicit_rewards_from_a_model_pair(tiny, tmp_path):
    tok = tiny[0]
    pol = make_tiny_model_dir(tmp_path / "pol", seed=3, tokenizer=tok, hidden_size=32, num_layers=1)
    ref = make_tiny_model_dir(tmp_path / "ref", seed=4, tokenizer=tok, hidden_size=32, num_layers=1)
    beta = 0.5
    trainer = _make(tiny, tiny[3], token_reward_source="implicit", implicit_policy=str(pol),
                    implicit_ref=str(ref), implicit_beta=beta)
    from transformers import AutoModelForCausalLM

    ex = trainer.train_dataset[2]
    ids = torch.tensor([ex["prompt_ids"] + ex["rejected_ids"]])
    start, n = len(ex["prompt_ids"]), len(ex["rejected_ids"])
    token = ids[0, start:]
    lps = []
    for path in (pol, ref):
        with torch.no_grad():
            logp = torch.log_softmax(AutoModelForCausalLM.from_pretrained(path)(input_ids=ids).logits, -1)[0]
        lps.append(logp[torch.arange(start - 1, start - 1 + n), token])
    expected = beta * (lps[0] - lps[1])
    assert ex["rejected_token_rewards"] == pytest.approx(expected.tolist(), abs=1e-5)


def test_implicit_pair_with_another_tokenizer_is_an_error(tiny, tmp_path):
    other = copy.deepcopy(tiny[0])
    other.add_tokens(["<|extra|>"])
    pol = make_tiny_model_dir(tmp_path / "pol", seed=3, tokenizer=other, hidden_size=32, num_layers=1)
    with pytest.raises(ValueError, match="tokenizer mismatch: `implicit_policy`"):
        _make(tiny, tiny[3], token_reward_source="implicit", implicit_policy=str(pol), implicit_ref=str(pol))


def test_implicit_source_needs_both_models(tiny):
    with pytest.raises(ValueError, match="needs `implicit_policy` and `implicit_ref`"):
        _make(tiny, tiny[3], token_reward_source="implicit", implicit_policy="somewhere")


# ----------------------------------------------------------------------------------------------
# Mask machinery and configuration
# ----------------------------------------------------------------------------------------------


def test_boundary_table_marks_punctuation_and_newlines(tiny):
    tok = tiny[0]
    table = boundary_token_table(tok)
    assert table.shape == (len(tok),)
    for text in (";", ".", "\n", "?"):
        (tid,) = tok(text, add_special_tokens=False)["input_ids"]
        assert table[tid], text
    for text in ("7", "+", "="):
        (tid,) = tok(text, add_special_tokens=False)["input_ids"]
        assert not table[tid], text


def test_keep_mask_variants_hand_values():
    r = torch.tensor([[1.0, -1.0, 0.5, -2.0]])
    m = torch.ones_like(r, dtype=torch.bool)
    plus = torch.tensor([1])
    assert keep_mask(r, m, plus, kind="none").keep.tolist() == [[True] * 4]
    km = keep_mask(r, m, plus, kind="tokenwise", baseline="zero")
    assert km.keep.tolist() == [[True, False, True, False]] and km.segment_ids is None
    boundary = torch.tensor([[False, True, False, False]])  # steps: [0, 1] and [2, 3]; means 0 and -0.75
    km = keep_mask(r, m, plus, kind="stepwise", baseline=-0.1, is_boundary=boundary)
    assert km.keep.tolist() == [[True, True, False, False]]
    km = keep_mask(r, m, torch.tensor([-1]), kind="stepwise", baseline=5.0, is_boundary=boundary)
    assert km.keep.tolist() == [[True] * 4] and km.fallback.tolist() == [False]
    km = keep_mask(r, m, plus, kind="tokenwise", baseline=5.0)
    assert km.keep.tolist() == [[True] * 4] and km.fallback.tolist() == [True]
    km = keep_mask(r, m, plus, kind="tokenwise", baseline=5.0, empty="none")
    assert km.keep.tolist() == [[False] * 4]


@pytest.mark.parametrize("kw, match", [
    (dict(mask_type="segment"), "`mask_type` must be one of"),
    (dict(asr_baseline="median"), "`asr_baseline` must be one of"),
    (dict(asr_baseline="nan"), "`asr_baseline` must be finite"),
    (dict(asr_delta=-0.1), "`asr_delta` must be 'auto' or a finite number >= 0"),
    (dict(asr_neutral="maybe"), "`asr_neutral`"),
    (dict(asr_empty="drop"), "`asr_empty`"),
    (dict(token_reward_source="oracle"), "`token_reward_source` must be one of"),
    (dict(token_reward_mode="spread"), "`token_reward_mode` must be one of"),
    (dict(token_reward_on_the_fly=True), "only supported with token_reward_source='segment_rm'"),
    (dict(padding_free=True), "`padding_free=True` is not supported"),
])
def test_bad_config_is_an_error(kw, match):
    with pytest.raises(ValueError, match=match):
        ASRDPOConfig(**{**COMMON, **kw})


def test_numeric_baseline_string_is_parsed():
    assert ASRDPOConfig(**COMMON, asr_baseline="0.25").asr_baseline == 0.25


def test_plain_dpo_config_is_rejected(tiny):
    from trl import DPOConfig

    with pytest.raises(TypeError, match="ASRDPOConfig"):
        ASRDPOTrainer(model=copy.deepcopy(tiny[1]), ref_model=copy.deepcopy(tiny[2]), args=DPOConfig(**COMMON),
                      train_dataset=Dataset.from_list(tiny[3]), processing_class=tiny[0])


def test_step_boundaries_shared_helper_hand_values(tiny):
    """StepBoundaries (used by DPO, RS, PPO, GRPO): table lookup & mask; ids past the tokenizer never end a step."""
    from segrl.token_rewards import StepBoundaries

    tok = tiny[0]
    semi = tok(";", add_special_tokens=False)["input_ids"][-1]
    digit = tok("7", add_special_tokens=False)["input_ids"][-1]
    ids = torch.tensor([[digit, semi, len(tok) + 5, semi]])
    mask = torch.tensor([[1, 1, 1, 0]]).bool()
    assert StepBoundaries(tok)(ids, mask).tolist() == [[False, True, False, False]]
