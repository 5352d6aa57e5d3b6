"""ASR rejection sampling: generation, scoring, selection, masked SFT (docs/method.md#rejection-sampling)."""

import json
import math

import pytest
import torch

from segrl import ops
from segrl.models.tiny import build_tiny_causal_lm, build_tiny_tokenizer
from segrl.models.tiny_data import load_tiny_prefs
from segrl.rs import ASRRejectionSampler, ASRRejectionSamplingConfig, load_candidates

COMMON = dict(
    per_device_train_batch_size=4, max_steps=2, bf16=False, gradient_checkpointing=False, use_cpu=True,
    report_to="none", logging_steps=1, save_strategy="no", disable_tqdm=True, num_candidates=3, max_new_tokens=10,
)


class StandInRM:
    """The segment RM's scoring interface: token reward (id mod 5 - 2), sequence score = its mean."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def _rewards(self, ids):
        return [float(t % 5 - 2) for t in ids]

    def score_token_ids(self, prompt_ids, response_ids, *, mode="even", normalize=True, reward_form="value",
                        batch_size=8):
        width = max(map(len, response_ids))
        rewards = torch.zeros(len(response_ids), width)
        mask = torch.zeros(len(response_ids), width, dtype=torch.bool)
        for i, r in enumerate(response_ids):
            rewards[i, : len(r)] = torch.tensor(self._rewards(r))
            mask[i, : len(r)] = True
        return rewards, mask

    def sequence_scores(self, prompt_ids, response_ids, *, batch_size=8):
        return torch.tensor([sum(self._rewards(r)) / len(r) for r in response_ids])


@pytest.fixture(scope="module")
def tiny():
    tok = build_tiny_tokenizer()
    policy = build_tiny_causal_lm(tok, hidden_size=32, num_layers=1, seed=1)
    return tok, policy, [r["prompt"] for r in load_tiny_prefs()[:4]]


def _sampler(tiny, tmp_path, rm="standin", **kw):
    tok, policy, prompts = tiny
    import copy

    args = ASRRejectionSamplingConfig(**{**COMMON, "output_dir": str(tmp_path), **kw})
    reward_model = StandInRM(tok) if rm == "standin" else rm
    return ASRRejectionSampler(copy.deepcopy(policy), args, processing_class=tok, reward_model=reward_model,
                               prompts=prompts)


def test_generate_k_candidates_per_prompt(tiny, tmp_path):
    s = _sampler(tiny, tmp_path)
    records = s.generate()
    assert len(records) == 4
    eos = tiny[0].eos_token_id
    for r in records:
        assert len(r["candidate_ids"]) == 3 and len(r["candidates"]) == 3
        for c in r["candidate_ids"]:
            assert 1 <= len(c) <= 10
            assert eos not in c[:-1]  # a response ends at its first EOS
    assert records == _sampler(tiny, tmp_path).generate()  # seeded


def _records():
    # Two prompts, two candidates each, hand-made ids (the tiny tokenizer's EOS is appended below).
    return [
        {"prompt": "1+1=", "prompt_ids": [7, 8], "candidates": ["a", "b"], "candidate_ids": [[10, 11, 12], [13, 14]],
         "scores": [0.5, 0.9], "token_rewards": [[1.0, -1.0, 1.0], [2.0, -2.0]]},
        {"prompt": "2+2=", "prompt_ids": [9], "candidates": ["c", "d"], "candidate_ids": [[15, 16], [17, 18, 19]],
         "scores": [0.7, 0.1], "token_rewards": [[-1.0, 3.0], [0.0, 0.0, 0.0]]},
    ]


def test_select_best_with_asr_mask_hand_values(tiny, tmp_path):
    s = _sampler(tiny, tmp_path, asr_baseline="batch_mean", asr_delta=0.0)
    ds = s.select(_records())
    # best of each prompt: candidate 1 of prompt 0, candidate 0 of prompt 1
    assert ds["score"] == [0.9, 0.7]
    # batch_mean over ALL candidates: (1 - 1 + 1 + 2 - 2 - 1 + 3 + 0 + 0 + 0) / 10 = 0.3
    assert s.selection_metrics["asr/baseline"] == pytest.approx(0.3)
    assert ds["kept"] == [[True, False], [False, True]]
    assert ds["input_ids"][0] == [7, 8, 13, 14]
    assert ds["labels"][0] == [-100, -100, 13, -100]
    assert ds["labels"][1] == [-100, -100, 16]
    expected = ops.asr_mask(torch.tensor([[2.0, -2.0]]), torch.ones(1, 2, dtype=torch.bool), torch.tensor([1]),
                            baseline=0.3)
    assert expected.tolist() == [[True, False]]
    assert s.selection_metrics["asr/kept_token_fraction"] == pytest.approx(2 / 4)
    assert s.selection_metrics["rs/acceptance_rate"] == pytest.approx(2 / 4)
    selected = [json.loads(line) for line in open(tmp_path / "rs_selected.jsonl")]
    assert selected[0]["kept"] == [True, False] and selected[0]["seq_sign"] == 1


def test_auto_delta_is_resolved_over_every_scored_candidate(tiny, tmp_path):
    s = _sampler(tiny, tmp_path, asr_baseline="batch_mean")  # asr_delta defaults to "auto", q = 0.3
    ds = s.select(_records())
    # b = 0.3 (above); |r - b| over all 10 candidate tokens, sorted:
    # [0.3, 0.3, 0.3, 0.7, 0.7, 1.3, 1.3, 1.7, 2.3, 2.7]; rank 0.3 * 9 = 2.7 -> 0.3 + 0.7 * (0.7 - 0.3) = 0.58.
    # (Over the two accepted responses only it would be 1.66.)
    assert s.selection_metrics["asr/delta"] == pytest.approx(0.58)
    # band [-0.28, 0.88]: [2, -2] -> [+, -]; [-1, 3] -> [-, +]
    assert ds["kept"] == [[True, False], [False, True]]
    assert s.selection_metrics["asr/kept_token_fraction"] == pytest.approx(2 / 4)


def test_position_mean_baseline_is_resolved_over_every_candidate(tiny, tmp_path):
    records = _records()
    s = _sampler(tiny, tmp_path, asr_baseline="position_mean", asr_delta=0.0)
    ds = s.select(records)
    every = [tr for r in records for tr in r["token_rewards"]]
    width = max(map(len, every))
    rewards = torch.tensor([tr + [0.0] * (width - len(tr)) for tr in every])
    mask = torch.tensor([[t < len(tr) for t in range(width)] for tr in every])
    b = ops.position_mean_baseline(rewards, mask)
    # accepted: candidate 1 of prompt 0 (row 1) and candidate 0 of prompt 1 (row 2)
    for got, row in zip(ds["kept"], (1, 2)):
        n = len(every[row])
        want = ops.asr_mask(rewards[row: row + 1, :n], mask[row: row + 1, :n], torch.tensor([1]),
                            baseline=b[row: row + 1, :n])
        assert got == want[0].tolist()


def test_select_threshold_and_plain_rs(tiny, tmp_path):
    s = _sampler(tiny, tmp_path, selection="threshold", score_threshold=0.6, mask_type="none")
    ds = s.select(_records())
    assert ds["score"] == [0.9, 0.7]
    assert ds["labels"][0] == [-100, -100, 13, 14]  # plain RS: every response token is trained on
    assert s.selection_metrics["asr/kept_token_fraction"] == 1.0
    with pytest.raises(ValueError, match="no response was accepted"):
        _sampler(tiny, tmp_path, selection="threshold", score_threshold=5.0).select(_records())


def test_masked_sft_loss_is_mean_over_kept_tokens(tiny, tmp_path):
    s = _sampler(tiny, tmp_path)
    ds = s.select(s.score(s.generate()))
    s.train(ds)
    trainer = s.trainer
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    model = trainer.model
    loss = trainer.compute_loss(model, batch)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1)
    labels = batch["labels"][:, 1:]
    kept = labels != -100
    token_logp = logp[:, :-1].gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    expected = -(token_logp * kept).sum() / kept.sum()
    assert kept.sum() < (batch["attention_mask"][:, 1:].sum() - 4 * 6)  # some response tokens are masked
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_training_changes_parameters_and_logs_selection_metrics(tiny, tmp_path):
    s = _sampler(tiny, tmp_path, learning_rate=1e-2, max_steps=3)
    before = {k: p.detach().clone() for k, p in s.model.named_parameters()}
    s.run()
    changed = [k for k, p in s.trainer.model.named_parameters() if not torch.equal(p.detach().cpu(), before[k])]
    assert len(changed) == len(before)
    logs = [h for h in s.trainer.state.log_history if "loss" in h]
    assert len(logs) == 3
    for key in ("asr/kept_token_fraction", "asr/segments_per_response", "asr/mean_segment_length", "asr/fallbacks",
                "rs/acceptance_rate"):
        assert all(math.isfinite(h[key]) for h in logs), key
    assert (tmp_path / "rs_candidates.jsonl").is_file() and (tmp_path / "model.safetensors").is_file()


def test_candidates_file_without_reward_model(tiny, tmp_path):
    tok = tiny[0]
    path = tmp_path / "cands.jsonl"
    rows = []
    for prompt in tiny[2][:2]:
        cands = ["1+1=2;=2", "1+1=3;=3"]
        n = [len(tok(prompt + c + tok.eos_token)["input_ids"]) - len(tok(prompt)["input_ids"]) for c in cands]
        # token rewards without the EOS TRL appends: EOS repeats the last reward
        rows.append({"prompt": prompt, "candidates": cands, "scores": [1.0, 0.0],
                     "token_rewards": [[0.5] * (m - 2) + [-0.5] for m in n]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    records = load_candidates(path, tok)
    assert records[0]["candidate_ids"][0][-1] == tok.eos_token_id
    assert records[0]["token_rewards"][0][-2:] == [-0.5, -0.5]
    s = _sampler(tiny, tmp_path, rm=None, candidates_file=str(path), asr_baseline="zero",
                 asr_delta=0.0)
    s.run()
    ds_labels = s.trainer.train_dataset["labels"]
    assert all(lbl[-1] == -100 and lbl[-2] == -100 for lbl in ds_labels)  # last text token and EOS dropped


def test_missing_reward_model_is_an_error(tiny, tmp_path):
    path = tmp_path / "cands.jsonl"
    path.write_text(json.dumps({"prompt": "1+2=", "candidates": ["1+2=3"], "scores": [1.0]}) + "\n")
    s = _sampler(tiny, tmp_path, rm=None, candidates_file=str(path))
    with pytest.raises(ValueError, match="needs a segment reward model"):
        s.run()


@pytest.mark.parametrize("row, match", [
    ({"prompt": "x"}, "non-empty `candidates`"),
    ({"prompt": "x", "candidates": ["a"], "scores": [1.0, 2.0]}, "`scores` has 2 values for 1 candidates"),
    ({"prompt": "x", "candidates": ["a"], "scores": ["high"]}, "must be a list of numbers"),
    ({"prompt": "x", "candidates": ["a"], "token_rewards": [[1.0] * 9]}, r"`token_rewards\[0\]` in row 0 has 9"),
])
def test_bad_candidates_file(tiny, tmp_path, row, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=match):
        load_candidates(path, tiny[0])


def test_reward_model_tokenizer_mismatch(tiny, tmp_path):
    import copy

    other = copy.deepcopy(tiny[0])
    other.add_tokens(["<|extra|>"])
    s = _sampler(tiny, tmp_path, rm=StandInRM(other))
    records = [{k: v for k, v in r.items() if k not in ("scores", "token_rewards")} for r in _records()]
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        s.score(records)


@pytest.mark.parametrize("kw, match", [
    (dict(selection="threshold"), "needs `score_threshold`"),
    (dict(num_candidates=0), "`num_candidates` must be >= 1"),
    (dict(temperature=0.0), "`temperature` must be > 0"),
    (dict(sequence_score="max"), "`sequence_score` must be one of"),
    (dict(mask_type="segments"), "`mask_type` must be one of"),
])
def test_bad_config(kw, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        ASRRejectionSamplingConfig(**{**COMMON, "output_dir": str(tmp_path), **kw})
