"""Tiny offline tokenizer and causal LMs for tests, benchmarks and the demo.

Nothing here touches the Hugging Face Hub. The tokenizer is a byte-level BPE trained in well under a
second on the shipped corpus (``segrl/data/tiny_corpus.txt``); the models are randomly initialised
``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` of a few hundred thousand parameters. Everything is a
deterministic function of its arguments (seeded, with the global RNG state left untouched), and
nothing is cached between calls.

:func:`make_tiny_pair` goes one step further and writes a briefly trained *reference* (SFT) model
and a *policy* trained from it with a few DPO (+ chosen NLL) steps on the built-in preference
pairs, so that the implicit reward ``beta * (log pi - log pi_ref)`` is informative (chosen
responses up, rejected down). All training is plain torch AdamW, no TRL.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from segrl.models.tiny_data import load_tiny_corpus, load_tiny_prefs
from segrl.padding import pad_rows
from segrl.sft_loop import run_sft_steps

__all__ = [
    "SPECIAL_TOKENS",
    "CHATML_TEMPLATE",
    "TinyPair",
    "build_tiny_causal_lm",
    "build_tiny_tokenizer",
    "make_tiny_model_dir",
    "make_tiny_pair",
]

# "<|endoftext|>" is never emitted by this tokenizer; it is in the vocabulary because Qwen2Tokenizer
# (what AutoTokenizer builds for a qwen2 model directory) registers it as its default unk token and
# would otherwise append it as a 769th token the model has no embedding for.
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_ARCHS = ("llama", "qwen2")
# transformers' Qwen2Tokenizer PRETOKENIZE_REGEX (GPT-4 style; digits split one by one).
_QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
_PAIR_META = "segrl_tiny_pair.json"
# Bump whenever the tokenizer, data or training recipe changes, so saved pairs are rebuilt.
_RECIPE_VERSION = 2


def _offline_env() -> None:
    # Loading from a local directory works without these, but a stray Hub id would otherwise spend
    # ~50 s retrying before failing; with them it fails at once.
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(key, "1")


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------


def build_tiny_tokenizer(vocab_size: int = 768, model_max_length: int = 1024):
    """A byte-level BPE tokenizer trained on the shipped tiny corpus, with a ChatML chat template.

    Special tokens (ids 0-5, in this order): ``<|pad|>``, ``<|bos|>``, ``<|eos|>``, ``<|im_start|>``,
    ``<|im_end|>``, ``<|endoftext|>`` (reserved, see :data:`SPECIAL_TOKENS`). Normaliser and
    pre-tokeniser are Qwen2's (NFC; digits split one by one), so a directory saved with a qwen2 or a
    llama model reloads through ``AutoTokenizer`` to exactly the same ids. Like Qwen2's tokenizer it
    adds no BOS/EOS when encoding. Byte-level, so any NFC text round-trips through
    ``decode(encode(text))``. Deterministic: the same vocabulary and merges on every call and in
    every process.

    Returns a ``transformers.PreTrainedTokenizerFast``.
    """
    _offline_env()
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"`vocab_size` must be at least {256 + len(SPECIAL_TOKENS)} (bytes + specials), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    # Exactly Qwen2's normaliser and pre-tokeniser: AutoTokenizer loads any directory whose config
    # says model_type "qwen2" as Qwen2Tokenizer, which rebuilds these two from its own constants.
    # Using them everywhere makes the in-memory, Llama-dir and Qwen2-dir tokenizers identical.
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # One "sentence" per line; the trainer only counts words, so the split does not change the result.
    tok.train_from_iterator(load_tiny_corpus().splitlines(), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
        model_max_length=model_max_length,
        padding_side="right",
    )
    hf_tok.chat_template = CHATML_TEMPLATE
    return hf_tok


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


def build_tiny_causal_lm(
    tokenizer,
    arch: str = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    **overrides,
):
    """A randomly initialised tiny ``LlamaForCausalLM`` or ``Qwen2ForCausalLM`` (fp32, eval mode).

    ``vocab_size`` is ``len(tokenizer)``, embeddings are tied, ``max_position_embeddings`` is 1024,
    the MLP width is ``2 * hidden_size``, and pad/bos/eos ids come from the tokenizer. Any config
    field can be overridden with ``**overrides`` (e.g. ``num_key_value_heads=2``, ``vocab_size=...``).
    Weights are a deterministic function of ``seed``; the global torch RNG state is left unchanged.
    """
    _offline_env()
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if arch not in _ARCHS:
        raise ValueError(f"`arch` must be one of {_ARCHS}, got {arch!r}")
    if hidden_size % num_heads:
        raise ValueError(f"`hidden_size` ({hidden_size}) must be divisible by `num_heads` ({num_heads})")
    fields = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    fields.update(overrides)
    config_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    config = config_cls(**fields)
    # fork_rng: seeding must not change the caller's random stream (tests run in one process).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model.float().eval()


def make_tiny_model_dir(
    out_dir: str | os.PathLike,
    arch: str = "llama",
    seed: int = 0,
    tokenizer=None,
    **model_kwargs,
) -> Path:
    """Build a tiny model (and the tiny tokenizer unless one is given) and ``save_pretrained`` both.

    The directory then loads with ``AutoModelForCausalLM.from_pretrained(out_dir)`` and
    ``AutoTokenizer.from_pretrained(out_dir)``. ``model_kwargs`` go to :func:`build_tiny_causal_lm`.
    Returns ``Path(out_dir)``.
    """
    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    model = build_tiny_causal_lm(tokenizer, arch=arch, seed=seed, **model_kwargs)
    return _save(model, tokenizer, Path(out_dir))


def _save(model, tokenizer, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# --------------------------------------------------------------------------------------------------
# A trained SFT (reference) model and a DPO policy
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyPair:
    """Paths written by :func:`make_tiny_pair`. ``ref`` is the SFT model (the DPO reference)."""

    sft: Path
    policy: Path

    @property
    def ref(self) -> Path:
        return self.sft


@dataclass(frozen=True)
class _PairSpec:
    # Everything the saved weights depend on; a directory built with another spec is rebuilt.
    arch: str
    seed: int
    hidden_size: int
    num_layers: int
    num_heads: int
    sft_steps: int
    policy_steps: int
    beta: float
    recipe: int = _RECIPE_VERSION


ProgressFn = Callable[[str, int, int], None]


def make_tiny_pair(
    out_dir: str | os.PathLike,
    arch: str = "llama",
    seed: int = 0,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    sft_steps: int = 200,
    policy_steps: int = 80,
    beta: float = 0.1,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> TinyPair:
    """Write ``out_dir/sft`` (reference) and ``out_dir/policy``, sharing one tokenizer.

    - ``sft``: a tiny model trained for ``sft_steps`` AdamW steps of next-token prediction on the
      shipped corpus and the built-in preference data's ``prompt + chosen`` texts, so it writes
      running sums rather than noise.
    - ``policy``: ``sft`` trained ``policy_steps`` further steps on the built-in pairs with the DPO
      (sigmoid) loss against ``sft`` as reference plus an NLL term on the chosen responses, so the
      implicit reward ``beta * (log pi_policy - log pi_sft)`` is higher on chosen than on rejected
      responses, sequence by sequence and mostly token by token.

    If ``out_dir`` already holds a pair built with the same arguments, it is reused (nothing is
    trained) unless ``overwrite``. ``progress(stage, step, total)`` is called during training.
    Deterministic given ``seed`` (and the torch build); the global RNG state and torch's thread
    count are restored afterwards (training runs single-threaded, see :func:`_single_thread`).
    A few seconds on one CPU core with the defaults.
    """
    if sft_steps < 0 or policy_steps < 0:
        raise ValueError(f"`sft_steps` and `policy_steps` must be >= 0, got {sft_steps} and {policy_steps}")
    if not beta > 0:
        raise ValueError(f"`beta` must be > 0, got {beta}")
    if arch not in _ARCHS:
        raise ValueError(f"`arch` must be one of {_ARCHS}, got {arch!r}")
    out = Path(out_dir)
    spec = _PairSpec(arch, seed, hidden_size, num_layers, num_heads, sft_steps, policy_steps, float(beta))
    pair = TinyPair(sft=out / "sft", policy=out / "policy")
    meta_path = out / _PAIR_META
    if not overwrite and _pair_is_complete(pair, meta_path, spec):
        return pair

    from segrl.rewards.implicit import _sequence_token_logprobs, tokenize_pairs

    tokenizer = build_tiny_tokenizer()
    prefs = load_tiny_prefs()
    with torch.random.fork_rng(devices=[]), _single_thread():
        torch.manual_seed(seed)
        model = build_tiny_causal_lm(
            tokenizer, arch=arch, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads, seed=seed
        )
        texts = _sft_texts(tokenizer, prefs)
        _train_sft(model, tokenizer, texts, steps=sft_steps, seed=seed, progress=progress)
        # Write the SFT model before DPO changes the weights in place.
        for p in (pair.sft, pair.policy):
            shutil.rmtree(p, ignore_errors=True)
        meta_path.unlink(missing_ok=True)
        _save(model.eval(), tokenizer, pair.sft)

        ref = build_tiny_causal_lm(
            tokenizer, arch=arch, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads, seed=seed
        )
        ref.load_state_dict(model.state_dict())
        ref.requires_grad_(False)
        _train_dpo(
            model, ref, tokenizer, prefs, steps=policy_steps, beta=beta, seed=seed, progress=progress,
            tokenize=tokenize_pairs, logprobs=_sequence_token_logprobs,
        )
        _save(model.eval(), tokenizer, pair.policy)
    # The marker goes last: an interrupted build is never mistaken for a finished one.
    meta_path.write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return pair


@contextlib.contextmanager
def _single_thread():
    """Run torch single-threaded for the duration, then restore the caller's thread count.

    The models are far too small to gain from intra-op parallelism, and on a busy machine (say
    ``pytest -n 2`` on two cores) two spin-waiting threads per process made a training step 10-30x
    slower. One thread also makes the trained weights independent of the machine's core count.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _pair_is_complete(pair: TinyPair, meta_path: Path, spec: _PairSpec) -> bool:
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    files = ("config.json", "model.safetensors", "tokenizer.json")
    return meta == asdict(spec) and all((d / f).is_file() for d in (pair.sft, pair.policy) for f in files)


