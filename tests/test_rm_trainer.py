"""SegmentRewardTrainer: TRL equivalence at c = inf, hand-checked dense scores, entropy caching,
metrics, parameter updates and bad input."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from rm_fixtures import TEST_ARGS, THRESHOLD, rm_env, seg_config, tiny_rows  # noqa: F401

datasets = pytest.importorskip("datasets")
Dataset = datasets.Dataset


def _seq_cls(path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)


def _trl_trainer(rm_env, model, ds, tmp_path, **kwargs):
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(output_dir=str(tmp_path / "trl"), **{**TEST_ARGS, "per_device_train_batch_size": 4,
                                                               "max_steps": 2, **kwargs})
    return RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=rm_env.tokenizer)


# --------------------------------------------------------------------------------------------------
# c = inf is TRL's RewardTrainer
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("margin,center", [(False, None), (True, 0.01)])
def test_bandit_loss_and_grads_equal_trl(rm_env, tmp_path, margin, center):
    from segrl.rm import SegmentRewardTrainer

    rows = tiny_rows(6)
    if margin:
        for i, r in enumerate(rows):
            r["margin"] = 0.25 * i
    ds = Dataset.from_list(rows)
    torch.manual_seed(0)
    base = _seq_cls(rm_env.init_dir)  # random score head, shared by both copies
    seg = SegmentRewardTrainer(model=copy.deepcopy(base), args=seg_config(tmp_path / "seg", math.inf,
                               center_rewards_coefficient=center), train_dataset=ds, processing_class=rm_env.tokenizer)
    ref = _trl_trainer(rm_env, copy.deepcopy(base), ds, tmp_path, center_rewards_coefficient=center)
    # Same token ids as TRL's own preprocessing (EOS appended, prompt + completion tokenised jointly).
    assert seg.train_dataset["chosen_ids"] == ref.train_dataset["chosen_ids"]
    assert seg.train_dataset["rejected_ids"] == ref.train_dataset["rejected_ids"]
    assert "chosen_entropy" not in seg.train_dataset.column_names  # bandit: no reference pass at all

    examples = [seg.train_dataset[i] for i in range(len(rows))]
    batch_seg = seg.data_collator(examples)
    batch_trl = ref.data_collator([ref.train_dataset[i] for i in range(len(rows))])
    assert torch.equal(batch_seg["input_ids"], batch_trl["input_ids"])
    seg.model.train()
    ref.model.train()
    loss_seg = seg.compute_loss(seg.model, dict(batch_seg))
    loss_trl = ref.compute_loss(ref.model, dict(batch_trl))
    torch.testing.assert_close(loss_seg, loss_trl, rtol=0, atol=1e-6)
    assert loss_seg.item() > 0.1  # a real loss, not a trivially equal zero
    loss_seg.backward()
    loss_trl.backward()
    grads_trl = dict(ref.model.named_parameters())
    n = 0
    for name, p in seg.model.named_parameters():
        if p.grad is None:
            assert grads_trl[name].grad is None, name
            continue
        torch.testing.assert_close(p.grad, grads_trl[name].grad, rtol=1e-5, atol=1e-7, msg=name)
        n += 1
    assert n >= 10
    # Same logged accuracy / margin as TRL on this batch.
    assert seg._metrics["train"]["accuracy"] == ref._metrics["train"]["accuracy"]
    torch.testing.assert_close(torch.tensor(seg._metrics["train"]["margin"]),
                               torch.tensor(ref._metrics["train"]["margin"]))


def test_conversational_and_implicit_prompt_tokenisation_matches_trl(rm_env, tmp_path):
    from trl import RewardTrainer
    from trl.data_utils import _tokenize

    from segrl.rm.data import tokenize_preference_dataset

    tok = rm_env.tokenizer
    rows = tiny_rows(4)
    conv = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]
    implicit = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in rows]
    trl_trainer = _trl_trainer(rm_env, _seq_cls(rm_env.init_dir), Dataset.from_list(rows), tmp_path)
    for data in (conv, implicit):
        ds = Dataset.from_list(data)
        ours = tokenize_preference_dataset(ds, tok, max_length=None)
        theirs = RewardTrainer._prepare_dataset(trl_trainer, ds, tok, trl_trainer.args, "x")
        assert ours["chosen_ids"] == theirs["chosen_ids"]
        assert ours["rejected_ids"] == theirs["rejected_ids"]
    # The response of a conversational row starts right after the rendered generation prompt.
    ours = tokenize_preference_dataset(Dataset.from_list(conv), tok, max_length=None)
    prompt_ids = _tokenize(tok, conv[0]["prompt"], add_generation_prompt=True)["input_ids"]
    assert ours[0]["prompt_length"] == len(prompt_ids)
    assert ours[0]["chosen_ids"][: len(prompt_ids)] == prompt_ids
    assert tok.decode(ours[0]["chosen_ids"][len(prompt_ids):]).startswith(rows[0]["chosen"])


# --------------------------------------------------------------------------------------------------
# Dense scores by hand
# --------------------------------------------------------------------------------------------------


def _with_entropy(rows, tok, pattern):
    """Tokenise rows and attach precomputed entropies ``pattern(t)`` for response token t."""
    from segrl.rm.data import tokenize_preference_example

    out = []
    for i, r in enumerate(rows):
        ex = tokenize_preference_example(r, tok, i)
        p = ex["prompt_length"]
        for side in ("chosen", "rejected"):
            ex[f"{side}_entropy"] = [pattern(t) for t in range(len(ex[f"{side}_ids"]) - p)]
        out.append(ex)
    return Dataset.from_list(out)


def _values(model, ids, p):
    """RM value at each response token of one unpadded row (independent of the trainer)."""
    from segrl.rm.model import per_position_values

    with torch.no_grad():
        vals, _ = per_position_values(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    return vals[0, p:].tolist()


@pytest.mark.parametrize("threshold", [0.0, 1.0, 100.0, math.inf])
def test_dense_scores_by_hand(rm_env, tmp_path, threshold):
    from segrl.rm import SegmentRewardTrainer

    # Entropy 5 on every third response token (t = 0, 3, 6, ...), 0.1 elsewhere.
    ds = _with_entropy(tiny_rows(3), rm_env.tokenizer, lambda t: 5.0 if t % 3 == 0 else 0.1)
    trainer = SegmentRewardTrainer(model=rm_env.init_dir, args=seg_config(tmp_path, threshold), train_dataset=ds,
                                   processing_class=rm_env.tokenizer, ref_model=rm_env.ref_dir)
    batch = trainer.data_collator([ds[i] for i in range(3)])
    trainer.model.eval()
    with torch.no_grad():
        loss, out = trainer.compute_loss(trainer.model, dict(batch), return_outputs=True)
    expected = []
    for side in ("chosen", "rejected"):
        for ex in ds:
            ids, p = ex[f"{side}_ids"], ex["prompt_length"]
            v = _values(trainer.model, ids, p)
            n = len(v)  # response tokens; v[n - 1] is EOS
            if threshold == 0.0:  # one segment per token but EOS: mean of v[0 .. n-2]
                score = sum(v[: n - 1]) / (n - 1)
            elif threshold == 1.0:  # segments {0,1,2}, {3,4,5}, ... cut before EOS: ends 2, 5, ..., n-2
                ends = sorted({min(3 * k + 2, n - 2) for k in range((n - 2) // 3 + 1)})
                score = sum(v[e] for e in ends) / len(ends)
            elif threshold == 100.0:  # one segment of tokens 0 .. n-2: its last token
                score = v[n - 2]
            else:  # bandit: the EOS value
                score = v[n - 1]
            expected.append(score)
    torch.testing.assert_close(out["logits"].squeeze(-1), torch.tensor(expected), rtol=1e-5, atol=1e-6)
    s = torch.tensor(expected)
    want = -torch.nn.functional.logsigmoid(s[:3] - s[3:]).mean()
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Reference entropy: alignment, batching, caching
# --------------------------------------------------------------------------------------------------


def test_entropy_columns_are_the_predicting_distribution(rm_env, tmp_path):
    from transformers import AutoModelForCausalLM

    from segrl.rm import SegmentRewardTrainer
    from segrl.rm.entropy import reference_entropy

    ds = Dataset.from_list(tiny_rows(4))
    trainer = SegmentRewardTrainer(model=rm_env.init_dir, args=seg_config(tmp_path, entropy_batch_size=3),
                                   train_dataset=ds, processing_class=rm_env.tokenizer, ref_model=rm_env.ref_dir)
    ref = AutoModelForCausalLM.from_pretrained(rm_env.ref_dir).eval()
    ex = trainer.train_dataset[1]
    ids, p = ex["rejected_ids"], ex["prompt_length"]
    with torch.no_grad():
        logits = ref(torch.tensor([ids])).logits[0].double()
    logp = logits.log_softmax(-1)
    # Response token t sits at p + t and is predicted by the logits at p + t - 1.
    manual = [-(logp[p + t - 1].exp() * logp[p + t - 1]).sum().item() for t in range(len(ids) - p)]
    torch.testing.assert_close(torch.tensor(ex["rejected_entropy"]), torch.tensor(manual, dtype=torch.float32),
                               rtol=1e-5, atol=1e-5)
    assert max(manual) > THRESHOLD > min(manual)  # the fixture's reference really cuts segments
    seqs = trainer.train_dataset["chosen_ids"]
    plens = trainer.train_dataset["prompt_length"]
    one = reference_entropy(ref, seqs, plens, batch_size=1)
    many = reference_entropy(ref, seqs, plens, batch_size=4)
    for a, b, c in zip(one, many, trainer.train_dataset["chosen_entropy"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a, torch.tensor(c), rtol=1e-5, atol=1e-5)


def test_entropy_map_is_cached_for_file_datasets(rm_env, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    import segrl.rm.entropy as entropy_mod
    from segrl.rm.data import tokenize_preference_dataset

    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in tiny_rows(4)))
    ref = AutoModelForCausalLM.from_pretrained(rm_env.ref_dir).eval()

    def prepared():
        ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
        return tokenize_preference_dataset(ds, rm_env.tokenizer)

    first = entropy_mod.add_entropy_columns(prepared(), ref)
    calls = []
    real = entropy_mod.reference_entropy
    monkeypatch.setattr(entropy_mod, "reference_entropy", lambda *a, **k: calls.append(1) or real(*a, **k))
    second = entropy_mod.add_entropy_columns(prepared(), ref)
    assert calls == []  # read back from the datasets cache
    assert second["chosen_entropy"] == first["chosen_entropy"]
    with torch.no_grad():
        ref.model.norm.weight.mul_(1.5)  # other reference weights -> other fingerprint -> recomputed
    entropy_mod.add_entropy_columns(prepared(), ref)
    assert calls


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def test_training_updates_every_parameter_and_logs_segment_metrics(rm_env, tmp_path):
    from segrl.rm import SegmentRewardModel, SegmentRewardTrainer

    ds = Dataset.from_list(tiny_rows(8))
    args = seg_config(tmp_path, max_steps=3, learning_rate=1e-2, eval_strategy="steps", eval_steps=3)
    trainer = SegmentRewardTrainer(model=rm_env.init_dir, args=args, train_dataset=ds, eval_dataset=ds,
                                   processing_class=rm_env.tokenizer, ref_model=rm_env.ref_dir)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    unchanged = [n for n, p in before.items() if torch.equal(p, after[n].detach())]
    assert not unchanged, unchanged
    logs = {k: v for entry in trainer.state.log_history for k, v in entry.items()}
    for key in ("loss", "accuracy", "margin", "rm/segments_per_response", "rm/mean_segment_length",
                "eval_loss", "eval_accuracy", "eval_rm/segments_per_response", "eval_rm/mean_segment_length"):
        assert key in logs, key
    assert logs["rm/segments_per_response"] > 1.5  # real segments, not the bandit's single one
    assert 1.0 <= logs["rm/mean_segment_length"] < 10
    # save_model writes the segment settings into config.json.
    trainer.save_model(str(tmp_path / "saved"))
    rm = SegmentRewardModel.from_pretrained(tmp_path / "saved")
    assert rm.threshold == THRESHOLD and rm.reference_model == rm_env.ref_dir and rm.normalizer is None


def test_peft_lora_trains_and_merges(rm_env, tmp_path):
    peft = pytest.importorskip("peft")
    from segrl.rm import SegmentRewardModel, SegmentRewardTrainer

    ds = Dataset.from_list(tiny_rows(4))
    lora = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    trainer = SegmentRewardTrainer(model=rm_env.init_dir, args=seg_config(tmp_path, learning_rate=1e-2),
                                   train_dataset=ds, processing_class=rm_env.tokenizer, ref_model=rm_env.ref_dir,
                                   peft_config=lora)
    trainer.train()
    rm = SegmentRewardModel.from_trainer(trainer)
    rm.save_pretrained(tmp_path / "merged")
    loaded = SegmentRewardModel.from_pretrained(tmp_path / "merged")
    assert not hasattr(loaded.model, "peft_config")
    rows = tiny_rows(2)
    a = rm.score_tokens([r["prompt"] for r in rows], [r["chosen"] for r in rows], normalize=False)[0]
    b = loaded.score_tokens([r["prompt"] for r in rows], [r["chosen"] for r in rows], normalize=False)[0]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


def test_reference_with_other_tokenizer_is_rejected(rm_env, tmp_path):
    from segrl.rm import SegmentRewardTrainer

    with pytest.raises(ValueError, match="reference_model"):
        SegmentRewardTrainer(model=rm_env.init_dir, args=seg_config(tmp_path, ref_model_name_or_path=rm_env.other_dir),
                             train_dataset=Dataset.from_list(tiny_rows(2)), processing_class=rm_env.tokenizer)


@pytest.mark.parametrize(
    "rows,match",
    [
        ([{"prompt": "1+1=", "chosen": "2"}], "rejected"),
        ([{"prompt": "1+1=", "chosen": "2", "rejected": "3"}, {"prompt": "1+2=", "chosen": "3", "rejected": None}],
         "rejected"),
        ([{"prompt": "1+1=", "chosen": "", "rejected": "3"}], "empty"),
        ([{"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": ""}],
           "rejected": [{"role": "assistant", "content": "no"}]}], "empty"),
    ],
)
def test_bad_rows_raise(rm_env, tmp_path, rows, match):
    from segrl.rm import SegmentRewardTrainer

    with pytest.raises(ValueError, match=match):
        SegmentRewardTrainer(model=rm_env.init_dir, args=seg_config(tmp_path), train_dataset=Dataset.from_list(rows),
                             processing_class=rm_env.tokenizer, ref_model=rm_env.ref_dir)


def test_nan_entropy_and_bad_threshold_raise(rm_env, tmp_path):
    from segrl.rm import SegmentRewardConfig, SegmentRewardTrainer

    ds = _with_entropy(tiny_rows(2), rm_env.tokenizer, lambda t: float("nan") if t == 2 else 1.0)
    trainer = SegmentRewardTrainer(model=rm_env.init_dir, args=seg_config(tmp_path), train_dataset=ds,
                                   processing_class=rm_env.tokenizer, ref_model=rm_env.ref_dir)
    batch = trainer.data_collator([ds[0], ds[1]])
    with pytest.raises(ValueError, match="entropy"):
        trainer.compute_loss(trainer.model, dict(batch))
    for bad in (-1.0, float("nan"), "many"):
        with pytest.raises(ValueError, match="segment_threshold"):
            SegmentRewardConfig(output_dir=str(tmp_path), segment_threshold=bad, use_cpu=True)
    config = SegmentRewardConfig(output_dir=str(tmp_path), segment_threshold="inf", use_cpu=True)
    assert config.segment_threshold == math.inf
