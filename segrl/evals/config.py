"""Options of ``segrl eval`` (also usable from Python: ``run_eval(EvalConfig(...))``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

__all__ = ["SUITES", "EvalConfig"]

#: Suite names, in the order they run.
SUITES = ("arith", "humaneval", "reasoning_gym", "refusal", "mmlu", "gsm8k")


def _split(values) -> list[str]:
    # Accept "a,b", ["a", "b"] and ["a,b"] alike (flags, YAML strings and YAML lists).
    items = [values] if isinstance(values, str) else list(values or [])
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


@dataclass
class EvalConfig:
    """Options of ``segrl eval`` (flags, or keys of the ``--config`` YAML file)."""

    model_name_or_path: str = field(metadata={"help": "Causal LM to evaluate: a local directory or a Hub id."})
    output_dir: str = field(metadata={"help": "Directory for eval_results.json, eval_results.md and samples."})
    suites: list[str] = field(
        default_factory=lambda: ["arith"],
        metadata={"help": f"Suites to run (space- or comma-separated, or 'all'): {', '.join(SUITES)}."},
    )
    limit: Optional[int] = field(
        default=None,
        metadata={"help": "Cap on the items of every suite (quick runs; per task for reasoning_gym, per subject "
                          "for mmlu); None = each suite's size."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the arith held-out prompts and reasoning-gym problems."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per generate() call."})
    chat_template: str = field(
        default="auto",
        metadata={"help": "Wrap prompts in the tokenizer's chat template: auto (when it has one; plain text for "
                          "the arith suite, which trains on plain text), true, or false."},
    )
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N, or auto."})
    dtype: str = field(
        default="auto", metadata={"help": "auto (fp32 on CPU, bf16 on GPU), float32, bfloat16, float16."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})
    save_samples: bool = field(default=True, metadata={"help": "Write samples_<suite>.jsonl with every generation."})

    # arith
    arith_n: int = field(default=500, metadata={"help": "arith: number of held-out prompts."})
    arith_min_terms: int = field(default=4, metadata={"help": "arith: fewest terms per prompt."})
    arith_max_terms: int = field(default=6, metadata={"help": "arith: most terms per prompt."})
    arith_max_new_tokens: Optional[int] = field(
        default=None, metadata={"help": "arith: generation budget (default 12 * max_terms + 8)."}
    )

    # humaneval
    humaneval_max_new_tokens: int = field(default=384, metadata={"help": "humaneval: generation budget."})
    humaneval_timeout: float = field(default=10.0, metadata={"help": "humaneval: wall-clock seconds per program."})
    humaneval_memory_mb: int = field(
        default=1024, metadata={"help": "humaneval: address-space limit per program (MiB)."}
    )
    humaneval_workers: int = field(default=2, metadata={"help": "humaneval: programs run in parallel."})

    # reasoning_gym
    rg_tasks: list[str] = field(
        default_factory=lambda: ["gsm_symbolic"],
        metadata={"help": "reasoning_gym: dataset names (e.g. gsm_symbolic basic_arithmetic)."},
    )
    rg_size: int = field(default=100, metadata={"help": "reasoning_gym: problems per dataset."})
    rg_max_new_tokens: int = field(default=256, metadata={"help": "reasoning_gym: generation budget."})
    rg_template: str = field(
        default="Question: {question}\nAnswer:",
        metadata={"help": "reasoning_gym: plain-text prompt template (must contain {question})."},
    )

    # refusal
    refusal_source: str = field(
        default="builtin",
        metadata={"help": "refusal: builtin, advbench, harmbench, donotanswer, installed, or a .txt/.jsonl path."},
    )
    refusal_max_new_tokens: int = field(default=128, metadata={"help": "refusal: generation budget."})
    judge: str = field(default="rules", metadata={"help": "refusal: judge, 'rules' or 'reward_model'."})
    judge_model: Optional[str] = field(
        default=None, metadata={"help": "refusal: sequence-classification model for judge=reward_model."}
    )
    judge_threshold: Optional[float] = field(
        default=None, metadata={"help": "refusal: score > threshold is a refusal (rules: 0.5, reward_model: 0.0)."}
    )
    judge_label: int = field(default=1, metadata={"help": "refusal: class index scored by a multi-label judge model."})
    refusal_phrases_file: Optional[str] = field(
        default=None, metadata={"help": "refusal: replace the built-in refusal phrases (one per line)."}
    )
    refusal_window: int = field(
        default=200, metadata={"help": "refusal: the rules judge looks at the first N characters of a reply."}
    )

    # mmlu
    mmlu_dataset: str = field(
        default="cais/mmlu",
        metadata={"help": "mmlu: Hub id or local copy (.json/.jsonl/.parquet/.csv file(s), save_to_disk directory, "
                          "or a directory of <split>.jsonl / <split>-*.parquet files) with columns question, "
                          "subject, choices (4), answer (0-3)."},
    )
    mmlu_config: Optional[str] = field(default="all", metadata={"help": "mmlu: dataset config (Hub) or subfolder."})
    mmlu_split: str = field(default="test", metadata={"help": "mmlu: split scored."})
    mmlu_subjects: list[str] = field(
        default_factory=list, metadata={"help": "mmlu: subjects to keep (e.g. astronomy); empty = all."}
    )
    mmlu_num_fewshot: int = field(
        default=0, metadata={"help": "mmlu: solved examples per prompt (lm-eval's mmlu default: 0; 5 is common)."}
    )
    mmlu_fewshot_dataset: Optional[str] = field(
        default=None, metadata={"help": "mmlu: where few-shot examples come from (default: mmlu_dataset)."}
    )
    mmlu_fewshot_split: str = field(default="dev", metadata={"help": "mmlu: split of the few-shot examples."})

    # gsm8k
    gsm8k_dataset: str = field(
        default="openai/gsm8k",
        metadata={"help": "gsm8k: Hub id or local copy (as for mmlu_dataset) with columns question and answer "
                          "(reasoning ending in '#### <number>')."},
    )
    gsm8k_config: Optional[str] = field(default="main", metadata={"help": "gsm8k: dataset config (Hub) or subfolder."})
    gsm8k_split: str = field(default="test", metadata={"help": "gsm8k: split scored."})
    gsm8k_num_fewshot: int = field(default=5, metadata={"help": "gsm8k: solved examples per prompt (lm-eval: 5)."})
    gsm8k_fewshot_dataset: Optional[str] = field(
        default=None, metadata={"help": "gsm8k: where few-shot examples come from (default: gsm8k_dataset)."}
    )
    gsm8k_fewshot_split: str = field(default="train", metadata={"help": "gsm8k: split of the few-shot examples."})
    gsm8k_fewshot_seed: int = field(
        default=1234, metadata={"help": "gsm8k: seed of the few-shot draw (1234 = lm-eval's)."}
    )
    gsm8k_max_new_tokens: int = field(default=256, metadata={"help": "gsm8k: generation budget (lm-eval: 256)."})

    def __post_init__(self):
        suites = _split(self.suites)
        self.suites = list(SUITES) if suites == ["all"] else suites
        unknown = [s for s in self.suites if s not in SUITES]
        if unknown or not self.suites:
            raise ValueError(f"`suites` must be 'all' or names from {SUITES}, got {self.suites!r}")
        self.rg_tasks = _split(self.rg_tasks)
        self.mmlu_subjects = _split(self.mmlu_subjects)
        for name in ("mmlu_num_fewshot", "gsm8k_num_fewshot"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}")
        if self.gsm8k_max_new_tokens < 1:
            raise ValueError(f"`gsm8k_max_new_tokens` must be >= 1, got {self.gsm8k_max_new_tokens}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"`limit` must be >= 1 or None, got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {self.batch_size}")
        if str(self.chat_template).lower() not in ("auto", "true", "false"):
            raise ValueError(f"`chat_template` must be auto, true or false, got {self.chat_template!r}")
        if self.judge not in ("rules", "reward_model"):
            raise ValueError(f"`judge` must be 'rules' or 'reward_model', got {self.judge!r}")

    def capped(self, n: int | None) -> int | None:
        """``n`` capped by ``limit`` (``None`` stays ``None`` unless there is a limit)."""
        if self.limit is None:
            return n
        return self.limit if n is None else min(n, self.limit)
