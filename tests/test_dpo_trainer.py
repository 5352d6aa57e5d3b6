"""ASRDPOTrainer against stock TRL DPOTrainer and against losses computed by hand (docs/method.md#asr-mask, #dpo).

Every expected value here is computed independently of segrl.dpo: per-token log-probs come from a
plain ``model(input_ids).logits`` forward, positions from the dataset's ``prompt_ids`` lengths, and
masks from :mod:`segrl.ops` on the raw reward lists.
"""

import copy
import math
import os
import random
import tempfile

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from segrl import ops
from segrl.dpo import ASRDPOConfig, ASRDPOTrainer
from segrl.models.tiny import build_tiny_causal_lm, build_tiny_tokenizer
from segrl.models.tiny_data import load_tiny_prefs

N_ROWS = 8
BATCH = 4
COMMON = dict(
    output_dir=os.path.join(tempfile.gettempdir(), "segrl-test-dpo"),  # replaced per module below
    per_device_train_batch_size=BATCH, max_steps=2, bf16=False, gradient_checkpointing=False,
    use_cpu=True, report_to="none", logging_steps=1, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
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
    rows = load_tiny_prefs()[:N_ROWS]
    rng = random.Random(0)
    for r in rows:
        # TRL tokenises prompt + completion + EOS jointly; the tiny prompts end on a token boundary.
        for side in ("chosen", "rejected"):
            n = len(tok(r["prompt"] + r[side] + tok.eos_token)["input_ids"]) - len(tok(r["prompt"])["input_ids"])
            r[f"{side}_token_rewards"] = [round(rng.gauss(0, 1), 3) for _ in range(n)]
    return tok, policy, ref, rows


def _trainer(tiny, rows, cls=ASRDPOTrainer, cfg_cls=ASRDPOConfig, tmp=None, **kw):
    tok, policy, ref, _ = tiny
    ds = Dataset.from_list(rows)
    if cls is DPOTrainer:
        ds = ds.remove_columns([c for c in ds.column_names if c.endswith("token_rewards")])
    args = cfg_cls(**{**COMMON, **({"output_dir": str(tmp)} if tmp else {}), **kw})
    eval_ds = ds if args.eval_strategy != "no" else None
    return cls(model=copy.deepcopy(policy), ref_model=copy.deepcopy(ref), args=args, train_dataset=ds,
               eval_dataset=eval_ds, processing_class=tok)


def _loss_and_grads(trainer, n=BATCH):
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(n)])
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in trainer.model.named_parameters() if p.requires_grad}


def _assert_same(a, b, atol=1e-6):
    (la, ga), (lb, gb) = a, b
    assert torch.allclose(la, lb, atol=atol, rtol=1e-5), (la.item(), lb.item())
    for k in ga:
        assert torch.allclose(ga[k], gb[k], atol=atol, rtol=1e-4), k


def _full_mask_rows(rows):
    # Chosen tokens all above and rejected all below the batch mean: the ASR mask keeps everything.
    out = []
    for r in rows:
        r = dict(r)
        r["chosen_token_rewards"] = [1.0] * len(r["chosen_token_rewards"])
        r["rejected_token_rewards"] = [-1.0] * len(r["rejected_token_rewards"])
        out.append(r)
    return out


LOSS_SETTINGS = [
    dict(loss_type=["sigmoid"]),
    dict(loss_type=["ipo"]),
    dict(loss_type=["sigmoid_norm"]),
    dict(loss_type=["hinge"]),
    dict(loss_type=["robust"], label_smoothing=0.1),
    dict(loss_type=["apo_zero"]),
    dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5]),
    dict(loss_type=["sigmoid"], ld_alpha=0.5, use_weighting=True),
    dict(loss_type=["sigmoid"], f_divergence_type="js_divergence"),
    dict(loss_type=["exo_pair"], label_smoothing=1e-3),
    dict(loss_type=["nca_pair"]),
    dict(loss_type=["bco_pair"]),
    dict(loss_type=["sppo_hard"]),
    dict(loss_type=["aot"]),
    dict(loss_type=["aot_unpaired"]),
    dict(loss_type=["apo_down"]),
    dict(loss_type=["discopop"]),
]


