"""How well a token-reward source assigns credit, measured against the task's oracle.

The oracle (:func:`segrl.tasks.oracle_token_rewards`) labels the result digits of every step and of
the answer +1 (correct) or -1 (wrong). A learned source assigns credit well when its token reward is
higher on correct result digits than on wrong ones: the ROC AUC of "reward predicts correct",
pooled over chosen and rejected responses, within chosen and within rejected responses, and within
each response (rewards centred on the response's mean: a sequence-level signal alone gives 0.5 there,
and it is what a sequence-mean ASR baseline relies on).
"""

from __future__ import annotations

import torch

__all__ = ["credit_auc", "segment_rm_credit"]


def credit_auc(rewards_by_side: dict[str, list[list[float]]], oracle_by_side: dict[str, list[list[float]]]) -> dict:
    """AUCs of token rewards against oracle signs (only oracle-labelled tokens count).

    Both arguments map ``"chosen"`` / ``"rejected"`` to one list per response (same lengths).
    Returns ``auc`` (pooled), ``auc_chosen``, ``auc_rejected`` (``None`` when a side has one class only),
    ``auc_within_response`` (rewards centred on their response's mean, pooled) and the token counts.
    The side AUCs still compare tokens *across* responses, so a response-level score alone lifts
    them above 0.5; ``auc_within_response`` does not.
    """
    from sklearn.metrics import roc_auc_score

    def auc(y, s):
        return float(roc_auc_score(y, s)) if 0 < sum(y) < len(y) else None

    out, pooled_y, pooled_s, centred_y, centred_s = {}, [], [], [], []
    for side in ("chosen", "rejected"):
        y, s = [], []
        for rewards, oracle in zip(rewards_by_side[side], oracle_by_side[side]):
            if len(rewards) != len(oracle):
                raise ValueError(f"{side}: a response has {len(rewards)} rewards but {len(oracle)} oracle labels")
            mean = sum(rewards) / max(1, len(rewards))
            for r, o in zip(rewards, oracle):
                if o != 0:
                    y.append(int(o > 0))
                    s.append(float(r))
                    centred_y.append(int(o > 0))
                    centred_s.append(float(r) - mean)
        out[f"auc_{side}"] = auc(y, s)
        out[f"n_{side}_correct"], out[f"n_{side}_wrong"] = sum(y), len(y) - sum(y)
        pooled_y += y
        pooled_s += s
    out["auc"] = auc(pooled_y, pooled_s)
    # Rewards minus their response's mean: only the within-response ranking counts (what a
    # sequence-mean ASR baseline sees; a bandit RM's constant token rewards score 0.5 here).
    out["auc_within_response"] = auc(centred_y, centred_s)
    return out


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


def mask_credit(rewards_by_side: dict, oracle_by_side: dict, options, *, batch_size: int = 32,
                boundary_by_side: dict | None = None) -> dict:
    """Which tokens a keep-mask keeps, by oracle class, on preference pairs.

    Chosen rows get sequence sign +1, rejected -1, and the mask (``options``: a
    :class:`segrl.token_rewards.MaskOptions`) is computed on batches of ``batch_size`` pairs as
    ASR-DPO does (the batch-mean baseline pools the 2B rows of a batch). Returns, for each side, the
    kept fraction of tokens whose oracle label agrees with the side (``agree``: correct result digits
    of chosen, wrong ones of rejected), disagrees (``disagree``) or is 0 (``unlabelled``: operands,
    ``+``, ``=``, ``;``, EOS), and ``kept`` overall. A mask that assigns credit keeps ``agree`` tokens
    more often than ``disagree`` ones.
    """
    from segrl.token_rewards import compute_keep_mask

    counts = {s: {k: [0, 0] for k in ("agree", "disagree", "unlabelled")} for s in ("chosen", "rejected")}
    n = len(rewards_by_side["chosen"])
    for lo in range(0, n, batch_size):
        rows = range(lo, min(n, lo + batch_size))
        lists = [rewards_by_side["chosen"][i] for i in rows] + [rewards_by_side["rejected"][i] for i in rows]
        width = max(map(len, lists))
        r = torch.zeros(len(lists), width)
        m = torch.zeros(len(lists), width, dtype=torch.bool)
        for j, values in enumerate(lists):
            r[j, : len(values)] = torch.tensor(values, dtype=torch.float32)
            m[j, : len(values)] = True
        boundary = None
        if boundary_by_side is not None:
            flags = [boundary_by_side["chosen"][i] for i in rows] + [boundary_by_side["rejected"][i] for i in rows]
            boundary = torch.zeros_like(m)
            for j, f in enumerate(flags):
                boundary[j, : len(f)] = torch.tensor(f, dtype=torch.bool)
        sign = torch.tensor([1] * len(rows) + [-1] * len(rows))
        keep = compute_keep_mask(r, m, sign, options, boundary).keep
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
