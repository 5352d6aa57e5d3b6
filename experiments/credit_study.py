"""What raises the within-response credit AUC of a learned token-reward source? (issue 12, item 2)

For every setting of a grid (``experiments/credit_study.yaml``) and every seed, this script

1. builds or reuses the seed's preference pairs with the pipeline's cached stages
   (:class:`segrl.pipeline.Pipeline`: packaged SFT, 3000 prompts x 4 samples, best vs worst, ~2,500
   training pairs + ~275 held out), and caches the reference entropies of both sets once per seed
   (``seed{S}/entropy_{train,eval}``: every dense setting reuses them, so no setting re-runs the
   reference model);
2. trains a segment RM with the setting (:class:`segrl.rm.SegmentRewardTrainer`, the pipeline's
   arguments unless the setting changes them: threshold, epochs, learning rate, SFT vs fresh
   initialisation, model size, training loss ``segment_loss``), cached under a key of the setting;
3. for every reward form of the setting, fits the location normaliser on that form
   (:func:`segrl.ops.fit_location_normalizer` on 512 training pairs, as ``segrl fit-norm`` does) and
   spreads the normalised segment rewards with every spreading mode
   (:func:`segrl.rm.scoring.segment_token_rewards`);
4. measures token credit on the seed's held-out pairs with the library's own metric
   (:func:`segrl.pipeline.diagnostics.credit_auc`, i.e. :func:`segrl.credit.credit_metrics`), plus
   the RM's pairwise accuracy and segments / response. Two form-free readings of the same RM are
   added: its raw per-position values (``pos_value``) and their token-to-token change (``pos_delta``).

Settings of ``kind: implicit`` train a plain DPO policy (the experiment's DPO settings) and measure
the implicit reward ``beta * (log pi - log pi_ref)`` (:func:`segrl.pipeline.diagnostics.implicit_credit`).

Every result is one JSON line in ``<output_dir>/credit_study.jsonl`` (appended; a (setting, seed)
already there is skipped), and ``<output_dir>/credit_study.md`` summarises them: mean +- sample std
over seeds and the per-seed values. Usage (results and timings: experiments/README.md)::

    python experiments/credit_study.py --config experiments/credit_study.yaml
    python experiments/credit_study.py --config experiments/credit_study.yaml --only delta_c0 --seeds 0
    python experiments/credit_study.py --config experiments/credit_study.yaml --summary   # table only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402


@dataclass
class Setting:
    """One row group of the study (a YAML entry under ``settings``)."""

    name: str
    kind: str = "rm"  # "rm" | "implicit"
    threshold: float | str = 0.2  # number, "auto" or "inf"
    epochs: float = 2.0
    learning_rate: float = 1e-3
    batch_size: int = 32
    loss: str = "mean"  # SegmentRewardConfig.segment_loss: "mean" (the paper's) | "prefix_pairs"
    init: str = "sft"  # "sft" (the pipeline's: SFT backbone + fresh head) | "fresh" (random weights)
    hidden_size: int | None = None  # fresh init only; default: the SFT model's
    num_layers: int | None = None
    forms: list = field(default_factory=lambda: ["value", "delta"])
    modes: list = field(default_factory=lambda: ["even", "end"])
    note: str = ""

    def train_key(self) -> dict:
        d = asdict(self)
        for k in ("name", "forms", "modes", "note"):
            d.pop(k)
        return d


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


# --------------------------------------------------------------------------------------------------
# Data: pairs from the pipeline, tokenised with reference entropies once per seed
# --------------------------------------------------------------------------------------------------


def entropy_sets(pipe, seed: int):
    """``(train_ds, eval_ds, eval_rows)``: tokenised pairs with ``chosen_entropy`` / ``rejected_entropy``."""
    from datasets import Dataset, load_from_disk

    from segrl.pipeline.settings import settings_key
    from segrl.rm.data import tokenize_preference_dataset
    from segrl.rm.entropy import add_entropy_columns, load_reference_model

    train, evals, _ = pipe.pairs(seed)
    d = pipe.seed_dir(seed)
    key = settings_key(pipe.pairs_key(seed), "entropy-v1")
    out = {}
    ref = None
    for name, rows in (("train", train), ("eval", evals)):
        path = d / f"entropy_{name}"
        meta = path / "study_key.json"
        if meta.is_file() and json.loads(meta.read_text())["key"] == key:
            out[name] = load_from_disk(str(path))
            continue
        log(f"seed {seed}: reference entropies of {len(rows)} {name} pairs")
        ds = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
        ds = tokenize_preference_dataset(ds, pipe.tokenizer, name=name)
        if ref is None:
            ref = load_reference_model(str(pipe.sft_dir(seed)))
        ds = add_entropy_columns(ds, ref, batch_size=64, pad_token_id=pipe.tokenizer.pad_token_id, name=name)
        ds = ds.select_columns(["chosen_ids", "rejected_ids", "prompt_length", "chosen_entropy", "rejected_entropy"])
        shutil.rmtree(path, ignore_errors=True)
        ds.save_to_disk(str(path))
        meta.write_text(json.dumps({"key": key}))
        out[name] = load_from_disk(str(path))
    return out["train"], out["eval"], evals


def split_ids(ds, side: str):
    """``(prompt_ids, response_ids, entropy)`` lists of one side of a tokenised pair dataset."""
    ids, plen, ent = ds[f"{side}_ids"], ds["prompt_length"], ds[f"{side}_entropy"]
    return [x[:p] for x, p in zip(ids, plen)], [x[p:] for x, p in zip(ids, plen)], list(ent)


# --------------------------------------------------------------------------------------------------
# Reward-model settings
# --------------------------------------------------------------------------------------------------


def fresh_model(sft_dir: Path, s: Setting, seed: int):
    from transformers import AutoConfig, AutoModelForSequenceClassification, set_seed

    config = AutoConfig.from_pretrained(str(sft_dir))
    if s.hidden_size:
        config.hidden_size = s.hidden_size
        config.intermediate_size = 3 * s.hidden_size
        config.head_dim = s.hidden_size // config.num_attention_heads
    if s.num_layers:
        config.num_hidden_layers = s.num_layers
    config.num_labels = 1
    set_seed(seed)
    return AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)


def train_rm(pipe, seed: int, s: Setting, train_ds, rm_dir: Path):
    """Train (or reuse) the setting's RM; returns ``(SegmentRewardModel, record)``."""
    from transformers import set_seed

    from segrl.pipeline.runners.common import quiet_trainer, trainer_common
    from segrl.pipeline.settings import settings_key
    from segrl.rm import SegmentRewardConfig, SegmentRewardModel, SegmentRewardTrainer

    key = settings_key(pipe.pairs_key(seed), s.train_key(), seed, "rm-v1")
    meta_path = rm_dir / "study_train.json"
    if meta_path.is_file() and (rm_dir / "config.json").is_file():
        meta = json.loads(meta_path.read_text())
        if meta["key"] == key:
            return SegmentRewardModel.from_pretrained(rm_dir), meta
    sft_dir = pipe.sft_dir(seed)
    shutil.rmtree(rm_dir, ignore_errors=True)
    args = SegmentRewardConfig(
        **trainer_common(rm_dir, seed), segment_threshold=s.threshold, ref_model_name_or_path=str(sft_dir),
        per_device_train_batch_size=s.batch_size, num_train_epochs=s.epochs, learning_rate=s.learning_rate,
        lr_scheduler_type="cosine", warmup_steps=5, entropy_batch_size=64, dataset_num_proc=None,
        segment_loss=s.loss,
    )
    model = str(sft_dir) if s.init == "sft" else fresh_model(sft_dir, s, seed)
    set_seed(seed)
    t0 = time.perf_counter()
    trainer = SegmentRewardTrainer(model=model, args=args, train_dataset=train_ds, processing_class=pipe.tokenizer)
    quiet_trainer(trainer).train()
    trainer.save_model(str(rm_dir))
    seconds = time.perf_counter() - t0
    log_hist = [h for h in trainer.state.log_history if "loss" in h]
    threshold = trainer.segment_threshold
    del trainer
    meta = {"key": key, "train_seconds": seconds, "threshold": "inf" if math.isinf(threshold) else threshold,
            "final_train_loss": log_hist[-1]["loss"] if log_hist else None,
            "n_params": sum(p.numel() for p in SegmentRewardModel.from_pretrained(rm_dir).model.parameters())}
    meta_path.write_text(json.dumps(meta))
    return SegmentRewardModel.from_pretrained(rm_dir), meta


