"""Reference-model entropy for entropy segmentation (SPEC §2), computed once and cached.

``entropy[t] = H(pi_ref(. | x, y_<t))`` in nats, from a **frozen** causal LM, in fp32 over the
full vocabulary. A causal LM's logits at sequence position ``i`` are the distribution of the token
at ``i + 1``, so response token ``t`` (at position ``prompt_length + t``) takes the entropy of the
logits at ``prompt_length + t - 1``. For ``prompt_length = 0`` the first response token has no
context; it gets entropy 0, which segmentation never reads (token 0 always starts segment 0).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import torch

__all__ = [
    "add_entropy_columns",
    "check_reference_vocab",
    "load_reference_model",
    "model_fingerprint",
    "reference_entropy",
]


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
        width = len(sequences[rows[0]])
        ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        for j, i in enumerate(rows):
            ids[j, : len(sequences[i])] = torch.as_tensor(list(sequences[i]), dtype=torch.long)
            attn[j, : len(sequences[i])] = 1
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