def _loss_id(settings):
    extra = "-ld-wpo" if "ld_alpha" in settings else "-js" if "f_divergence_type" in settings else ""
    return "+".join(settings["loss_type"]) + extra


@pytest.mark.parametrize("settings", LOSS_SETTINGS, ids=_loss_id)
def test_full_mask_equals_trl(tiny, settings):
    """mask_type='none', and an ASR mask that keeps every token, give TRL's loss and gradients."""
    stock = _loss_and_grads(_trainer(tiny, tiny[3], cls=DPOTrainer, cfg_cls=DPOConfig, **settings))
    _assert_same(stock, _loss_and_grads(_trainer(tiny, tiny[3], mask_type="none", **settings)))
    full = _trainer(tiny, _full_mask_rows(tiny[3]), mask_type="asr", asr_baseline="batch_mean", asr_delta=0.0,
                    **settings)
    _assert_same(stock, _loss_and_grads(full))
    assert full._metrics["eval"]["asr/kept_token_fraction_chosen"] == [1.0]
    assert full._metrics["eval"]["asr/kept_token_fraction_rejected"] == [1.0]


def test_full_mask_precomputed_reference_equals_trl(tiny):
    stock = _trainer(tiny, tiny[3], cls=DPOTrainer, cfg_cls=DPOConfig, precompute_ref_log_probs=True)
    asr = _trainer(tiny, _full_mask_rows(tiny[3]), precompute_ref_log_probs=True, asr_baseline="batch_mean",
                   asr_delta=0.0)
    _assert_same(_loss_and_grads(stock), _loss_and_grads(asr), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Independent reference computation
# ----------------------------------------------------------------------------------------------


def _manual_token_logps(model, trainer, rows_idx):
    """log pi(y_t | x, y_<t) per completion token from a plain forward, chosen rows then rejected rows."""
    out, starts = [], []
    examples = [trainer.train_dataset[i] for i in rows_idx]
    for side in ("chosen", "rejected"):
        for ex in examples:
            p, c = ex["prompt_ids"], ex[f"{side}_ids"]
            ids = torch.tensor([p + c])
            logp = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)[0]
            # Completion token t sits at position len(p) + t and is predicted by position len(p) + t - 1.
            pos = torch.arange(len(c)) + len(p) - 1
            out.append(logp[pos, torch.tensor(c)])
            starts.append(len(p))
    return out, starts


