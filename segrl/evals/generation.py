"""Loading a causal LM and greedy, batched, left-padded generation for the evaluation suites."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import torch

__all__ = ["Generator", "load_causal_lm", "progress_bar", "uses_chat_template"]

_DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_causal_lm(name_or_path: str, *, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False):
    """``(model, tokenizer)`` from a local directory or a Hub id, the model in eval mode on ``device``.

    ``dtype`` ``"auto"`` keeps fp32 on CPU (bf16 matmuls are slow there) and uses bf16 on a GPU
    that supports it. The tokenizer is set to left padding (decoder-only batched generation needs
    the prompts to end at the same column) with ``pad = eos`` when it has no pad token.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in _DTYPES:
        raise ValueError(f"`dtype` must be one of {sorted(_DTYPES)}, got {dtype!r}")
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    torch_dtype = _DTYPES[dtype]
    if torch_dtype is None:
        torch_dtype = torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    path = os.fspath(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"the tokenizer of `{path}` has neither a pad nor an eos token; cannot batch")
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(dev).eval(), tokenizer


def uses_chat_template(tokenizer, chat_template: str) -> bool:
    """Resolve the ``chat_template`` option: ``"true"``, ``"false"``, or ``"auto"`` (when the tokenizer
    has one)."""
    choice = str(chat_template).lower()
    if choice not in ("auto", "true", "false"):
        raise ValueError(f"`chat_template` must be 'auto', 'true' or 'false', got {chat_template!r}")
    has = bool(getattr(tokenizer, "chat_template", None))
    if choice == "true" and not has:
        raise ValueError("`chat_template` is 'true' but the tokenizer has no chat template")
    return has if choice == "auto" else choice == "true"


@contextlib.contextmanager
def progress_bar(total: int, description: str, enabled: bool = True) -> Iterator:
    """A rich progress bar; yields ``advance(k)``. Disabled: a no-op."""
    if not enabled:
        yield lambda k=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda k=1: bar.advance(task, k)


class Generator:
    """Greedy generation for lists of prompts (or chat messages), batched with left padding.

    Args:
        model, tokenizer: from :func:`load_causal_lm` (the tokenizer must pad on the left).
        batch_size: prompts per ``generate`` call. Prompts are sorted by length first so a batch
            pads little; results come back in the input order.
        progress: show a progress bar per call.
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 16, progress: bool = True):
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
        if tokenizer.padding_side != "left":
            raise ValueError("`tokenizer.padding_side` must be 'left' for batched generation (see load_causal_lm)")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.progress = batch_size, progress

    def format(self, prompt: str, *, chat: bool, system: str | None = None) -> str:
        """The text fed to the model: the prompt itself, or the chat template applied to one user turn
        (plus an optional system turn) with the generation prompt."""
        if not chat:
            return prompt
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], *, max_new_tokens: int, chat: bool = False, system: str | None = None,
                 stop: Sequence[str] = (), description: str = "generating") -> list[str]:
        """Greedy completions of ``prompts`` (decoded without special tokens, cut at the first ``stop``
        string). With ``chat`` the text already holds the template's special tokens, so none are added."""
        if max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be >= 1, got {max_new_tokens}")
        texts = [self.format(p, chat=chat, system=system) for p in prompts]
        encoded = [self.tokenizer(t, add_special_tokens=not chat)["input_ids"] for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
        outputs: list[str] = [""] * len(texts)
        device = next(self.model.parameters()).device
        with progress_bar(len(texts), description, self.progress) as advance:
            for lo in range(0, len(order), self.batch_size):
                rows = order[lo: lo + self.batch_size]
                batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt")
                batch = {k: v.to(device) for k, v in batch.items()}
                out = self.model.generate(
                    **batch, max_new_tokens=max_new_tokens, do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
                )
                new = out[:, batch["input_ids"].shape[1]:]
                for i, ids in zip(rows, new.tolist()):
                    outputs[i] = truncate_at(self.tokenizer.decode(ids, skip_special_tokens=True), stop)
                advance(len(rows))
        return outputs


def truncate_at(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the earliest occurrence of any ``stop`` string."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]