def measure_rm(rm, train_ds, eval_ds, eval_rows, s: Setting, n_norm: int = 512) -> list[dict]:
    """Credit metrics of every (form, mode) of ``s`` plus the form-free per-position readings."""
    from segrl.ops import fit_location_normalizer, segment_locations
    from segrl.pipeline.diagnostics import credit_auc
    from segrl.rm.scoring import form_segment_rewards, segment_token_rewards

    norm_ds = train_ds.shuffle(seed=42).select(range(min(n_norm, len(train_ds))))
    scored_norm = [rm.segment_token_ids(*split_ids(norm_ds, side)[:2], entropy=split_ids(norm_ds, side)[2],
                                        batch_size=64) for side in ("chosen", "rejected")]
    scored = {side: rm.segment_token_ids(*split_ids(eval_ds, side)[:2], entropy=split_ids(eval_ds, side)[2],
                                         batch_size=64) for side in ("chosen", "rejected")}
    oracle = {side: [r[f"{side}_token_rewards"] for r in eval_rows] for side in ("chosen", "rejected")}
    common = {
        "pairwise_accuracy": float((scored["chosen"].scores > scored["rejected"].scores).float().mean()),
        "segments_per_response": float(torch.cat([scored[x].num_segments for x in scored]).float().mean()),
    }

    def lists(t, mask):
        return [t[b, : int(mask[b].sum())].tolist() for b in range(t.shape[0])]

    rows = []
    dense = not math.isinf(rm.threshold)
    for form in s.forms:
        locs, vals = [], []
        for seg in scored_norm:
            locs.append(np.asarray(segment_locations(seg.seg_valid), dtype=np.float64))
            vals.append(form_segment_rewards(seg.seg_rewards, seg.seg_valid, seg.start_values, form)[seg.seg_valid]
                        .double().numpy())
        coef = fit_location_normalizer(np.concatenate(locs), np.concatenate(vals), check=True,
                                       min_buckets=2 if dense else 1)
        for mode in s.modes:
            rewards = {}
            for side, seg in scored.items():
                out = segment_token_rewards(seg, seg.mask, start_values=seg.start_values, reward_form=form,
                                            normalizer=coef, sigma_floor=rm.sigma_floor, mode=mode)
                rewards[side] = lists(out.token_rewards, out.mask)
            rows.append({"form": form, "mode": mode, **common, **credit_auc(rewards, oracle)})
    # Form-free readings: the RM's value at every response token, and its change since the previous token.
    for name in ("pos_value", "pos_delta"):
        rewards = {}
        for side, seg in scored.items():
            v = seg.values
            if name == "pos_delta":
                v = v - torch.cat([seg.start_values[:, None], v[:, :-1]], dim=1)
            rewards[side] = lists(v, seg.mask)
        rows.append({"form": name, "mode": "-", **common, **credit_auc(rewards, oracle)})
    return rows