def _expected_keep(trainer, rows_idx, **mask_kw):
    examples = [trainer.train_dataset[i] for i in rows_idx]
    lists = [ex["chosen_token_rewards"] for ex in examples] + [ex["rejected_token_rewards"] for ex in examples]
    width = max(map(len, lists))
    rewards = torch.zeros(len(lists), width)
    mask = torch.zeros(len(lists), width, dtype=torch.bool)
    for i, r in enumerate(lists):
        rewards[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = True
    sign = torch.tensor([1] * len(examples) + [-1] * len(examples))
    keep = ops.asr_mask(rewards, mask, sign, **mask_kw)
    return [keep[i, : len(r)] for i, r in enumerate(lists)]


@pytest.mark.parametrize("loss_type", ["sigmoid", "sigmoid_norm", "ipo"])
def test_masked_loss_matches_hand_computation(tiny, loss_type):
    """Masked sums for policy and reference, and (ipo / sigmoid_norm) the kept-token count."""
    beta, delta = 0.1, 0.3
    trainer = _trainer(tiny, tiny[3], loss_type=[loss_type], asr_baseline="batch_mean", asr_delta=delta, beta=beta)
    loss, _ = _loss_and_grads(trainer)
    idx = list(range(BATCH))
    keep = _expected_keep(trainer, idx, baseline="batch_mean", delta=delta)
    assert any(not k.all() for k in keep), "the test needs a partial mask"
    with torch.no_grad():
        pol, _ = _manual_token_logps(trainer.model, trainer, idx)
        ref, _ = _manual_token_logps(trainer.ref_model, trainer, idx)
    ratios = torch.stack([((p - r) * k).sum() for p, r, k in zip(pol, ref, keep)])
    counts = torch.stack([k.sum().float() for k in keep])
    c_ratio, r_ratio = ratios[:BATCH], ratios[BATCH:]
    if loss_type == "sigmoid":
        expected = -F.logsigmoid(beta * (c_ratio - r_ratio)).mean()
    else:
        delta_norm = c_ratio / counts[:BATCH] - r_ratio / counts[BATCH:]
        expected = (-F.logsigmoid(beta * delta_norm) if loss_type == "sigmoid_norm"
                    else (delta_norm - 1 / (2 * beta)) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)


def test_masked_positions_get_exactly_zero_gradient(tiny):
    """The final hidden state at a masked position feeds only its own (discarded) log-prob."""
    trainer = _trainer(tiny, tiny[3], asr_baseline="batch_mean", asr_delta=0.3)
    captured = {}

    def keep_grad(_module, _inputs, output):
        output.retain_grad()
        captured["h"] = output

    handle = trainer.model.model.norm.register_forward_hook(keep_grad)
    _loss_and_grads(trainer)
    handle.remove()
    grad = captured["h"].grad.abs().sum(dim=-1)  # (2B, L): position j produces log-prob index j
    idx = list(range(BATCH))
    keep = _expected_keep(trainer, idx, baseline="batch_mean", delta=0.3)
    examples = [trainer.train_dataset[i] for i in idx]
    starts = [len(ex["prompt_ids"]) for ex in examples] * 2
    expected_live = torch.zeros_like(grad, dtype=torch.bool)
    for i, (k, s) in enumerate(zip(keep, starts)):
        expected_live[i, s - 1 + torch.nonzero(k).flatten()] = True
    assert bool((grad[~expected_live] == 0).all()), "a masked position received gradient"
    assert bool((grad[expected_live] > 0).all()), "a kept position received no gradient"


def test_pivot_lands_on_the_right_logprob_index(tiny):
    """A single above-baseline token at completion position k keeps exactly log-prob index start + k - 1."""
    k = 3
    rows = []
    for r in tiny[3][:BATCH]:
        r = dict(r)
        r["chosen_token_rewards"] = [-1.0] * len(r["chosen_token_rewards"])
        r["chosen_token_rewards"][k] = 1.0
        r["rejected_token_rewards"] = [-1.0] * len(r["rejected_token_rewards"])
        rows.append(r)
    trainer = _trainer(tiny, rows, asr_baseline="zero", asr_delta=0.0)
    captured = []
    handle = trainer.model.register_forward_hook(lambda m, i, o: captured.append(o.log_probs.detach()))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(BATCH)])
    trainer.compute_loss(trainer.model, batch)
    handle.remove()
    per_token = captured[0]  # TRL's per_token_logps of the policy, (2B, L - 1)
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits.float(), dim=-1)
    for i in range(BATCH):
        start = len(trainer.train_dataset[i]["prompt_ids"])
        nonzero = torch.nonzero(per_token[i]).flatten().tolist()
        assert nonzero == [start + k - 1]
        token = batch["input_ids"][i, start + k]
        assert per_token[i, start + k - 1].item() == pytest.approx(logp[i, start + k - 1, token].item(), abs=1e-5)
    # rejected rows: every completion token kept
    for i in range(BATCH, 2 * BATCH):
        n = int(batch["completion_mask"][i].sum())
        assert int((per_token[i] != 0).sum()) == n


@pytest.mark.parametrize("settings", [dict(loss_type=["sigmoid"]), dict(loss_type=["ipo"], ld_alpha=0.5)])
def test_precomputed_reference_equals_on_the_fly(tiny, settings):
    on_the_fly = _trainer(tiny, tiny[3], asr_delta=0.3, **settings)
    pre = _trainer(tiny, tiny[3], asr_delta=0.3, precompute_ref_log_probs=True, **settings)
    assert "ref_chosen_token_logps" in pre.train_dataset.column_names
    _assert_same(_loss_and_grads(on_the_fly), _loss_and_grads(pre), atol=1e-5)


def test_precompute_respects_truncation(tiny):
    on_the_fly = _trainer(tiny, tiny[3], max_length=12)
    pre = _trainer(tiny, tiny[3], max_length=12, precompute_ref_log_probs=True)
    ex = pre.train_dataset[0]
    assert len(ex["ref_chosen_token_logps"]) == 12 - len(ex["prompt_ids"])
    _assert_same(_loss_and_grads(on_the_fly), _loss_and_grads(pre), atol=1e-5)


