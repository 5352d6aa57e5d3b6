"""PPO throughput: segrl's SegmentPPOTrainer vs TRL's experimental PPOTrainer, measured in one run.

TRL removed ``trl.experimental.ppo`` in 1.13, so the baseline runs TRL 1.12.0's PPOTrainer in a
subprocess with ``PYTHONPATH`` pointing at a ``pip install --no-deps --target`` copy of trl 1.12.0
(everything else -- torch, transformers, accelerate -- is the same installation). Both trainers get
the same tiny models, prompts, rollout batch, mini-batch, one PPO epoch and exactly
``response_length`` generated tokens per rollout (EOS suppressed until then), so tokens/s compares
the same work: generation + policy/ref/value/reward forwards + policy and value updates.

segrl runs its *segment* arm (reference-entropy segmentation, location normaliser, even spread),
i.e. strictly more work than TRL's bandit score at EOS. It is timed twice: plain, and with the
scaling features on (LoRA r=16 on the policy with the adapter-disabled base as reference, 2
gradient-accumulation micro-batches per mini-batch, a greedy evaluation on 8 held-out prompts
every 3 iterations) -- the evaluation is extra work TRL does not do here.

A second table (``--scaling``) times one iteration split into rollout (generation with the KV
cache; the policy log-probs come from generate's logits), scoring (reference + critic + RM forwards,
rewards, GAE, masks), update (PPO epoch) and evaluation, with the features on, for response
lengths 64 -> 512 and two rollout batch sizes; peak memory is the process's peak RSS on CPU (reset
per configuration through /proc/self/clear_refs) or ``torch.cuda.max_memory_allocated`` on a GPU.

    python benchmarks/bench_ppo.py                      # hidden 256, 4 layers
    python benchmarks/bench_ppo.py --quick --scaling    # hidden 64, 2 layers, fewer iterations + the table
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
                     num_ppo_epochs=1, learning_rate=1e-5, use_cpu=cfg.get("device", "cpu") == "cpu",
                     bf16=cfg.get("bf16", False), report_to="none",
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


def build_segrl(cfg: dict, iterations: int, *, features: bool = False, length: int | None = None,
                rollout: int | None = None, eval_steps: int = 3):
    """A SegmentPPOTrainer on the benchmark's tiny models; ``features``: LoRA, accumulation, evaluation."""
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification, AutoTokenizer)

    from segrl import ops
    from segrl.ppo import SegmentPPOConfig, SegmentPPOTrainer
    from segrl.ppo.rewards import SegmentRewardSource, reward_model_score_fn

    rollout = rollout or cfg["rollout"]
    length = length or cfg["length"]
    tok = AutoTokenizer.from_pretrained(cfg["model"])
    rm = AutoModelForSequenceClassification.from_pretrained(cfg["model"], num_labels=1).eval()
    coef = ops.LocationNormalizerCoef(a_mu=0.1, b_mu=0.0, a_sigma=0.1, b_sigma=1.0)
    source = SegmentRewardSource(reward_model_score_fn(rm), threshold=cfg["threshold"], normalizer=coef)
    extra = dict(gradient_accumulation_steps=2, eval_steps=eval_steps) if features else {}
    args = SegmentPPOConfig(output_dir=cfg["out"], num_iterations=iterations, rollout_batch_size=rollout,
                            mini_batch_size=min(cfg["mini"], rollout), max_new_tokens=length,
                            min_new_tokens=length, learning_rate=1e-5, critic_learning_rate=1e-5,
                            use_cpu=cfg.get("device", "cpu") == "cpu", bf16=cfg.get("bf16", False), seed=0,
                            logging_steps=10**6, **extra)
    policy = AutoModelForCausalLM.from_pretrained(cfg["model"])
    ref = AutoModelForCausalLM.from_pretrained(cfg["model"])
    if features:
        from peft import LoraConfig, get_peft_model

        policy = get_peft_model(policy, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM"))
        ref = None
    return SegmentPPOTrainer(
        args, policy=policy, ref_model=ref,
        critic=AutoModelForTokenClassification.from_pretrained(cfg["model"], num_labels=1),
        reward_source=source, tokenizer=tok, prompts=cfg["prompts"],
        eval_prompts=cfg["prompts"][-8:] if features else None,
    )


def run_segrl(cfg: dict, features: bool = False) -> float:
    import torch

    torch.set_num_threads(cfg["threads"])

    def build(iterations: int):
        return build_segrl(cfg, iterations, features=features)

    build(1).train()  # warm-up
    trainer = build(cfg["iterations"])
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0


def _reset_peak_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak RSS (VmHWM)
    except OSError:
        pass


def _peak_memory_mib() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scaling_table(cfg: dict, lengths: list[int], rollouts: list[int], iterations: int = 3) -> tuple[str, list]:
    """Step time split into rollout / scoring / update / evaluation and peak memory, features on."""
    import torch

    torch.set_num_threads(cfg["threads"])
    rows = []
    for rollout in rollouts:
        for length in lengths:
            build_segrl(cfg, 1, features=True, length=min(length, 16), rollout=rollout).train()  # warm-up
            _reset_peak_memory()
            trainer = build_segrl(cfg, iterations, features=True, length=length, rollout=rollout, eval_steps=1)
            history = trainer.train()
            mean = {k: statistics.mean(h[k] for h in history) for k in ("time_rollout_s", "time_scoring_s",
                                                                          "time_update_s")}
            evals = [h["time_eval_s"] for h in history if "time_eval_s" in h]
            rows.append({"length": length, "rollout": rollout, **mean,
                         "eval_s": statistics.mean(evals) if evals else float("nan"),
                         "step_s": sum(mean.values()), "peak_mib": _peak_memory_mib(),
                         "tokens_per_s": rollout * length / sum(mean.values())})
            r = rows[-1]
            print(f"  length {length} rollout {rollout}: step {r['step_s']:.2f} s, peak {r['peak_mib']:.0f} MiB",
                  flush=True)
    lines = ["| response tokens | rollout batch | rollout s | scoring s | update s | step s | eval s (8 prompts) "
             "| response tokens/s | peak memory MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['length']} | {r['rollout']} | {r['time_rollout_s']:.2f} | {r['time_scoring_s']:.2f} | "
                     f"{r['time_update_s']:.2f} | {r['step_s']:.2f} | {r['eval_s']:.2f} | {r['tokens_per_s']:.0f} | "
                     f"{r['peak_mib']:.0f} |")
    return "\n".join(lines), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--scaling", action="store_true", help="also the table over response length / rollout batch")
    parser.add_argument("--lengths", default="64,128,256,512")
    parser.add_argument("--rollouts", default="8,16")
    parser.add_argument("--no-trl", action="store_true", help="skip TRL 1.12 (only the segrl rows and the table)")
    parser.add_argument("--scaling-only", action="store_true", help="only the --scaling table (no throughput rows)")
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
    if opts.scaling_only:
        table, rows = scaling_table(cfg, [int(x) for x in opts.lengths.split(",")],
                                    [int(x) for x in opts.rollouts.split(",")], iterations=1 if opts.quick else 3)
        print(table)
        out_dir = ROOT / "bench_results"
        out_dir.mkdir(exist_ok=True)
        (out_dir / "bench_ppo_scaling.md").write_text(table + "\n")
        (out_dir / "bench_ppo_scaling.json").write_text(json.dumps(rows))
        return
    trl_times, segrl_times, feature_times = [], [], []
    for r in range(repeats):  # interleaved so machine noise hits all alike
        trl_times.append(float("nan") if opts.no_trl else run_trl(cfg))
        segrl_times.append(run_segrl(cfg))
        feature_times.append(run_segrl(cfg, features=True))
        print(f"repeat {r}: TRL 1.12 PPO {trl_times[-1]:.2f} s, segrl PPO {segrl_times[-1]:.2f} s, "
              f"with LoRA + accumulation + evaluation {feature_times[-1]:.2f} s", flush=True)
    tokens = cfg["iterations"] * cfg["rollout"] * cfg["length"]
    trl_tps, segrl_tps = tokens / statistics.median(trl_times), tokens / statistics.median(segrl_times)
    feature_tps = tokens / statistics.median(feature_times)
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
        f"| segrl, LoRA r=16 + 2 accumulation micro-batches + eval every 3 iterations | "
        f"{statistics.median(feature_times):.2f} | {feature_tps:.1f} |",
        f"| **ratio segrl / TRL** | | **{segrl_tps / trl_tps:.2f}x** |",
        f"| **ratio segrl with the features / TRL** | | **{feature_tps / trl_tps:.2f}x** |",
    ]
    table_rows = []
    if opts.scaling:
        lengths = [int(x) for x in opts.lengths.split(",")]
        rollouts = [int(x) for x in opts.rollouts.split(",")]
        print("scaling table ...", flush=True)
        table, table_rows = scaling_table(cfg, lengths, rollouts, iterations=1 if opts.quick else 3)
        lines += ["", f"One iteration (mean of {1 if opts.quick else 3}; features on: LoRA, 2 accumulation "
                  f"micro-batches; the evaluation of 8 prompts is timed apart), mini-batch {cfg['mini']}:", "", table]
    text = "\n".join(lines)
    print(text)
    out_dir = ROOT / "bench_results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "bench_ppo.md").write_text(text + "\n")
    (out_dir / "bench_ppo.json").write_text(json.dumps({
        "trl_s": trl_times, "segrl_s": segrl_times, "segrl_features_s": feature_times, "tokens": tokens,
        "ratio": segrl_tps / trl_tps, "ratio_features": feature_tps / trl_tps, "scaling": table_rows}))


if __name__ == "__main__":
    main()
