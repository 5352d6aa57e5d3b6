"""Supervised fine-tuning of the tiny model on the credit-assignment task (stage 1 of the pipeline).

A short plain-torch loop rather than TRL's ``SFTTrainer``: for a model of a quarter of a million
parameters the trainer's per-step overhead (collation, logging, callbacks) costs as much as the step
itself, and this stage dominates the demo's run time. The loss is TRL's completion-only loss for
prompt/completion data: ``prompt + completion + EOS`` tokenised jointly, cross-entropy on the
completion tokens (EOS included) only.

The packaged checkpoint (``segrl/data/sft_arith/``) is produced by ``scripts/make_sft_checkpoint.py``
with :data:`PACKAGED_SFT` and this module; :func:`load_or_train_sft` reuses it when asked for
exactly those settings.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch

from segrl.padding import pad_rows
from segrl.sft_loop import run_sft_steps

__all__ = [
    "PACKAGED_SFT",
    "SFTSettings",
    "build_model",
    "load_or_train_sft",
    "packaged_sft_dir",
    "sft_examples",
    "train_sft",
]

ProgressFn = Callable[[int, int, float], None]


@dataclass(frozen=True)
class SFTSettings:
    """Everything the SFT weights depend on (model shape, data, optimisation)."""

    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 192
    n_examples: int = 20_000
    data_seed: int = 0
    carry_drop: float = 0.6
    slip: float = 0.05
    steps: int = 1000
    batch_size: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    seed: int = 0
    recipe: int = 1  # bump when the training code changes

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


#: The settings of the packaged checkpoint (``scripts/make_sft_checkpoint.py``).
PACKAGED_SFT = SFTSettings()
_META = "segrl_sft.json"


def packaged_sft_dir() -> Path:
    """Directory of the packaged SFT checkpoint (may not exist in a source checkout that never ran
    ``scripts/make_sft_checkpoint.py``)."""
    return Path(str(resources.files("segrl") / "data" / "sft_arith"))


def build_model(tokenizer, settings: SFTSettings):
    """A fresh tiny Llama of the shape in ``settings`` (fp32, seeded)."""
    from segrl.models.tiny import build_tiny_causal_lm

    return build_tiny_causal_lm(tokenizer, arch="llama", hidden_size=settings.hidden_size,
                                num_layers=settings.num_layers, num_heads=settings.num_heads,
                                seed=settings.seed, intermediate_size=settings.intermediate_size)


def sft_examples(tokenizer, settings: SFTSettings) -> list[tuple[list[int], int]]:
    """``(ids, prompt_length)`` per SFT row: ``prompt + completion`` tokenised jointly, plus EOS."""
    from segrl.tasks import ArithNoise, make_sft_data

    rows = make_sft_data(settings.n_examples, seed=settings.data_seed,
                         noise=ArithNoise(carry_drop=settings.carry_drop, slip=settings.slip))
    full = tokenizer([r["prompt"] + r["completion"] for r in rows], add_special_tokens=False)["input_ids"]
    prompts = tokenizer([r["prompt"] for r in rows], add_special_tokens=False)["input_ids"]
    out = []
    for ids, p in zip(full, prompts):
        if ids[: len(p)] != p:
            raise ValueError("a prompt does not tokenise to a prefix of prompt + completion")
        out.append((list(ids) + [tokenizer.eos_token_id], len(p)))
    return out


def _lr(step: int, settings: SFTSettings) -> float:
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    frac = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def train_sft(model, tokenizer, settings: SFTSettings, *, progress: ProgressFn | None = None,
              callback: Callable[[int, object], None] | None = None, callback_every: int = 0) -> list[dict]:
    """Train ``model`` in place for ``settings.steps`` AdamW steps; returns the loss log.

    ``progress(step, total, loss)`` after every step; ``callback(step, model)`` every
    ``callback_every`` steps (e.g. a held-out evaluation; the model is in eval mode during it).
    The global torch RNG is left untouched (batches come from ``random.Random(settings.seed)``).
    """
    examples = sft_examples(tokenizer, settings)
    rng = random.Random(settings.seed)
    pad = tokenizer.pad_token_id
    log: list[dict] = []

    def next_batch(step: int):
        batch = [examples[rng.randrange(len(examples))] for _ in range(settings.batch_size)]
        ids, attn = pad_rows([seq for seq, _ in batch], pad)
        labels = ids.masked_fill(attn == 0, -100)
        for j, (_, plen) in enumerate(batch):
            labels[j, :plen] = -100  # the prompt is context, not a target
        return ids, attn, labels

    def on_step(step: int, loss: float):
        if step % 10 == 1 or step == settings.steps:
            log.append({"step": step, "loss": loss})
        if progress is not None:
            progress(step, settings.steps, loss)
        if callback is not None and callback_every and step % callback_every == 0:
            model.eval()
            callback(step, model)
            model.train()

    run_sft_steps(model, next_batch, steps=settings.steps, lr_at=lambda step: _lr(step, settings),
                  learning_rate=settings.learning_rate, betas=(0.9, 0.98), on_step=on_step)
    return log


def save_sft(model, tokenizer, out_dir: Path, settings: SFTSettings, *, dtype=None, extra: dict | None = None) -> Path:
    """``save_pretrained`` model + tokenizer and a metadata file with the settings' key."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    to_save = model if dtype is None else _cast_copy(model, dtype)
    to_save.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    meta = {"key": settings.key(), "settings": asdict(settings), **(extra or {})}
    (out_dir / _META).write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def _cast_copy(model, dtype):
    import copy

    return copy.deepcopy(model).to(dtype)


def read_meta(path: Path) -> dict | None:
    try:
        return json.loads((Path(path) / _META).read_text())
    except (OSError, ValueError):
        return None


def load_or_train_sft(out_dir: Path, tokenizer, settings: SFTSettings, *, use_packaged: bool = True,
                      progress: ProgressFn | None = None, callback=None, callback_every: int = 0) -> tuple[Path, str]:
    """Make sure ``out_dir`` holds an SFT model for ``settings``; returns ``(out_dir, how)``.

    ``how`` is ``"cached"`` (``out_dir`` already had it), ``"packaged"`` (copied from the packaged
    checkpoint, which was trained with exactly these settings) or ``"trained"``.
    """
    import shutil

    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    meta = read_meta(out_dir)
    if meta is not None and meta.get("key") == settings.key() and (out_dir / "model.safetensors").is_file():
        return out_dir, "cached"
    packaged = packaged_sft_dir()
    pmeta = read_meta(packaged)
    if use_packaged and pmeta is not None and pmeta.get("key") == settings.key():
        shutil.rmtree(out_dir, ignore_errors=True)
        model = AutoModelForCausalLM.from_pretrained(packaged, dtype=torch.float32)
        save_sft(model, tokenizer, out_dir, settings, extra={"source": "packaged"})
        return out_dir, "packaged"
    model = build_model(tokenizer, settings)
    log = train_sft(model, tokenizer, settings, progress=progress, callback=callback, callback_every=callback_every)
    shutil.rmtree(out_dir, ignore_errors=True)
    save_sft(model, tokenizer, out_dir, settings, extra={"source": "trained", "loss_log": log})
    return out_dir, "trained"