@pytest.mark.parametrize("mask_type", ["tokenwise", "stepwise"])
def test_mask_variants_follow_the_ops(tiny, mask_type):
    trainer = _trainer(tiny, tiny[3], mask_type=mask_type, asr_baseline="zero")
    captured = []
    handle = trainer.model.register_forward_hook(lambda m, i, o: captured.append(o.log_probs.detach()))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(BATCH)])
    trainer.compute_loss(trainer.model, batch)
    handle.remove()
    tok = tiny[0]
    for i in range(2 * BATCH):
        ex = trainer.train_dataset[i % BATCH]
        side = "chosen" if i < BATCH else "rejected"
        r = torch.tensor([ex[f"{side}_token_rewards"]])
        m = torch.ones_like(r, dtype=torch.bool)
        sign = torch.tensor([1 if i < BATCH else -1])
        if mask_type == "tokenwise":
            keep = ops.tokenwise_mask(r, m, sign, baseline="zero")
        else:
            texts = [tok.decode([t]) for t in ex[f"{side}_ids"]]
            boundary = torch.tensor([[any(ch in s for ch in ".!?;:\n") for s in texts]])
            assert boundary.any()
            keep = ops.stepwise_mask(r, m, boundary, sign, baseline="zero")
        start = len(ex["prompt_ids"])
        got = captured[0][i, start - 1: start - 1 + r.shape[1]] != 0
        assert torch.equal(got, keep[0]), (mask_type, i)


def test_training_changes_every_parameter_and_logs_metrics(tiny, tmp_path):
    trainer = _trainer(tiny, tiny[3], tmp=tmp_path, max_steps=3, learning_rate=1e-2, asr_delta=0.2,
                       eval_strategy="steps", eval_steps=3, per_device_eval_batch_size=BATCH)
    before = {k: p.detach().clone() for k, p in trainer.model.named_parameters()}
    trainer.train()
    for k, p in trainer.model.named_parameters():
        assert not torch.equal(p, before[k]), f"{k} did not change"
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3
    for key in ("asr/kept_token_fraction_chosen", "asr/kept_token_fraction_rejected", "asr/segments_per_response",
                "asr/mean_segment_length", "asr/fallbacks", "asr/baseline", "asr/delta"):
        assert all(key in h and math.isfinite(h[key]) for h in logs), key
    assert all(0 < h["asr/kept_token_fraction_chosen"] < 1 for h in logs)
    assert all(h["asr/delta"] == 0.2 for h in logs)
    (evals,) = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert 0 < evals["eval_asr/kept_token_fraction_rejected"] < 1 and "eval_asr/fallbacks" in evals


def test_empty_mask_fallback_is_counted(tiny):
    # Every chosen token below and every rejected token above the baseline: both masks would be empty.
    rows = []
    for r in tiny[3][:BATCH]:
        r = dict(r)
        r["chosen_token_rewards"] = [-1.0] * len(r["chosen_token_rewards"])
        r["rejected_token_rewards"] = [1.0] * len(r["rejected_token_rewards"])
        rows.append(r)
    full = _trainer(tiny, rows, asr_baseline="zero", asr_delta=0.0)
    _loss_and_grads(full)
    assert full._metrics["eval"]["asr/fallbacks"] == [2.0 * BATCH]
    assert full._metrics["eval"]["asr/kept_token_fraction_chosen"] == [1.0]
    empty = _trainer(tiny, rows, asr_baseline="zero", asr_delta=0.0, asr_empty="none")
    loss, _ = _loss_and_grads(empty)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)  # every log-ratio is 0


def test_peft_precomputed_reference_equals_on_the_fly(tiny):
    """With LoRA and no ref_model, the reference is the adapter-disabled policy in both paths."""
    peft = pytest.importorskip("peft")
    tok, policy, _, rows = tiny
    losses = []
    for precompute in (False, True):
        config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        torch.manual_seed(0)  # the same (non-zero) adapter init in both trainers
        trainer = ASRDPOTrainer(model=copy.deepcopy(policy), args=ASRDPOConfig(**COMMON, asr_delta=0.3,
                                precompute_ref_log_probs=precompute), train_dataset=Dataset.from_list(rows),
                                processing_class=tok, peft_config=config)
        losses.append(_loss_and_grads(trainer)[0])
    assert losses[0].item() == pytest.approx(losses[1].item(), abs=1e-5)
    assert abs(losses[0].item() - math.log(2)) > 1e-4  # the adapter moved the policy away from the reference


