"""How well a token-reward source assigns credit, measured against the task's oracle.

The oracle (:func:`segrl.tasks.oracle_token_rewards`) labels the result digits of every step and of
the answer +1 (correct) or -1 (wrong). The metrics themselves live in :mod:`segrl.credit`
(docs/method.md#token-credit); this module applies them to the pipeline's preference rows.
"""

from __future__ import annotations

import torch

__all__ = ["credit_auc", "implicit_credit", "mask_credit", "segment_rm_credit"]


def credit_auc(rewards_by_side: dict[str, list[list[float]]], oracle_by_side: dict[str, list[list[float]]]) -> dict:
    """Token-credit metrics (:func:`segrl.credit.credit_metrics`) of per-response reward lists.

    Both arguments map ``"chosen"`` / ``"rejected"`` to one list per response (same lengths); the
    oracle values' signs are the labels (0 unlabelled). Returns ``auc`` (pooled), ``auc_chosen``,
    ``auc_rejected`` (``None`` when a side has one class only), ``auc_within_response`` (rewards
    centred on their response's mean, pooled), the per-side within-response AUCs, the first-error
    localisation numbers and the token counts. The side AUCs still compare tokens *across*
    responses, so a response-level score alone lifts them above 0.5; ``auc_within_response`` does not.
    """
    from segrl.credit import credit_metrics, labels_from_values, pad_lists

    rewards, labels, side = [], [], []
    for name, sign in (("chosen", 1), ("rejected", -1)):
        for i, (r, o) in enumerate(zip(rewards_by_side[name], oracle_by_side[name])):
            if len(r) != len(o):
                raise ValueError(f"{name}: a response has {len(r)} rewards but {len(o)} oracle labels")
            rewards.append(r)
            labels.append(labels_from_values(o, len(o), ends_with_eos=False, column=f"{name}_token_rewards", row=i))
            side.append(sign)
    values, mask = pad_lists(rewards)
    lab, _ = pad_lists(labels, dtype=torch.long)
    return credit_metrics(values, lab, mask, side=torch.tensor(side))


@torch.no_grad()
def segment_rm_credit(rm, rows, *, max_rows: int = 400, normalize: bool = True) -> dict:
    """:func:`credit_auc` of a :class:`segrl.rm.SegmentRewardModel`'s spread token rewards on preference
    rows carrying oracle columns (``chosen_token_rewards`` / ``rejected_token_rewards``)."""
    rows = list(rows)[:max_rows]
    prompts = [r["prompt"] for r in rows]
    rewards, oracle = {}, {}
    for side in ("chosen", "rejected"):
        values, mask = rm.score_tokens(prompts, [r[side] for r in rows], normalize=normalize, batch_size=64)
        rewards[side] = [values[b, : int(mask[b].sum())].tolist() for b in range(len(rows))]
        oracle[side] = [r[f"{side}_token_rewards"] for r in rows]
    return credit_auc(rewards, oracle)


@torch.no_grad()
def implicit_credit(policy, ref_model, rows, *, beta: float = 0.1, max_rows: int = 400, batch_size: int = 64) -> dict:
    """Token-credit metrics of the implicit DPO reward ``beta * (log pi - log pi_ref)`` of a policy / reference
    pair (models or paths) on preference rows carrying oracle columns."""
    from segrl.rm.evaluate import evaluate_credit
    from segrl.token_rewards import ImplicitTokenRewards, _tokenizer_at

    tokenizer = _tokenizer_at(policy) or _tokenizer_at(ref_model)
    if tokenizer is None:
        raise ValueError("`policy` / `ref_model` carry no tokenizer")
    source = ImplicitTokenRewards(str(policy), str(ref_model), beta=beta, policy_tokenizer=tokenizer,
                                  batch_size=batch_size)
    return evaluate_credit(source, list(rows)[:max_rows], tokenizer, labels="columns",
                           label_columns=("chosen_token_rewards", "rejected_token_rewards"), batch_size=batch_size)


def mask_credit(rewards_by_side: dict, oracle_by_side: dict, options, *, batch_size: int = 32,
                boundary_by_side: dict | None = None) -> dict:
    """Which tokens a keep-mask keeps, by oracle class, on preference pairs.

    Chosen rows get sequence sign +1, rejected -1, and the mask (``options``: a
    :class:`segrl.asr_options.ASRArguments`) is computed on batches of ``batch_size`` pairs as
    ASR-DPO does (the batch-mean baseline pools the 2B rows of a batch; an ``"auto"`` delta is
    resolved once over all rows). Returns, for each side, the
    kept fraction of tokens whose oracle label agrees with the side (``agree``: correct result digits
    of chosen, wrong ones of rejected), disagrees (``disagree``) or is 0 (``unlabelled``: operands,
    ``+``, ``=``, ``;``, EOS), and ``kept`` overall. A mask that assigns credit keeps ``agree`` tokens
    more often than ``disagree`` ones.
    """
    from segrl import ops
    from segrl.padding import pad_rows

    kwargs = options.mask_kwargs()
    if kwargs["kind"] == "asr" and kwargs["delta"] == "auto":
        # Resolved once over every row, as ASR-DPO resolves it over its training set (never per batch).
        every = list(rewards_by_side["chosen"]) + list(rewards_by_side["rejected"])
        values, attention = pad_rows(every, dtype=torch.float32)
        kwargs["delta"] = ops.resolve_delta(values, attention.bool(), kwargs["baseline"], "auto",
                                            kwargs["delta_quantile"])
    counts = {s: {k: [0, 0] for k in ("agree", "disagree", "unlabelled")} for s in ("chosen", "rejected")}
    n = len(rewards_by_side["chosen"])
    for lo in range(0, n, batch_size):
        rows = range(lo, min(n, lo + batch_size))
        lists = [rewards_by_side["chosen"][i] for i in rows] + [rewards_by_side["rejected"][i] for i in rows]
        r, m = pad_rows(lists, 0.0, dtype=torch.float32)
        m = m.bool()
        boundary = None
        if boundary_by_side is not None:
            flags = [boundary_by_side["chosen"][i] for i in rows] + [boundary_by_side["rejected"][i] for i in rows]
            boundary, _ = pad_rows(flags, False, dtype=torch.bool, width=m.shape[1])
        sign = ops.preference_sign(len(rows))
        keep = ops.keep_mask(r, m, sign, is_boundary=boundary, **kwargs).keep
        for j, i in enumerate(list(rows) * 2):
            side = "chosen" if j < len(rows) else "rejected"
            s = 1 if side == "chosen" else -1
            for t, label in enumerate(oracle_by_side[side][i]):
                cls = "unlabelled" if label == 0 else ("agree" if label * s > 0 else "disagree")
                counts[side][cls][0] += int(keep[j, t])
                counts[side][cls][1] += 1
    out = {}
    for side, by_cls in counts.items():
        out[side] = {cls: (k / total if total else None) for cls, (k, total) in by_cls.items()}
        kept = sum(k for k, _ in by_cls.values())
        out[side]["kept"] = kept / max(1, sum(t for _, t in by_cls.values()))
    return out
