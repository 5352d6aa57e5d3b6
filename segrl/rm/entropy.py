"""Reference-model entropy for entropy segmentation (docs/method.md#segment-rm), computed once and cached.

``entropy[t] = H(pi_ref(. | x, y_<t))`` in nats, from a **frozen** causal LM, in fp32 over the
full vocabulary. A causal LM's logits at sequence position ``i`` are the distribution of the token
at ``i + 1``, so response token ``t`` (at position ``prompt_length + t``) takes the entropy of the
logits at ``prompt_length + t - 1``. For ``prompt_length = 0`` the first response token has no
context; it gets entropy 0, which segmentation never reads (token 0 always starts segment 0).
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from segrl.padding import pad_rows

__all__ = [
    "DEFAULT_SEGMENT_TARGET_LENGTH",
    "FEW_SEGMENTS_WARNING",
    "SegmentStats",
    "add_entropy_columns",
    "check_reference_vocab",
    "load_reference_model",
    "model_fingerprint",
    "reference_entropy",
    "resolve_segment_threshold",
    "segment_stats",
    "warn_if_few_segments",
]

#: Mean segment length (tokens, EOS excluded) that ``segment_threshold="auto"`` aims for. 4 tokens
#: is a phrase-sized unit and what c = 0.2 gives on the built-in arithmetic task with the packaged
#: SFT reference (measured on tiny_prefs: c = 0.2 -> 4.1 segments per response, mean length 4.25;
#: "auto" -> c = 0.16, 4.35 segments; c = 2.0 -> 1.00 segment, i.e. a bandit RM); see
#: docs/method.md#segment-rm.
DEFAULT_SEGMENT_TARGET_LENGTH = 4.0
#: A dense RM with fewer mean segments per response than this is about a bandit RM: warn.
FEW_SEGMENTS_WARNING = 1.5


def load_reference_model(name_or_path, *, device=None, **init_kwargs):
    """The frozen reference causal LM: loaded in fp32 (unless ``dtype`` is given), eval mode, no grads.

    ``name_or_path`` may also be an already-built module, which is only frozen and moved.
    """
    if isinstance(name_or_path, torch.nn.Module):
        model = name_or_path
    elif isinstance(name_or_path, (str, os.PathLike)) and str(name_or_path):
        from transformers import AutoModelForCausalLM

        from segrl._deepspeed import whole_model_loading

        init_kwargs.setdefault("dtype", torch.float32)
        with whole_model_loading():
            model = AutoModelForCausalLM.from_pretrained(os.fspath(name_or_path), **init_kwargs)
    else:
        raise ValueError(f"`reference_model` must be a causal LM, a local path or a Hub id, got {name_or_path!r}")
    if device is not None:
        model = model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


def _embedding_rows(model) -> int:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        from segrl._deepspeed import embedding_rows

        return embedding_rows(emb.weight)
    return int(model.config.get_text_config().vocab_size)


def check_reference_vocab(tokenizer, reference_model, *, reward_model=None, reference_tokenizer=None) -> None:
    """Raise ``ValueError`` (naming ``reference_model``) unless the reference shares the RM's tokenizer.

    Checks, as far as the inputs allow: the reference tokenizer's vocabulary equals ``tokenizer``'s;
    the reference embeds every token id of ``tokenizer``; the reference and the RM have the same
    number of embedding rows (``reward_model``: a module, or an int).
    """
    n_tok = len(tokenizer)
    if reference_tokenizer is not None and reference_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(
            f"`reference_model` uses a different tokenizer ({len(reference_tokenizer)} tokens) than the reward model "
            f"({n_tok} tokens): entropy segmentation needs both to see the same token ids"
        )
    ref_rows = _embedding_rows(reference_model)
    if ref_rows < n_tok:
        raise ValueError(
            f"`reference_model` has {ref_rows} embedding rows but the tokenizer has {n_tok} tokens: tokenizer mismatch"
        )
    if reward_model is not None:
        rm_rows = reward_model if isinstance(reward_model, int) else _embedding_rows(reward_model)
        if rm_rows != ref_rows:
            raise ValueError(
                f"`reference_model` has a vocabulary of {ref_rows} rows but the reward model has {rm_rows}: "
                "they must share the tokenizer (did you add tokens to one of them?)"
            )


def model_fingerprint(model) -> str:
    """A short hash of a model's identity and weights, for ``datasets`` map caching of entropies.

    Cheap (one reduction per parameter) and changes whenever any weight changes.
    """
    h = hashlib.sha256()
    h.update(str(getattr(model.config, "_name_or_path", "")).encode())
    h.update(model.config.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            h.update(name.encode())
            h.update(str(tuple(p.shape)).encode())
            q = p.detach().double()
            h.update(repr((q.sum().item(), q.abs().sum().item(), (q * q).sum().item())).encode())
    return h.hexdigest()[:16]


_CHUNK = 256


def _entropy_fp32(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each row's softmax, computed in fp32. Shape: (N, V) -> (N,)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


@torch.no_grad()
def reference_entropy(reference_model, sequences: Sequence[Sequence[int]], prompt_lengths: Sequence[int], *,
                      batch_size: int = 8, pad_token_id: int = 0) -> list[torch.Tensor]:
    """Entropy of the reference model's next-token distribution at every response token.

    Args:
        reference_model: frozen causal LM (any dtype; logits are upcast to fp32).
        sequences: full token ids, prompt + response, one list per row.
        prompt_lengths: number of prompt tokens of each row; the response is ``seq[prompt_length:]``.
        batch_size: rows per forward pass. Rows are sorted by length first so a micro-batch pays for
            little padding; the output is in the input order.
        pad_token_id: id used for padding (masked out by the attention mask).

    Returns:
        One fp32 CPU tensor per row, of length ``len(seq) - prompt_length``.
    """
    if batch_size < 1:
        raise ValueError(f"`entropy_batch_size` must be >= 1, got {batch_size}")
    if len(sequences) != len(prompt_lengths):
        raise ValueError(f"`sequences` has {len(sequences)} rows but `prompt_lengths` has {len(prompt_lengths)}")
    for i, (seq, p) in enumerate(zip(sequences, prompt_lengths)):
        if not 0 <= p < len(seq):
            raise ValueError(f"row {i}: prompt length {p} leaves no response tokens in a sequence of {len(seq)}")
    device = next(reference_model.parameters()).device
    out: list[torch.Tensor] = [torch.empty(0)] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]), reverse=True)
    for lo in range(0, len(order), batch_size):
        rows = order[lo : lo + batch_size]
        ids, attn = pad_rows([list(sequences[i]) for i in rows], pad_token_id)
        logits = reference_model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False).logits
        for j, i in enumerate(rows):
            p, n = int(prompt_lengths[i]), len(sequences[i])
            first = max(p, 1)  # response token 0 with no prompt has no predicting position
            row = torch.zeros(n - p, dtype=torch.float32)
            # Only the positions that predict a response token, upcast to fp32 a chunk at a time so a
            # large vocabulary never needs a whole (L, V) fp32 copy.
            parts = [_entropy_fp32(chunk) for chunk in logits[j, first - 1 : n - 1].split(_CHUNK)]
            if parts:
                row[first - p :] = torch.cat(parts).cpu()
            if not bool(torch.isfinite(row).all()):
                raise ValueError("`reference_model` produced NaN or inf entropies (are its weights finite?)")
            out[i] = row
        del logits
    return out


def add_entropy_columns(dataset, reference_model, *, batch_size: int = 8, pad_token_id: int = 0,
                        name: str = "dataset", fingerprint: str | None = None):
    """Add ``chosen_entropy`` / ``rejected_entropy`` columns to a tokenised preference dataset.

    ``dataset`` has ``chosen_ids``, ``rejected_ids`` and ``prompt_length`` (see
    :func:`segrl.rm.data.tokenize_preference_dataset`). One batched ``map``; with a file-backed
    dataset, ``datasets`` caches the result under a fingerprint of the data and of the reference
    weights, so a second run (or another process) reads the cache instead of recomputing.
    """
    import datasets

    def compute(batch):
        n = len(batch["chosen_ids"])
        seqs = list(batch["chosen_ids"]) + list(batch["rejected_ids"])
        plens = list(batch["prompt_length"]) * 2
        ent = reference_entropy(reference_model, seqs, plens, batch_size=batch_size, pad_token_id=pad_token_id)
        return {"chosen_entropy": [e.tolist() for e in ent[:n]], "rejected_entropy": [e.tolist() for e in ent[n:]]}

    kwargs = {"batched": True, "batch_size": max(64, batch_size)}
    if isinstance(dataset, datasets.Dataset):
        kwargs["desc"] = f"Reference entropy for {name}"
        fp = fingerprint or model_fingerprint(reference_model)
        kwargs["new_fingerprint"] = hashlib.sha256(f"{dataset._fingerprint}-entropy-{fp}".encode()).hexdigest()[:32]
    return dataset.map(compute, **kwargs)


# --------------------------------------------------------------------------------------------------
# Choosing the threshold from the entropies
# --------------------------------------------------------------------------------------------------


def _entropy_rows(entropies) -> list[torch.Tensor]:
    rows = [torch.as_tensor(e, dtype=torch.float64).reshape(-1) for e in entropies]
    if not rows:
        raise ValueError("`entropies` is empty: need the reference entropies of at least one response")
    if any(r.numel() == 0 for r in rows):
        raise ValueError("`entropies` has an empty row; every response has at least its EOS token")
    if not all(bool(torch.isfinite(r).all()) for r in rows):
        raise ValueError("`entropies` contains NaN or inf")
    return rows


@dataclass
class SegmentStats:
    """Segments a threshold cuts in a set of responses (dense RM: EOS excluded).

    Attributes: ``segments_per_response`` (mean ``K_b`` over responses), ``mean_segment_length``
    (tokens in segments / segments), ``n_responses``.
    """

    segments_per_response: float
    mean_segment_length: float
    n_responses: int


def segment_stats(entropies, threshold: float, *, chunk_rows: int = 1024) -> SegmentStats:
    """Mean segments per response and mean segment length that ``threshold`` gives.

    Segments with :func:`segrl.ops.entropy_segment_ids` (the one segmentation rule).

    Args:
        entropies: reference entropy of every response token, one sequence per response (length
            ``n_b``, EOS included), e.g. a dataset's ``chosen_entropy`` + ``rejected_entropy``.
        threshold: ``c >= 0`` or ``math.inf``.
    """
    from segrl.ops import entropy_segment_ids, segment_counts

    rows = _entropy_rows(entropies)
    segments = tokens = 0
    for lo in range(0, len(rows), chunk_rows):
        chunk = rows[lo : lo + chunk_rows]
        width = max(r.numel() for r in chunk)
        ent = torch.zeros(len(chunk), width, dtype=torch.float64)
        mask = torch.zeros(len(chunk), width, dtype=torch.bool)
        for i, r in enumerate(chunk):
            ent[i, : r.numel()] = r
            mask[i, : r.numel()] = True
        ids = entropy_segment_ids(ent, mask, threshold)
        segments += int(segment_counts(ids).sum())
        tokens += int((ids >= 0).sum())
    return SegmentStats(segments / len(rows), tokens / max(segments, 1), len(rows))


def resolve_segment_threshold(entropies, target_length: float = DEFAULT_SEGMENT_TARGET_LENGTH) -> float:
    """``segment_threshold="auto"``: the threshold whose segments have mean length ``target_length``.

    A dense RM segments tokens ``0 .. n_b-2`` of each response; token 0 always starts a segment and
    token ``t`` in ``1 .. n_b-2`` starts one iff its entropy is ``> c``. With ``S`` tokens in
    segments and ``R`` responses of 2 or more tokens, a mean length ``L`` needs ``m = round(S / L - R)``
    cuts, so ``c`` is the entropy quantile with ``m`` candidate entropies above it: the midpoint of
    the ``m``-th and ``(m+1)``-th largest candidate (the largest candidate when ``m = 0``, half the
    smallest when every candidate must cut). Ties can make the count inexact.

    Args:
        entropies: reference entropy of every response token, one sequence per response (EOS included).
        target_length: wanted mean segment length in tokens, ``>= 1``.

    Returns:
        The resolved ``c`` (a float ``>= 0``).
    """
    if isinstance(target_length, bool) or not isinstance(target_length, (int, float)) or not (
        math.isfinite(target_length) and target_length >= 1
    ):
        raise ValueError(f"`segment_target_length` must be a number >= 1 (tokens), got {target_length!r}")
    rows = _entropy_rows(entropies)
    candidates = torch.cat([r[1:-1] for r in rows if r.numel() >= 3] or [torch.zeros(0, dtype=torch.float64)])
    if candidates.numel() == 0:
        raise ValueError(
            "segment_threshold='auto' cannot be resolved: no response has more than 2 tokens, so no threshold "
            "changes the segmentation; pass a number"
        )
    in_segments = sum(r.numel() - 1 for r in rows if r.numel() >= 2)
    responses = sum(1 for r in rows if r.numel() >= 2)
    cuts = int(min(max(round(in_segments / float(target_length) - responses), 0), candidates.numel()))
    ordered = candidates.sort(descending=True).values
    if cuts == 0:
        c = ordered[0]
    elif cuts == ordered.numel():
        c = ordered[-1] / 2
    else:
        c = (ordered[cuts - 1] + ordered[cuts]) / 2
    return float(c)


def warn_if_few_segments(entropies, threshold: float, *, target_length: float = DEFAULT_SEGMENT_TARGET_LENGTH,
                         name: str = "segment_threshold") -> SegmentStats:
    """Warn when a dense RM gets about one segment per response (mean < :data:`FEW_SEGMENTS_WARNING`).

    Such an RM is a bandit RM read at a segment end: the warning names the threshold and suggests
    the one :func:`resolve_segment_threshold` gives for ``target_length``. Returns the statistics.
    """
    stats = segment_stats(entropies, threshold)
    if not math.isinf(threshold) and stats.segments_per_response < FEW_SEGMENTS_WARNING:
        try:
            suggestion = f"try {name}={resolve_segment_threshold(entropies, target_length):.3g} (mean segment " \
                         f"length {target_length:g} tokens) or {name}='auto'"
        except ValueError:
            suggestion = "the responses are too short to segment"
        warnings.warn(
            f"{name}={threshold:g} gives {stats.segments_per_response:.2f} segments per response on the training "
            f"data (mean segment length {stats.mean_segment_length:.1f} tokens): the segment RM is about a bandit "
            f"RM; {suggestion}",
            stacklevel=2,
        )
    return stats
