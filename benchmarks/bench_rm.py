"""Segment-RM training step time (cached entropy) vs stock TRL ``RewardTrainer``, in one run.

Both trainers get the same tiny model weights and the same batch of preference pairs; each timed
step is collation + forward + backward + optimizer step. Steps of the trainers are interleaved
(A, B, C, A, B, C, ...) so that load from other processes on a shared machine hits all of them
alike, and the median over ``--steps`` steps after ``--warmup`` is reported. The one-off cost of the
reference-entropy pass (computed once per dataset and cached as columns) is timed separately.

    python benchmarks/bench_rm.py            # writes bench_results/bench_rm.md
    python benchmarks/bench_rm.py --quick    # fewer steps, for CI smoke runs

Goal: segment RM step <= 1.10x the stock step.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_key, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 warm-up + 10 timed steps (default 5 + 40)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per trainer")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps per trainer")
    p.add_argument("--batch_size", type=int, default=8, help="preference pairs per step")
    p.add_argument("--hidden_size", type=int, default=64)
    p.add_argument("--num_layers", type=int, default=2)
    p.add_argument("--data", choices=("prose", "arith"), default="prose",
                   help="prose: responses of ~3 corpus lines (~100-200 tokens); arith: the short built-in pairs")
    p.add_argument("--threshold", type=float, default=2.0, help="segment threshold c of the dense RM")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared machine more threads mostly add noise; 0 = torch's choice)")
    p.add_argument("--output", default="bench_results/bench_rm.md")
    args = p.parse_args(argv)
    args.steps = args.steps or (10 if args.quick else 40)
    args.warmup = args.warmup if args.warmup is not None else (3 if args.quick else 5)
    return args


def build(tmp: Path, args):
    from segrl.models import build_tiny_causal_lm, build_tiny_tokenizer, load_tiny_corpus, load_tiny_prefs

    tok = build_tiny_tokenizer()
    init = build_tiny_causal_lm(tok, hidden_size=args.hidden_size, num_layers=args.num_layers, seed=0)
    init.save_pretrained(tmp / "init")
    tok.save_pretrained(tmp / "init")
    # A reference whose entropies spread over ~0.3-4 nats, so c = 2 cuts real multi-token segments
    # (a default random init is ~uniform: every token would be its own segment).
    ref = build_tiny_causal_lm(tok, hidden_size=args.hidden_size, num_layers=args.num_layers, seed=1,
                               initializer_range=0.5)
    ref.save_pretrained(tmp / "ref")
    tok.save_pretrained(tmp / "ref")
    if args.data == "arith":
        return tok, load_tiny_prefs()
    # Longer responses: a corpus line as prompt, the next three lines as chosen, three others as rejected.
    lines = [ln for ln in load_tiny_corpus().splitlines() if len(ln) > 40]
    rows = []
    for i in range(48):
        j = 7 * i
        rows.append({"prompt": lines[j] + "\n", "chosen": " ".join(lines[j + 1 : j + 4]),
                     "rejected": " ".join(lines[j + 4 : j + 7])})
    return tok, rows


def segment_overhead_ms(trainer, examples, args, repeats: int = 50) -> float:
    """Milliseconds per step of the segment RM's own work, without the model forward/backward."""
    from trl.trainer.reward_trainer import DataCollatorForPreference

    from segrl.rm.scoring import gather_response_values, segment_sequence_scores

    plain = DataCollatorForPreference(pad_token_id=trainer.processing_class.pad_token_id)
    batch = trainer.data_collator(examples)
    values = torch.randn(batch["input_ids"].shape, requires_grad=True)

    def extra():
        b = trainer.data_collator(examples)
        seg = segment_sequence_scores(gather_response_values(values, b["prompt_length"], b["response_mask"].shape[1]),
                                      b["response_entropy"], b["response_mask"], args.threshold)
        chosen, rejected = seg.scores.chunk(2)
        (-torch.nn.functional.logsigmoid(chosen - rejected).mean()).backward()
        with torch.no_grad():
            trainer._log_metrics("train", seg, chosen, rejected)

    def base():
        plain(examples)

    def timed(fn):
        fn()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t0) / repeats

    return 1000 * max(0.0, min(timed(extra) for _ in range(3)) - min(timed(base) for _ in range(3)))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging
    from trl import RewardConfig, RewardTrainer

    from segrl.rm import SegmentRewardConfig, SegmentRewardTrainer
    from segrl.rm.data import tokenize_preference_dataset
    from segrl.rm.entropy import add_entropy_columns

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    import datasets

    datasets.disable_progress_bars()
    common = dict(bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no",
                  disable_tqdm=True, per_device_train_batch_size=args.batch_size, max_steps=1, learning_rate=1e-4,
                  seed=0)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        tok, prefs = build(tmp, args)
        ds = Dataset.from_list(prefs)
        torch.manual_seed(0)
        base = AutoModelForSequenceClassification.from_pretrained(tmp / "init", num_labels=1)

        # One-off entropy pass over the whole dataset (what the segment trainer pays at start-up).
        ref = AutoModelForCausalLM.from_pretrained(tmp / "ref").eval()
        tokenized = tokenize_preference_dataset(ds, tok)
        resp_lengths = [len(ids) - p for key in ("chosen_ids", "rejected_ids")
                        for ids, p in zip(tokenized[key], tokenized["prompt_length"])]
        t0 = time.perf_counter()
        add_entropy_columns(tokenized, ref, batch_size=16, fingerprint=f"bench-{time.time()}")
        entropy_s = time.perf_counter() - t0

        dense = f"segment RM (c = {args.threshold:g})"
        trainers = {
            "TRL RewardTrainer": RewardTrainer(model=copy.deepcopy(base), args=RewardConfig(
                output_dir=str(tmp / "a"), **common), train_dataset=ds, processing_class=tok),
            dense: SegmentRewardTrainer(model=copy.deepcopy(base), args=SegmentRewardConfig(
                output_dir=str(tmp / "b"), segment_threshold=args.threshold, **common), train_dataset=ds,
                processing_class=tok, ref_model=str(tmp / "ref")),
            "segment RM (c = inf)": SegmentRewardTrainer(model=copy.deepcopy(base), args=SegmentRewardConfig(
                output_dir=str(tmp / "c"), segment_threshold=math.inf, **common), train_dataset=ds,
                processing_class=tok),
        }
        n = min(args.batch_size, len(ds))
        runs = {}
        for name, tr in trainers.items():
            tr.create_optimizer_and_scheduler(num_training_steps=args.warmup + args.steps)
            tr.current_gradient_accumulation_steps = 1  # set by the training loop we bypass
            tr.model.train()
            runs[name] = (tr, [tr.train_dataset[i] for i in range(n)], [])
        names = list(runs)
        for step in range(args.warmup + args.steps):
            # Rotate the order every round so no trainer always runs right after another one.
            for name in names[step % len(names):] + names[: step % len(names)]:
                tr, examples, times = runs[name]
                t0 = time.perf_counter()
                batch = tr._prepare_inputs(tr.data_collator(examples))
                tr.training_step(tr.model, batch)
                tr.optimizer.step()
                tr.model.zero_grad(set_to_none=True)
                if step >= args.warmup:
                    times.append(time.perf_counter() - t0)
        seg_trainer = trainers[f"segment RM (c = {args.threshold:g})"]
        segs = seg_trainer._metrics["train"]["rm/segments_per_response"]
        seg_len = seg_trainer._metrics["train"]["rm/mean_segment_length"]
        overhead_ms = segment_overhead_ms(seg_trainer, runs[f"segment RM (c = {args.threshold:g})"][1], args)

    medians = {name: statistics.median(t) for name, (_, _, t) in runs.items()}
    minima = {name: min(t) for name, (_, _, t) in runs.items()}
    # Paired ratio: step i of a trainer against step i of TRL (same round, so the same machine load),
    # then the median over rounds. Far less sensitive to other processes than a ratio of medians.
    base_times = runs["TRL RewardTrainer"][2]
    paired = {name: statistics.median(a / b for a, b in zip(t, base_times)) for name, (_, _, t) in runs.items()}
    base_ms = medians["TRL RewardTrainer"]
    resp_tokens = round(statistics.mean(resp_lengths))
    lines = [
        "# Segment RM step time vs TRL RewardTrainer",
        "",
        f"Tiny Llama RM (hidden {args.hidden_size}, {args.num_layers} layers, vocab {len(tok)}), batch "
        f"{n} pairs of {'the built-in arithmetic data' if args.data == 'arith' else 'tiny-corpus prose'} "
        f"(~{resp_tokens} tokens per response incl. EOS), fp32 on CPU "
        f"({torch.get_num_threads()} torch threads, {platform.processor() or platform.machine()}); median of "
        f"{args.steps} interleaved steps after {args.warmup} warm-up steps. A step is collation + forward + "
        "backward + AdamW step.",
        "",
        "| trainer | median step (ms) | min step (ms) | ratio to TRL (paired median) | ratio of medians |",
        "|---|---|---|---|---|",
    ]
    for name, m in medians.items():
        lines.append(f"| {name} | {1000 * m:.1f} | {1000 * minima[name]:.1f} | {paired[name]:.3f}x | "
                     f"{m / base_ms:.3f}x |")
    seg_ratio = paired[f"segment RM (c = {args.threshold:g})"]
    lines += [
        "",
        f"- Dense segment RM: {statistics.mean(segs):.1f} segments per response, mean segment length "
        f"{statistics.mean(seg_len):.2f} tokens.",
        f"- Work the dense segment RM adds per step, timed in isolation (not sensitive to machine load): "
        f"{overhead_ms:.2f} ms = {overhead_ms / (1000 * minima['TRL RewardTrainer']):.1%} of the fastest TRL step "
        "(extra collation of entropies / response masks, read-out, segmentation, segment means and their "
        "backward, metrics).",
        f"- One-off reference-entropy pass over all {len(ds)} pairs ({2 * len(ds)} responses): "
        f"{entropy_s:.2f} s = {1000 * entropy_s / len(ds):.1f} ms per pair = "
        f"{entropy_s / medians[f'segment RM (c = {args.threshold:g})']:.1f} segment-RM steps; paid once per dataset "
        "(cached by `datasets` for file-backed data), never per step.",
        f"- Goal: segment RM step <= 1.10x TRL (paired median): **{'met' if seg_ratio <= 1.10 else 'NOT met'}** "
        f"({seg_ratio:.3f}x).",
        "",
        "Command: `" + " ".join(["python benchmarks/bench_rm.py", *(sys.argv[1:] if argv is None else argv)]) + "`",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