# ----------------------------------------------------------------------------------------------
# asr_delta="auto": resolved once over the training set, never per micro-batch
# ----------------------------------------------------------------------------------------------


def _all_rewards(trainer):
    lists = [ex[f"{side}_token_rewards"] for side in ("chosen", "rejected") for ex in trainer.train_dataset]
    width = max(map(len, lists))
    rewards = torch.zeros(len(lists), width)
    mask = torch.zeros(len(lists), width, dtype=torch.bool)
    for i, r in enumerate(lists):
        rewards[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = True
    return rewards, mask


def test_auto_delta_is_resolved_once_over_the_training_set(tiny):
    trainer = _trainer(tiny, tiny[3])  # defaults: sequence_mean, delta "auto", q 0.3
    rewards, mask = _all_rewards(trainer)  # 8 pairs, far below the 100k-token sample cap: the whole set
    want = ops.resolve_delta(rewards, mask, "sequence_mean", "auto", 0.3)
    assert trainer.asr_delta == pytest.approx(want, rel=1e-6) and want > 0
    # The first micro-batch alone would give another delta; the mask must use the training-set one.
    idx = list(range(BATCH))
    batch_r = rewards[[*idx, *(i + N_ROWS for i in idx)]]
    batch_m = mask[[*idx, *(i + N_ROWS for i in idx)]]
    per_batch = ops.resolve_delta(batch_r, batch_m, "sequence_mean", "auto", 0.3)
    assert per_batch != pytest.approx(want, rel=1e-3), "the test needs a batch whose own delta differs"
    captured = []
    handle = trainer.model.register_forward_hook(lambda m, i, o: captured.append(o.log_probs.detach()))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in idx])
    trainer.compute_loss(trainer.model, batch)
    handle.remove()
    keep = _expected_keep(trainer, idx, baseline="sequence_mean", delta=want)
    other = _expected_keep(trainer, idx, baseline="sequence_mean", delta=per_batch)
    assert any(not torch.equal(a, b) for a, b in zip(keep, other)), "the two deltas must give different masks"
    for i, k in enumerate(keep):
        start = len(trainer.train_dataset[i % BATCH]["prompt_ids"])
        assert torch.equal(captured[0][i, start - 1: start - 1 + len(k)] != 0, k), i
    assert trainer._metrics["eval"]["asr/delta"] == [trainer.asr_delta]


def test_auto_delta_sample_is_seeded_and_capped(tiny, monkeypatch):
    import segrl.dpo.trainer as dpo_trainer

    trainer = _trainer(tiny, tiny[3])
    monkeypatch.setattr(dpo_trainer, "DELTA_SAMPLE_TOKENS", 40)
    r1, m1 = trainer._sample_token_rewards(trainer.train_dataset)
    r2, m2 = trainer._sample_token_rewards(trainer.train_dataset)
    assert torch.equal(r1, r2) and torch.equal(m1, m2)  # same seed, same sample
    assert 0 < int(m1.sum()) <= 40 or m1.shape[0] == 2  # at most the cap (one pair at least)
    assert m1.shape[0] % 2 == 0 and m1.shape[0] < 2 * N_ROWS


def test_float_delta_still_works(tiny):
    trainer = _trainer(tiny, tiny[3], asr_delta=0.25)
    assert trainer.asr_delta == 0.25 and trainer._mask_options["delta"] == 0.25


# ----------------------------------------------------------------------------------------------
# truncation_mode
# ----------------------------------------------------------------------------------------------


