#!/usr/bin/env python
"""Which tokens each keep-mask of the experiment keeps, by oracle class (no training).

For the training pairs of one seed of a finished ``segrl experiment`` run, score every response with
the seed's segment RM (as ASR-DPO does), build each mask, and report the kept fraction of tokens the
oracle marks as agreeing with the pair's label (correct result digits of the chosen response, wrong
ones of the rejected response), disagreeing, or unlabelled (operands, ``+``, ``=``, ``;``, EOS).

    python experiments/analyze_masks.py runs/credit_assignment --seed 0 [--pairs 512]
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(key, "1")


def main() -> int:
    import torch

    from segrl.pipeline.diagnostics import mask_credit
    from segrl.rm import SegmentRewardModel
    from segrl.asr_options import ASRArguments
    from segrl.token_rewards import boundary_token_table

    def options(mask_type, baseline, delta=0.0):
        return ASRArguments(mask_type=mask_type, asr_baseline=baseline, asr_delta=delta)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--delta", type=float, default=0.05)
    args = parser.parse_args()
    torch.set_num_threads(1)
    seed_dir = Path(args.run_dir) / f"seed{args.seed}"
    with open(seed_dir / "pairs_train.jsonl") as fh:
        rows = [json.loads(line) for line in fh][: args.pairs]
    rm = SegmentRewardModel.from_pretrained(seed_dir / "rm_segment")
    prompts = [r["prompt"] for r in rows]
    rewards, oracle, boundary = {}, {}, {}
    table = boundary_token_table(rm.tokenizer, ".!?;:\n")
    for side in ("chosen", "rejected"):
        responses = [r[side] for r in rows]
        values, mask = rm.score_tokens(prompts, responses, batch_size=64)
        _, ids = rm.tokenize(prompts, responses)
        rewards[side] = [values[b, : int(mask[b].sum())].tolist() for b in range(len(rows))]
        oracle[side] = [r[f"{side}_token_rewards"] for r in rows]
        boundary[side] = [[bool(table[t]) for t in row] for row in ids]
    rng = random.Random(0)
    noise = {s: [[rng.gauss(0, 1) for _ in v] for v in rewards[s]] for s in rewards}
    variants = [
        (f"ASR, sequence mean, delta {args.delta:g}", rewards, options("asr", "sequence_mean", args.delta)),
        ("ASR, sequence mean, delta 0 (= token-wise)", rewards, options("asr", "sequence_mean", 0.0)),
        ("ASR, sequence mean, delta auto (q 0.3)", rewards, options("asr", "sequence_mean", "auto")),
        ("ASR, position mean, delta auto (q 0.3)", rewards, options("asr", "position_mean", "auto")),
        (f"ASR, batch mean, delta {args.delta:g}", rewards, options("asr", "batch_mean", args.delta)),
        ("step-wise, sequence mean", rewards, options("stepwise", "sequence_mean")),
        ("random rewards, token-wise", noise, options("tokenwise", "sequence_mean")),
        ("oracle, ASR, zero baseline", oracle, options("asr", "zero", args.delta)),
        ("oracle, token-wise, zero baseline", oracle, options("tokenwise", "zero")),
    ]
    print(f"{len(rows)} training pairs of {seed_dir}; kept fraction by oracle class")
    print("| mask | chosen: agree | chosen: disagree | chosen: unlabelled | rejected: agree | rejected: disagree | "
          "rejected: unlabelled | kept (all) |")
    print("|---|---|---|---|---|---|---|---|")
    f = (lambda v: "–" if v is None else f"{v:.2f}")
    for name, source, options in variants:
        out = mask_credit(source, oracle, options, boundary_by_side=boundary if options.mask_type == "stepwise" else None)
        c, r = out["chosen"], out["rejected"]
        kept = (c["kept"] + r["kept"]) / 2
        print(f"| {name} | {f(c['agree'])} | {f(c['disagree'])} | {f(c['unlabelled'])} | {f(r['agree'])} | "
              f"{f(r['disagree'])} | {f(r['unlabelled'])} | {kept:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
