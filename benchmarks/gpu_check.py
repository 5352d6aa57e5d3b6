"""One-GPU check of segrl: the CUDA ops tests and bf16 step benchmarks on a random Qwen2-style ~0.5B model.

Run through ``benchmarks/gpu_check.sh`` (which installs the wheels brought along, see there). Sections,
each timed and reported even if another fails:

- ``ops_tests``: ``pytest -k cuda`` over the ops tests (``test_cuda_matches_cpu`` and friends; they
  skip without a GPU);
- ``dpo``: one training step of stock TRL ``DPOTrainer`` vs ``ASRDPOTrainer`` with precomputed token
  rewards (columns) and with the segment RM scoring each batch on the fly; steps interleaved, the
  median per-step ratio to stock;
- ``rm``: ``SegmentRewardTrainer`` (dense, c = 2 nats) vs TRL ``RewardTrainer``, same batch;
- ``ppo``: response tokens/s of ``SegmentPPOTrainer`` (segment arm, plain and with LoRA +
  accumulation + evaluation) vs TRL 1.12's experimental PPOTrainer (``benchmarks/bench_ppo.py``'s
  runner, TRL 1.12 from ``.bench/trl-1.12.0``);
- for each: peak memory (``torch.cuda.max_memory_allocated`` during the timed steps minus what was
  allocated before them; on CPU the process's peak RSS) and the share of a step spent inside
  ``segrl.ops`` functions (each call timed with CUDA synchronisation, nested calls counted once).

The model: ``Qwen2Config`` of Qwen2.5-0.5B (hidden 896, 24 layers, 14 heads / 2 KV heads, MLP 4864,
vocabulary 151936, tied embeddings: 494 M parameters), random weights, fp32 master weights with bf16
autocast. ``--tiny`` shrinks everything (hidden 64, 2 layers, the tiny tokenizer's vocabulary, short
sequences, fp32 on CPU) to check the script itself on a CPU in a few minutes.

    python benchmarks/gpu_check.py --tiny            # CPU smoke run of every section
    python benchmarks/gpu_check.py                   # on the GPU (about 10 minutes on one H200)

Writes ``bench_results/gpu_check.md`` and ``gpu_check.json``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

for _key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_key, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------ sizes


def sizes(tiny: bool) -> dict:
    if tiny:
        return dict(hidden=64, layers=2, heads=4, kv_heads=2, mlp=128, vocab=None, pairs=2, prompt=16, completion=32,
                    warmup=1, steps=3, ppo_rollout=4, ppo_mini=2, ppo_length=16, ppo_iterations=2)
    return dict(hidden=896, layers=24, heads=14, kv_heads=2, mlp=4864, vocab=151936, pairs=8, prompt=64,
                completion=256, warmup=3, steps=10, ppo_rollout=16, ppo_mini=4, ppo_length=128, ppo_iterations=3)


def qwen2_config(s: dict, tok, **extra):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=s["vocab"] or len(tok), hidden_size=s["hidden"], intermediate_size=s["mlp"],
                       num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                       num_key_value_heads=s["kv_heads"], max_position_embeddings=2048, tie_word_embeddings=True,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       **extra)


def random_model(cls, config, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(config)


# ------------------------------------------------------------------------------------------------ measuring


class OpsTimer:
    """Time spent inside ``segrl.ops`` functions: every public function of ``segrl.ops`` is wrapped in
    each loaded segrl module that refers to it (direct imports included); nested calls count once."""

    def __init__(self):
        self.seconds = 0.0
        self.calls = 0
        self._depth = 0
        self._patched: list[tuple[object, str, object]] = []

    def __enter__(self):
        from segrl import ops

        originals = {name: getattr(ops, name) for name in ops.__all__ if callable(getattr(ops, name, None))
                     and not isinstance(getattr(ops, name), type)}
        by_id = {id(fn): self._wrap(fn) for fn in originals.values()}
        for module in [m for n, m in list(sys.modules.items()) if n.startswith("segrl") and m is not None]:
            for attr, value in list(vars(module).items()):
                if id(value) in by_id and any(value is fn for fn in originals.values()):
                    self._patched.append((module, attr, value))
                    setattr(module, attr, by_id[id(value)])
        return self

    def _wrap(self, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            sync()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync()
                self.seconds += time.perf_counter() - t0
                self.calls += 1
                self._depth -= 1

        return timed

    def __exit__(self, *exc):
        for module, attr, value in self._patched:
            setattr(module, attr, value)
        self._patched.clear()


class PeakMemory:
    """Peak memory of a block beyond what was allocated when it started (MiB)."""

    def __enter__(self):
        sync()
        if CUDA:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
            self.base = _rss_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        sync()
        peak = torch.cuda.max_memory_allocated() if CUDA else _rss_kib("VmHWM") * 1024
        self.mib = max(0, peak - self.base) / 2**20
        self.peak_mib = peak / 2**20


def _rss_kib(field: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def interleaved(step_fns: dict, warmup: int, steps: int, ops_for: set[str] = frozenset()) -> dict:
    """Run the step functions round-robin (order rotating); median seconds, peak memory, ops share."""
    names = list(step_fns)
    times = {n: [] for n in names}
    memory, ops_share = {}, {}
    for step in range(warmup + steps):
        for name in names[step % len(names):] + names[: step % len(names)]:
            timed = step >= warmup
            timer = OpsTimer() if timed and name in ops_for else None
            with PeakMemory() as mem:
                if timer:
                    timer.__enter__()
                sync()
                t0 = time.perf_counter()
                try:
                    step_fns[name]()
                    sync()
                finally:
                    dt = time.perf_counter() - t0
                    if timer:
                        timer.__exit__()
            if timed:
                times[name].append(dt)
                memory[name] = max(memory.get(name, 0.0), mem.mib)
                if timer:
                    ops_share.setdefault(name, []).append(timer.seconds / dt)
    return {n: {"median_s": statistics.median(times[n]), "min_s": min(times[n]), "times": times[n],
                "step_peak_mib": memory[n], "ops_share": statistics.median(ops_share[n]) if n in ops_share else None}
            for n in names}


def paired_ratio(result: dict, name: str, base: str) -> float:
    return statistics.median(a / b for a, b in zip(result[name]["times"], result[base]["times"]))


# ------------------------------------------------------------------------------------------------ sections


def section_ops_tests(args) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_ops_properties.py",
           "tests/test_ops_hand.py", "tests/test_ops_moments.py", "-k", "cuda"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    tail = (out.stdout.strip().splitlines() or [""])[-1]
    return {"command": " ".join(cmd[2:]), "returncode": out.returncode, "summary": tail,
            "seconds": time.perf_counter() - t0, "cuda": CUDA}


def _trainer_common(s: dict, out: str) -> dict:
    return dict(output_dir=out, per_device_train_batch_size=s["pairs"], bf16=CUDA, gradient_checkpointing=False,
                use_cpu=not CUDA, report_to="none", save_strategy="no", learning_rate=1e-5, disable_tqdm=True,
                logging_steps=10**6, seed=0)


def section_dpo(args, s: dict, tok, tmp: Path) -> dict:
    from bench_dpo import make_rows
    from datasets import Dataset
    from transformers import Qwen2ForCausalLM, Qwen2ForSequenceClassification
    from trl import DPOConfig, DPOTrainer

    from segrl.dpo import ASRDPOConfig, ASRDPOTrainer
    from segrl.ops import LocationNormalizerCoef
    from segrl.rm.model import SegmentRewardModel

    config = qwen2_config(s, tok)
    policy = random_model(Qwen2ForCausalLM, config, 1)
    ref = random_model(Qwen2ForCausalLM, config, 2)
    rows = make_rows(tok, s["pairs"] * 4, s["prompt"], s["completion"])
    with_rewards = Dataset.from_list(rows)
    plain = with_rewards.remove_columns(["chosen_token_rewards", "rejected_token_rewards"])
    common = dict(_trainer_common(s, str(tmp / "dpo")), max_length=None)
    rm_model = random_model(Qwen2ForSequenceClassification, qwen2_config(s, tok, num_labels=1), 3).eval()
    coef = LocationNormalizerCoef(a_mu=0.0, b_mu=0.0, a_sigma=0.0, b_sigma=1.0)
    segment_rm = SegmentRewardModel(rm_model.to(DEVICE), tok, threshold=1.0,
                                    reference_model=copy.deepcopy(ref).eval().to(DEVICE), normalizer=coef)
    kw = lambda: dict(model=copy.deepcopy(policy), ref_model=copy.deepcopy(ref), processing_class=tok)  # noqa: E731
    trainers = {
        "TRL DPOTrainer": DPOTrainer(args=DPOConfig(**common), train_dataset=plain, **kw()),
        "ASR-DPO, token-reward columns": ASRDPOTrainer(args=ASRDPOConfig(**common, mask_type="asr"),
                                                       train_dataset=with_rewards, **kw()),
        "ASR-DPO, segment RM on the fly": ASRDPOTrainer(
            args=ASRDPOConfig(**common, mask_type="asr", token_reward_source="segment_rm",
                              token_reward_on_the_fly=True, token_reward_batch_size=2 * s["pairs"]),
            train_dataset=plain, token_reward_model=segment_rm, **kw()),
    }
    return _trainer_steps(trainers, s, base="TRL DPOTrainer")


def _trainer_steps(trainers: dict, s: dict, base: str) -> dict:
    fns = {}
    for name, tr in trainers.items():
        tr.create_optimizer_and_scheduler(num_training_steps=s["warmup"] + s["steps"])
        tr.current_gradient_accumulation_steps = 1  # set by Trainer.train(), which we bypass
        tr.model.train()
        ds = tr.train_dataset
        counter = {"step": 0}

        def step(tr=tr, ds=ds, counter=counter):
            start = (counter["step"] * s["pairs"]) % (len(ds) - s["pairs"] + 1)
            counter["step"] += 1
            inputs = tr._prepare_inputs(tr.data_collator([ds[i] for i in range(start, start + s["pairs"])]))
            tr.training_step(tr.model, inputs)
            tr.optimizer.step()
            tr.optimizer.zero_grad(set_to_none=True)

        fns[name] = step
    result = interleaved(fns, s["warmup"], s["steps"], ops_for={n for n in trainers if n != base})
    ratios = {name: paired_ratio(result, name, base) for name in result}
    for name in result:
        result[name]["ratio_to_stock"] = ratios[name]
        del result[name]["times"]
    return result


def section_rm(args, s: dict, tok, tmp: Path) -> dict:
    from bench_dpo import make_rows
    from datasets import Dataset
    from transformers import Qwen2ForCausalLM, Qwen2ForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from segrl.rm import SegmentRewardConfig, SegmentRewardTrainer

    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")}
            for r in make_rows(tok, s["pairs"] * 4, s["prompt"], s["completion"])]
    ds = Dataset.from_list(rows)
    ref = random_model(Qwen2ForCausalLM, qwen2_config(s, tok), 2)
    ref.save_pretrained(tmp / "rm_ref")
    tok.save_pretrained(tmp / "rm_ref")
    base = random_model(Qwen2ForSequenceClassification, qwen2_config(s, tok, num_labels=1), 0)
    common = dict(_trainer_common(s, str(tmp / "rm")), max_steps=1)
    trainers = {
        "TRL RewardTrainer": RewardTrainer(model=copy.deepcopy(base), args=RewardConfig(**common), train_dataset=ds,
                                           processing_class=tok),
        "segment RM (c = 2)": SegmentRewardTrainer(
            model=copy.deepcopy(base), args=SegmentRewardConfig(**common, segment_threshold=2.0), train_dataset=ds,
            processing_class=tok, ref_model=str(tmp / "rm_ref")),
    }
    return _trainer_steps(trainers, s, base="TRL RewardTrainer")


def section_ppo(args, s: dict, tok, tmp: Path) -> dict:
    import bench_ppo
    from transformers import Qwen2ForCausalLM

    model_dir = tmp / "ppo_model"
    random_model(Qwen2ForCausalLM, qwen2_config(s, tok), 0).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    cfg = {"model": str(model_dir), "out": str(tmp / "ppo_out"), "threads": args.threads, "device": DEVICE,
           "bf16": CUDA, "prompts": [f"{a}+{b}+{c}=" for a in range(1, 10) for b in range(1, 10) for c in range(1, 3)],
           "rollout": s["ppo_rollout"], "mini": s["ppo_mini"], "length": s["ppo_length"],
           "iterations": s["ppo_iterations"], "threshold": 2.0}
    tokens = cfg["iterations"] * cfg["rollout"] * cfg["length"]
    out = {"config": {k: v for k, v in cfg.items() if k != "prompts"}}
    for name, features in (("segrl", False), ("segrl + LoRA + accumulation + eval", True)):
        bench_ppo.build_segrl(cfg, 1, features=features).train()  # warm-up
        trainer = bench_ppo.build_segrl(cfg, cfg["iterations"], features=features)
        with PeakMemory() as mem, OpsTimer() as timer:
            sync()
            t0 = time.perf_counter()
            history = trainer.train()
            sync()
            dt = time.perf_counter() - t0
        split = {k: statistics.mean(h[k] for h in history) for k in ("time_rollout_s", "time_scoring_s",
                                                                      "time_update_s")}
        out[name] = {"seconds": dt, "tokens_per_s": tokens / dt, "peak_mib": mem.mib, "ops_share": timer.seconds / dt,
                     **split}
        del trainer
    if args.no_trl:
        out["TRL 1.12 PPOTrainer"] = {"skipped": "--no-trl"}
    else:
        dt = bench_ppo.run_trl(cfg)
        out["TRL 1.12 PPOTrainer"] = {"seconds": dt, "tokens_per_s": tokens / dt}
        for name in ("segrl", "segrl + LoRA + accumulation + eval"):
            out[name]["ratio_to_trl"] = out[name]["tokens_per_s"] / out["TRL 1.12 PPOTrainer"]["tokens_per_s"]
    return out


# ------------------------------------------------------------------------------------------------ report


def report(results: dict, meta: dict) -> str:
    lines = [f"segrl GPU check: {meta['device']}, torch {meta['torch']}, transformers {meta['transformers']}, "
             f"trl {meta['trl']}, model {meta['model']}, {meta['seconds']:.0f} s in all", ""]
    ops = results.get("ops_tests", {})
    if "error" in ops:
        lines += [f"CUDA ops tests: ERROR {ops['error']}", ""]
    elif ops:
        lines += [f"CUDA ops tests (`{ops['command']}`): {ops['summary']} (rc {ops['returncode']})", ""]
    for key, title in (("dpo", "DPO step"), ("rm", "Reward-model step")):
        res = results.get(key)
        if not res:
            continue
        if "error" in res:
            lines += [f"{title}: ERROR {res['error']}", ""]
            continue
        lines += [f"{title} (median of the timed steps, interleaved):", "",
                  "| trainer | median s | ratio to stock (paired) | step peak memory MiB | segrl.ops share |",
                  "|---|---|---|---|---|"]
        for name, r in res.items():
            share = "" if r["ops_share"] is None else f"{100 * r['ops_share']:.1f}%"
            lines.append(f"| {name} | {r['median_s']:.3f} | {r['ratio_to_stock']:.3f}x | {r['step_peak_mib']:.0f} | "
                         f"{share} |")
        lines.append("")
    res = results.get("ppo")
    if res and "error" in res:
        lines += [f"PPO: ERROR {res['error']}", ""]
    elif res:
        c = res["config"]
        lines += [f"PPO (rollout {c['rollout']}, mini-batch {c['mini']}, {c['length']} generated tokens, "
                  f"{c['iterations']} iterations):", "",
                  "| trainer | s | response tokens/s | ratio to TRL 1.12 | rollout / scoring / update s per iteration "
                  "| peak memory MiB | segrl.ops share |", "|---|---|---|---|---|---|---|"]
        for name, r in res.items():
            if name == "config" or "seconds" not in r:
                continue
            split = " / ".join(f"{r[k]:.2f}" for k in ("time_rollout_s", "time_scoring_s", "time_update_s")
                               if k in r)
            ratio = f"{r['ratio_to_trl']:.2f}x" if "ratio_to_trl" in r else ""
            mem = f"{r['peak_mib']:.0f}" if "peak_mib" in r else ""
            share = f"{100 * r['ops_share']:.1f}%" if "ops_share" in r else ""
            lines.append(f"| {name} | {r['seconds']:.2f} | {r['tokens_per_s']:.1f} | {ratio} | {split} | {mem} | {share} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, CPU-friendly: checks the script runs")
    parser.add_argument("--sections", default="ops_tests,dpo,rm,ppo")
    parser.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--no-trl", action="store_true", help="skip the TRL 1.12 PPO baseline")
    parser.add_argument("--out", default=str(ROOT / "bench_results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if CUDA:
        torch.backends.cuda.matmul.allow_tf32 = True
    import transformers
    import trl
    from datasets.utils.logging import disable_progress_bar
    from transformers.utils import logging as hf_logging

    from segrl.models.tiny import build_tiny_tokenizer

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    disable_progress_bar()
    s = sizes(args.tiny)
    tok = build_tiny_tokenizer()
    params = sum(p.numel() for p in random_model(
        transformers.Qwen2ForCausalLM, qwen2_config(s, tok), 0).parameters()) / 1e6
    meta = {"device": torch.cuda.get_device_name() if CUDA else f"CPU ({platform.processor() or 'cpu'})",
            "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "model": f"Qwen2-style hidden {s['hidden']} x {s['layers']} layers, {params:.1f} M params, random init",
            "bf16": CUDA, "tiny": args.tiny}
    results = {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="segrl-gpu-check-") as tmp_dir:
        for name in args.sections.split(","):
            print(f"[gpu_check] {name} ...", flush=True)
            t0 = time.perf_counter()
            try:
                if name == "ops_tests":
                    results[name] = section_ops_tests(args)
                else:
                    fn = {"dpo": section_dpo, "rm": section_rm, "ppo": section_ppo}[name]
                    results[name] = fn(args, s, tok, Path(tmp_dir))
            except Exception as err:  # noqa: BLE001 - report and go on with the other sections
                traceback.print_exc()
                results[name] = {"error": f"{type(err).__name__}: {err}"}
            if CUDA:
                torch.cuda.empty_cache()
            print(f"[gpu_check] {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    meta["seconds"] = time.perf_counter() - t_all
    text = report(results, meta)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "gpu_check_tiny" if args.tiny else "gpu_check"
    (out / f"{stem}.md").write_text(text + "\n")
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
