"""Run the selected suites on one model and write the results (``segrl eval``'s engine)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from segrl.evals.config import EvalConfig
from segrl.evals.generation import Generator, load_causal_lm, uses_chat_template
from segrl.evals.report import write_report

__all__ = ["run_eval"]


def _chat_only_if_true(cfg: EvalConfig, tokenizer) -> bool:
    # "auto" means plain text: arith trains on plain text, and lm-eval scores MMLU / GSM8K on plain
    # text unless told to apply the chat template.
    return str(cfg.chat_template).lower() == "true" and uses_chat_template(tokenizer, "true")


def _arith(cfg: EvalConfig, gen: Generator, tokenizer):
    from segrl.evals.arith import evaluate_arith

    chat = _chat_only_if_true(cfg, tokenizer)
    metrics, samples = evaluate_arith(gen, n=cfg.capped(cfg.arith_n), seed=cfg.seed, min_terms=cfg.arith_min_terms,
                                      max_terms=cfg.arith_max_terms, max_new_tokens=cfg.arith_max_new_tokens, chat=chat)
    return metrics, samples, {"chat_template": chat}


def _humaneval(cfg: EvalConfig, gen: Generator, tokenizer):
    from segrl.evals.humaneval import evaluate_humaneval

    chat = uses_chat_template(tokenizer, cfg.chat_template)
    metrics, samples = evaluate_humaneval(gen, limit=cfg.capped(None), max_new_tokens=cfg.humaneval_max_new_tokens,
                                          chat=chat, timeout_s=cfg.humaneval_timeout,
                                          memory_mb=cfg.humaneval_memory_mb, workers=cfg.humaneval_workers)
    return metrics, samples, {"chat_template": chat, "timeout_s": cfg.humaneval_timeout,
                              "memory_mb": cfg.humaneval_memory_mb}


def _reasoning_gym(cfg: EvalConfig, gen: Generator, tokenizer):
    from segrl.evals.reasoning import evaluate_reasoning_gym

    chat = uses_chat_template(tokenizer, cfg.chat_template)
    metrics, samples = evaluate_reasoning_gym(gen, tasks=cfg.rg_tasks, size=cfg.capped(cfg.rg_size), seed=cfg.seed,
                                              max_new_tokens=cfg.rg_max_new_tokens, chat=chat, template=cfg.rg_template)
    return metrics, samples, {"chat_template": chat, "tasks": cfg.rg_tasks}


def _refusal(cfg: EvalConfig, gen: Generator, tokenizer):
    from segrl.evals.refusal import evaluate_refusal, make_judge

    chat = uses_chat_template(tokenizer, cfg.chat_template)
    judge = make_judge(cfg.judge, model=cfg.judge_model, threshold=cfg.judge_threshold, label=cfg.judge_label,
                       phrases_file=cfg.refusal_phrases_file, window=cfg.refusal_window, device=cfg.device,
                       batch_size=cfg.batch_size)
    metrics, samples = evaluate_refusal(gen, judge, source=cfg.refusal_source, limit=cfg.capped(None),
                                        max_new_tokens=cfg.refusal_max_new_tokens, chat=chat)
    return metrics, samples, {"chat_template": chat, "source": cfg.refusal_source, "judge": judge.name,
                              "threshold": judge.threshold}


def _mmlu_items(cfg: EvalConfig) -> list[dict]:
    from segrl.evals.mmlu import mmlu_items

    return mmlu_items(cfg.mmlu_dataset, config=cfg.mmlu_config, split=cfg.mmlu_split, subjects=cfg.mmlu_subjects,
                      num_fewshot=cfg.mmlu_num_fewshot, fewshot_dataset=cfg.mmlu_fewshot_dataset,
                      fewshot_split=cfg.mmlu_fewshot_split, limit=cfg.capped(None))


def _gsm8k_items(cfg: EvalConfig) -> list[dict]:
    from segrl.evals.gsm8k import gsm8k_items

    return gsm8k_items(cfg.gsm8k_dataset, config=cfg.gsm8k_config, split=cfg.gsm8k_split,
                       num_fewshot=cfg.gsm8k_num_fewshot, fewshot_dataset=cfg.gsm8k_fewshot_dataset,
                       fewshot_split=cfg.gsm8k_fewshot_split, fewshot_seed=cfg.gsm8k_fewshot_seed,
                       limit=cfg.capped(None))


def _mmlu(cfg: EvalConfig, gen: Generator, tokenizer, items: list[dict]):
    from segrl.evals.mmlu import evaluate_mmlu

    chat = _chat_only_if_true(cfg, tokenizer)
    metrics, samples = evaluate_mmlu(gen, items=items, chat=chat)
    return metrics, samples, {"chat_template": chat, "dataset": cfg.mmlu_dataset, "split": cfg.mmlu_split,
                              "num_fewshot": cfg.mmlu_num_fewshot}


def _gsm8k(cfg: EvalConfig, gen: Generator, tokenizer, items: list[dict]):
    from segrl.evals.gsm8k import evaluate_gsm8k

    chat = _chat_only_if_true(cfg, tokenizer)
    metrics, samples = evaluate_gsm8k(gen, items=items, max_new_tokens=cfg.gsm8k_max_new_tokens, chat=chat)
    return metrics, samples, {"chat_template": chat, "dataset": cfg.gsm8k_dataset, "split": cfg.gsm8k_split,
                              "num_fewshot": cfg.gsm8k_num_fewshot}


_RUNNERS = {"arith": _arith, "humaneval": _humaneval, "reasoning_gym": _reasoning_gym, "refusal": _refusal,
            "mmlu": _mmlu, "gsm8k": _gsm8k}
#: Suites whose data sets are read (and checked) before the model loads; their runners take ``items``.
_DATA = {"mmlu": _mmlu_items, "gsm8k": _gsm8k_items}


def run_eval(cfg: EvalConfig) -> dict:
    """Load the model once, run ``cfg.suites`` in order, write the outputs; return the results dict.

    Outputs in ``cfg.output_dir``: ``eval_results.json`` (config, and per suite its metrics, settings
    and seconds), ``eval_results.md`` (one table row per metric) and, with ``save_samples``,
    ``samples_<suite>.jsonl``. The MMLU and GSM8K data are read first, so a wrong path or an
    unreachable Hub id fails before the model loads.
    """
    data = {suite: _DATA[suite](cfg) for suite in cfg.suites if suite in _DATA}  # a bad path fails before the model
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_causal_lm(cfg.model_name_or_path, device=cfg.device, dtype=cfg.dtype,
                                      trust_remote_code=cfg.trust_remote_code)
    gen = Generator(model, tokenizer, batch_size=cfg.batch_size, progress=cfg.progress)
    results = {"model": cfg.model_name_or_path, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "config": asdict(cfg), "suites": {}}
    for suite in cfg.suites:
        start = time.perf_counter()
        extra = {"items": data[suite]} if suite in data else {}
        metrics, samples, info = _RUNNERS[suite](cfg, gen, tokenizer, **extra)
        results["suites"][suite] = {"metrics": metrics, "info": info,
                                    "seconds": round(time.perf_counter() - start, 2)}
        if cfg.save_samples:
            with open(out / f"samples_{suite}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
        write_report(results, out)  # after every suite: a later failure keeps the finished ones
    return results