# --------------------------------------------------------------------------------------------------
# Implicit DPO reward
# --------------------------------------------------------------------------------------------------


def implicit_rows(pipe, seed: int, s: Setting, eval_rows, run_dir: Path) -> list[dict]:
    from datasets import Dataset
    from transformers import set_seed

    from segrl.dpo import ASRDPOConfig, ASRDPOTrainer
    from segrl.pipeline.diagnostics import implicit_credit
    from segrl.pipeline.runners.common import quiet_trainer, trainer_common
    from segrl.pipeline.settings import settings_key

    d = pipe.dpo_settings
    key = settings_key(pipe.pairs_key(seed), d, seed, "dpo-v1")
    policy = run_dir / "model"
    meta_path = run_dir / "study_train.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta.get("key") != key or not policy.is_dir():
        train, _, _ = pipe.pairs(seed)
        shutil.rmtree(run_dir, ignore_errors=True)
        sft_dir = pipe.sft_dir(seed)
        args = ASRDPOConfig(
            **trainer_common(run_dir / "trainer", seed), max_steps=d.steps, per_device_train_batch_size=d.batch_size,
            learning_rate=d.learning_rate, lr_scheduler_type="constant_with_warmup", warmup_steps=d.warmup_steps,
            beta=d.beta, loss_type=[d.loss_type], mask_type="none", dataset_num_proc=None,
        )
        set_seed(seed)
        t0 = time.perf_counter()
        trainer = ASRDPOTrainer(model=pipe.load_lm(sft_dir), ref_model=pipe.load_lm(sft_dir), args=args,
                                train_dataset=Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")}
                                                                 for r in train]),
                                processing_class=pipe.tokenizer)
        quiet_trainer(trainer).train()
        trainer.model.save_pretrained(policy)
        pipe.tokenizer.save_pretrained(policy)
        shutil.rmtree(run_dir / "trainer", ignore_errors=True)
        meta = {"key": key, "train_seconds": time.perf_counter() - t0}
        meta_path.write_text(json.dumps(meta))
    credit = implicit_credit(policy, pipe.sft_dir(seed), eval_rows, beta=d.implicit_beta)
    return [{"form": "implicit", "mode": "-", "pairwise_accuracy": None, "segments_per_response": None, **credit,
             "train_seconds": meta["train_seconds"]}]


# --------------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------------