def _sft_texts(tokenizer, prefs: Sequence[dict], max_tokens: int = 64) -> list[list[int]]:
    """Token-id sequences for SFT: each ``prompt + chosen + eos``, and corpus lines packed into
    chunks of at most ``max_tokens``."""
    eos = tokenizer.eos_token_id
    seqs = [tokenizer(p["prompt"] + p["chosen"], add_special_tokens=False)["input_ids"] + [eos] for p in prefs]
    lines = [line + "\n" for line in load_tiny_corpus().splitlines() if line.strip()]
    chunk: list[int] = []
    for ids in tokenizer(lines, add_special_tokens=False)["input_ids"]:
        ids = ids[:max_tokens]
        if len(chunk) + len(ids) > max_tokens:
            seqs.append(chunk)
            chunk = []
        chunk = chunk + ids
    if chunk:
        seqs.append(chunk)
    return seqs


def _lr_at(step: int, steps: int, lr: float, warmup: int = 10) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _train_sft(model, tokenizer, seqs, *, steps: int, seed: int, progress: ProgressFn | None,
               batch_size: int = 16, lr: float = 3e-3) -> None:
    rng = random.Random(seed)
    n_pref = len(load_tiny_prefs())

    def next_batch(step: int):
        # Half of every batch is preference-format text so the model learns the response format,
        # the other half is corpus so it is a (very small) general LM.
        idx = [rng.randrange(n_pref) for _ in range(batch_size // 2)]
        idx += [rng.randrange(n_pref, len(seqs)) for _ in range(batch_size - len(idx))]
        ids, attn = pad_rows([seqs[i] for i in idx], tokenizer.pad_token_id)
        return ids, attn, ids.masked_fill(attn == 0, -100)

    on_step = None if progress is None else (lambda step, _loss: progress("sft", step, steps))
    run_sft_steps(model, next_batch, steps=steps, lr_at=lambda step: _lr_at(step, steps, lr), learning_rate=lr,
                  on_step=on_step)


def _train_dpo(model, ref, tokenizer, prefs, *, steps: int, beta: float, seed: int, progress: ProgressFn | None,
               tokenize, logprobs, batch_size: int = 16, lr: float = 3e-3, nll_weight: float = 1.0) -> None:
    """Plain-torch sigmoid DPO plus a per-token NLL term on the chosen responses (as in RPO):
    ``-log sigmoid(beta * ((lp_w - lp_w^ref) - (lp_l - lp_l^ref))) + nll_weight * NLL(y_w)``.

    Pure DPO on so few pairs mostly pushes *both* responses down (every token's implicit reward
    negative); the NLL term keeps chosen tokens above the reference, so token rewards have the
    sign pattern a reader expects (chosen mostly > 0, rejected mostly < 0).
    """
    rng = random.Random(seed + 1)
    prompts = [p["prompt"] for p in prefs]
    # Chosen and rejected of every pair in one (2N, ...) batch: rows [0, N) chosen, [N, 2N) rejected.
    enc = tokenize(tokenizer, prompts + prompts, [p["chosen"] for p in prefs] + [p["rejected"] for p in prefs])
    n = len(prefs)
    with torch.no_grad():
        ref_lp = logprobs(ref, *enc).sum(-1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for step in range(steps):
        idx = torch.tensor([rng.randrange(n) for _ in range(batch_size)])
        rows = torch.cat([idx, idx + n])
        sub = (enc[0][rows], enc[1][rows], enc[2][rows], enc[3].select(rows))
        token_lp = logprobs(model, *sub)
        margin = (token_lp.sum(-1) - ref_lp[rows]).view(2, -1)
        loss = -torch.nn.functional.logsigmoid(beta * (margin[0] - margin[1])).mean()
        chosen_mask = sub[3].mask[: len(idx)]
        loss = loss - nll_weight * (token_lp[: len(idx)] * chosen_mask).sum() / chosen_mask.sum()
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup=min(10, max(1, steps // 4)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if progress is not None:
            progress("dpo", step + 1, steps)
    model.eval()