def test_keep_end_truncation_keeps_the_last_token_rewards(tiny):
    """Guards the injected bug "DPO `truncation_mode` keep_end handled as keep_start".

    With ``keep_end`` TRL keeps the *end* of prompt + completion, so a completion longer than
    ``max_length`` keeps its last tokens; its per-token columns (token rewards, reference
    log-probs) must then be the last values of each list, not the first. The trainer must also hand
    its ``truncation_mode`` to the collator.
    """
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from segrl.dpo.collator import DataCollatorForASRPreference

    examples = [{"prompt_ids": [1, 2], "chosen_ids": [10, 11, 12, 13, 14, 15], "rejected_ids": [20, 21, 22],
                 "chosen_token_rewards": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "rejected_token_rewards": [6.0, 7.0, 8.0]}]
    for mode, chosen, rejected in (("keep_end", [1.0, 2.0, 3.0, 4.0, 5.0], [6.0, 7.0, 8.0]),
                                   ("keep_start", [0.0, 1.0, 2.0], [6.0, 7.0, 8.0])):
        base = DataCollatorForPreference(pad_token_id=0, max_length=5, truncation_mode=mode)
        out = DataCollatorForASRPreference(base, mode)(examples)
        n_c, n_r = out["completion_mask"].sum(dim=1).tolist()
        assert out["token_rewards"][0, :n_c].tolist() == chosen, mode
        assert out["token_rewards"][1, :n_r].tolist() == rejected, mode
    trainer = _trainer(tiny, tiny[3], max_length=64, truncation_mode="keep_end")
    assert trainer.data_collator.truncation_mode == "keep_end"


def test_position_mean_baseline_follows_the_ops(tiny):
    """asr_baseline='position_mean' is the batch mean per relative-position bin over the 2B rows of the batch."""
    trainer = _trainer(tiny, tiny[3], asr_baseline="position_mean", asr_delta=0.0)
    idx = list(range(BATCH))
    captured = []
    handle = trainer.model.register_forward_hook(lambda m, i, o: captured.append(o.log_probs.detach()))
    trainer.compute_loss(trainer.model, trainer.data_collator([trainer.train_dataset[i] for i in idx]))
    handle.remove()
    keep = _expected_keep(trainer, idx, baseline="position_mean", delta=0.0)
    other = _expected_keep(trainer, idx, baseline="sequence_mean", delta=0.0)
    assert any(not torch.equal(a, b) for a, b in zip(keep, other)), "the test needs the two baselines to differ"
    for i, k in enumerate(keep):
        start = len(trainer.train_dataset[i % BATCH]["prompt_ids"])
        assert torch.equal(captured[0][i, start - 1: start - 1 + len(k)] != 0, k), i


def test_sft_term_is_over_the_full_chosen_response(tiny):
    """loss_type ["sigmoid", "sft"] with a partial mask: the masked DPO loss plus weight x the mean NLL of
    every chosen token (not only the kept ones), computed by hand."""
    beta, delta, weight = 0.1, 0.3, 0.5
    trainer = _trainer(tiny, tiny[3], loss_type=["sigmoid", "sft"], loss_weights=[1.0, weight],
                       asr_baseline="batch_mean", asr_delta=delta, beta=beta)
    loss, _ = _loss_and_grads(trainer)
    idx = list(range(BATCH))
    keep = _expected_keep(trainer, idx, baseline="batch_mean", delta=delta)
    assert any(not k[:].all() for k in keep[:BATCH]), "the test needs a partial chosen mask"
    with torch.no_grad():
        pol, _ = _manual_token_logps(trainer.model, trainer, idx)
        ref, _ = _manual_token_logps(trainer.ref_model, trainer, idx)
    ratios = torch.stack([((p - r) * k).sum() for p, r, k in zip(pol, ref, keep)])
    dpo = -F.logsigmoid(beta * (ratios[:BATCH] - ratios[BATCH:])).mean()
    nll = -torch.cat(pol[:BATCH]).mean()  # every chosen token, kept or dropped
    assert loss.item() == pytest.approx((dpo + weight * nll).item(), rel=1e-5, abs=1e-6)
    kept_nll = -torch.cat([p[k] for p, k in zip(pol[:BATCH], keep[:BATCH])]).mean()
    assert abs((kept_nll - nll).item()) > 1e-3  # the two readings differ here, so the check above has teeth
    assert trainer._metrics["eval"]["asr/sft_loss"] == [pytest.approx(nll.item(), rel=1e-5)]