def _fmt(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def summarize(records: list[dict], order: list[str]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["setting"], r["form"], r["mode"]), []).append(r)
    rank = {n: i for i, n in enumerate(order)}
    all_seeds = sorted({r["seed"] for r in records})
    lines = [
        f"| setting | form | spread | seeds | within-response AUC | per seed ({' / '.join(map(str, all_seeds))}) | "
        "pooled AUC | "
        "first-error hit (chance) | pairwise acc | segments / response |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (name, form, mode), rs in sorted(groups.items(), key=lambda kv: (rank.get(kv[0][0], 99), kv[0][1], kv[0][2])):
        rs = sorted(rs, key=lambda r: r["seed"])
        by_seed = {r["seed"]: r["auc_within_response"] for r in rs}
        per_seed = " / ".join("–" if by_seed.get(x) is None else f"{by_seed[x]:.3f}" for x in all_seeds)
        hit = _fmt([r.get("first_error_hit_rate") for r in rs])
        chance = _fmt([r.get("first_error_chance") for r in rs])
        lines.append(
            f"| {name} | {form} | {mode} | {len(rs)} | {_fmt([r['auc_within_response'] for r in rs])} | {per_seed} | "
            f"{_fmt([r['auc'] for r in rs])} | {hit} ({chance}) | {_fmt([r.get('pairwise_accuracy') for r in rs])} | "
            f"{_fmt([r.get('segments_per_response') for r in rs])} |"
        )
    return "\n".join(lines) + "\n"


def read_records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="experiments/credit_study.yaml")
    ap.add_argument("--output_dir", default=None, help="Overrides the config's output_dir.")
    ap.add_argument("--seeds", type=int, nargs="*", default=None, help="Overrides the config's seeds.")
    ap.add_argument("--only", nargs="*", default=None, help="Run only these settings (names).")
    ap.add_argument("--summary", action="store_true", help="Only rewrite the markdown summary.")
    ap.add_argument("--seed_major", action="store_true",
                    help="Loop seeds outside settings (default: settings outside seeds, so every finished setting "
                         "has all its seeds before the next starts).")
    args = ap.parse_args(argv)

    cfg = yaml.safe_load(Path(args.config).read_text())
    out = Path(args.output_dir or cfg.get("output_dir", "runs/credit_study"))
    seeds = args.seeds if args.seeds is not None else cfg.get("seeds", [0, 1, 2])
    settings = [Setting(**s) for s in cfg["settings"]]
    order = [s.name for s in settings]
    if args.only:
        unknown = set(args.only) - set(order)
        if unknown:
            raise SystemExit(f"unknown setting(s) {sorted(unknown)}; choose from {order}")
        settings = [s for s in settings if s.name in args.only]
    jsonl, md = out / "credit_study.jsonl", out / "credit_study.md"
    out.mkdir(parents=True, exist_ok=True)
    if args.summary:
        md.write_text(summarize(read_records(jsonl), order))
        print(md.read_text())
        return 0

    torch.set_num_threads(int(cfg.get("num_threads", 1)))
    from segrl.pipeline.options import PipelineOptions

    pipe = PipelineOptions(output_dir=str(out), **cfg.get("pipeline", {})).build()
    done = {(r["setting"], r["seed"]) for r in read_records(jsonl)}
    jobs = [(s, seed) for seed in seeds for s in settings] if args.seed_major else \
        [(s, seed) for s in settings for seed in seeds]
    for s, seed in jobs:
        if (s.name, seed) in done:
            continue
        t0 = time.perf_counter()
        pipe.sft(seed)
        train_ds, eval_ds, eval_rows = entropy_sets(pipe, seed)
        run_dir = pipe.seed_dir(seed) / f"study_{s.name}"
        log(f"seed {seed}: {s.name} ...")
        if s.kind == "implicit":
            rows, meta = implicit_rows(pipe, seed, s, eval_rows, run_dir), {}
        elif s.kind == "rm":
            rm, meta = train_rm(pipe, seed, s, train_ds, run_dir)
            rows = measure_rm(rm, train_ds, eval_ds, eval_rows, s)
        else:
            raise SystemExit(f"setting {s.name}: unknown kind {s.kind!r}")
        with jsonl.open("a") as f:
            for r in rows:
                f.write(json.dumps({"setting": s.name, "seed": seed, "note": s.note, "train": meta,
                                    "seconds": time.perf_counter() - t0, **r}) + "\n")
        best = max(rows, key=lambda r: r["auc_within_response"] or 0)
        log(f"seed {seed}: {s.name} done in {time.perf_counter() - t0:.0f}s; "
            + ", ".join(f"{r['form']}/{r['mode']} {r['auc_within_response']:.3f}" for r in rows)
            + f" (best {best['form']}/{best['mode']})")
        md.write_text(summarize(read_records(jsonl), order))
    md.write_text(summarize(read_records(jsonl), order))
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
