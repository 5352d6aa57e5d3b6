"""PPO throughput: segrl's SegmentPPOTrainer vs TRL's experimental PPOTrainer, measured in one run.

TRL removed ``trl.experimental.ppo`` in 1.13, so the baseline runs TRL 1.12.0's PPOTrainer in a
subprocess with ``PYTHONPATH`` pointing at a ``pip install --no-deps --target`` copy of trl 1.12.0
(everything else -- torch, transformers, accelerate -- is the same installation). Both trainers get
the same tiny models, prompts, rollout batch, mini-batch, one PPO epoch and exactly
``response_length`` generated tokens per rollout (EOS suppressed until then), so tokens/s compares
the same work: generation + policy/ref/value/reward forwards + policy and value updates.

segrl runs its *segment* arm (reference-entropy segmentation, location normaliser, even spread),
i.e. strictly more work than TRL's bandit score at EOS.

    python benchmarks/bench_ppo.py            # hidden 256, 4 layers
    python benchmarks/bench_ppo.py --quick    # hidden 64, 2 layers, fewer iterations
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
ROOT = Path(__file__).resolve().parents[1]
TRL_OLD = ROOT / ".bench" / "trl-1.12.0"

TRL_SCRIPT = r'''
import json, sys, time, torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
import trl
from trl.experimental.ppo import PPOConfig, PPOTrainer
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
assert trl.__version__ == "1.12.0", trl.__version__
tok = AutoTokenizer.from_pretrained(cfg["model"])
prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in cfg["prompts"]]
ds = Dataset.from_dict({"input_ids": prompts})
def build(iterations):
    args = PPOConfig(output_dir=cfg["out"], per_device_train_batch_size=cfg["mini"], gradient_accumulation_steps=1,
                     num_mini_batches=cfg["rollout"] // cfg["mini"], total_episodes=cfg["rollout"] * iterations,
                     local_rollout_forward_batch_size=cfg["rollout"], response_length=cfg["length"],
                     num_ppo_epochs=1, learning_rate=1e-5, use_cpu=True, bf16=False, report_to="none",
                     save_strategy="no", num_sample_generations=0, stop_token="eos", kl_coef=0.01,
                     gradient_checkpointing=False, seed=0, disable_tqdm=True, logging_steps=10**6)
    return PPOTrainer(args=args, processing_class=tok, model=AutoModelForCausalLM.from_pretrained(cfg["model"]),
                      ref_model=AutoModelForCausalLM.from_pretrained(cfg["model"]),
                      reward_model=AutoModelForSequenceClassification.from_pretrained(cfg["model"], num_labels=1),
                      value_model=AutoModelForSequenceClassification.from_pretrained(cfg["model"], num_labels=1),
                      train_dataset=ds)
build(1).train()  # warm-up
trainer = build(cfg["iterations"])
t0 = time.perf_counter(); trainer.train(); dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt}))
'''


def run_trl(cfg: dict) -> float:
    if not (TRL_OLD / "trl" / "__init__.py").exists():
        print(f"installing trl 1.12.0 into {TRL_OLD} (pip --no-deps --target) ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(TRL_OLD),
                        "trl==1.12.0"], check=True)
    env = dict(os.environ, PYTHONPATH=str(TRL_OLD))
    out = subprocess.run([sys.executable, "-c", TRL_SCRIPT, json.dumps(cfg)], env=env, capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"TRL 1.12 PPO run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def run_segrl(cfg: dict) -> float:
    import torch
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification, AutoTokenizer)

    from segrl import ops
    from segrl.ppo import SegmentPPOConfig, SegmentPPOTrainer
    from segrl.ppo.rewards import SegmentRewardSource, reward_model_score_fn

    torch.set_num_threads(cfg["threads"])

    def build(iterations: int) -> SegmentPPOTrainer:
        tok = AutoTokenizer.from_pretrained(cfg["model"])
        rm = AutoModelForSequenceClassification.from_pretrained(cfg["model"], num_labels=1).eval()
        coef = ops.LocationNormalizerCoef(a_mu=0.1, b_mu=0.0, a_sigma=0.1, b_sigma=1.0)
        source = SegmentRewardSource(reward_model_score_fn(rm), threshold=cfg["threshold"], normalizer=coef)
        args = SegmentPPOConfig(output_dir=cfg["out"], num_iterations=iterations, rollout_batch_size=cfg["rollout"],
                                mini_batch_size=cfg["mini"], max_new_tokens=cfg["length"],
                                min_new_tokens=cfg["length"], learning_rate=1e-5, critic_learning_rate=1e-5,
                                use_cpu=True, seed=0, logging_steps=10**6)
        return SegmentPPOTrainer(
            args, policy=AutoModelForCausalLM.from_pretrained(cfg["model"]),
            ref_model=AutoModelForCausalLM.from_pretrained(cfg["model"]),
            critic=AutoModelForTokenClassification.from_pretrained(cfg["model"], num_labels=1),
            reward_source=source, tokenizer=tok, prompts=cfg["prompts"],
        )

    build(1).train()  # warm-up
    trainer = build(cfg["iterations"])
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    opts = parser.parse_args()
    hidden = opts.hidden or (64 if opts.quick else 256)
    layers = opts.layers or (2 if opts.quick else 4)
    repeats = opts.repeats or (1 if opts.quick else 3)

    from segrl.models.tiny import build_tiny_causal_lm, build_tiny_tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="segrl-bench-ppo-"))
    tok = build_tiny_tokenizer()
    model = build_tiny_causal_lm(tok, hidden_size=hidden, num_layers=layers, num_heads=4, seed=0,
                                 initializer_range=0.2)
    model.save_pretrained(tmp / "model")
    tok.save_pretrained(tmp / "model")
    import torch

    with torch.no_grad():  # a segment threshold at the median reference entropy of a sample
        ids = tok("7+3+6=7+3=10;10+6=16;=16", return_tensors="pt")["input_ids"]
        logits = model(ids).logits[0]
        threshold = float(-(logits.log_softmax(-1) * logits.softmax(-1)).sum(-1).median())
    cfg = {
        "model": str(tmp / "model"), "out": str(tmp / "out"), "threads": opts.threads,
        "prompts": [f"{a}+{b}+{c}=" for a in range(1, 10) for b in range(1, 10) for c in range(1, 3)],
        "rollout": 16, "mini": 4, "length": 32 if not opts.quick else 16,
        "iterations": 3 if opts.quick else 6, "threshold": threshold,
    }
    trl_times, segrl_times = [], []
    for r in range(repeats):  # interleaved so machine noise hits both alike
        trl_times.append(run_trl(cfg))
        segrl_times.append(run_segrl(cfg))
        print(f"repeat {r}: TRL 1.12 PPO {trl_times[-1]:.2f} s, segrl PPO {segrl_times[-1]:.2f} s", flush=True)
    tokens = cfg["iterations"] * cfg["rollout"] * cfg["length"]
    trl_tps, segrl_tps = tokens / statistics.median(trl_times), tokens / statistics.median(segrl_times)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    lines = [
        f"PPO throughput, tiny Llama hidden {hidden} / {layers} layers ({params:.2f} M params), rollout {cfg['rollout']}, "
        f"mini-batch {cfg['mini']}, {cfg['length']} generated tokens, {cfg['iterations']} iterations, "
        f"{opts.threads} threads, median of {repeats}:",
        "",
        "| trainer | median s | response tokens/s |",
        "|---|---|---|",
        f"| TRL 1.12.0 experimental PPOTrainer (bandit) | {statistics.median(trl_times):.2f} | {trl_tps:.1f} |",
        f"| segrl SegmentPPOTrainer (segment arm, c = {threshold:.2f}) | {statistics.median(segrl_times):.2f} | {segrl_tps:.1f} |",
        f"| **ratio segrl / TRL** | | **{segrl_tps / trl_tps:.2f}x** |",
    ]
    text = "\n".join(lines)
    print(text)
    out_dir = ROOT / "bench_results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "bench_ppo.md").write_text(text + "\n")
    (out_dir / "bench_ppo.json").write_text(json.dumps({"trl_s": trl_times, "segrl_s": segrl_times,
                                                         "tokens": tokens, "ratio": segrl_tps / trl_tps}))


if __name__ == "__main__":
    main()
