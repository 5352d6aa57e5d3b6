"""The segment reward model: a sequence-classification RM read at every position.

The network is exactly what TRL's ``RewardTrainer`` trains: ``AutoModelForSequenceClassification``
with ``num_labels=1`` on any causal-LM backbone. Those models (Llama, Qwen2, Mistral, GPT-2, ...)
apply their ``score`` head to **every** position and then pool the last non-pad token; segrl keeps
the per-position output (captured with a forward hook on the head, so the call still goes through
DDP / DeepSpeed / PEFT wrappers and gradients stay synchronised) and reads it where docs/method.md#segment-rm says.
Reading it at EOS is the ordinary RM, so ``threshold = inf`` *is* TRL's RM.

What the segment RM needs besides weights travels in ``config.json`` under ``"segment_rm"``:
the threshold (``"inf"`` as a string: JSON has no infinity), the reference model it segments with,
and the fitted location normaliser (or ``null``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from segrl.padding import pad_rows
from segrl.ops import LocationNormalizerCoef, location_normalize
from segrl.rm.scoring import (
    SegmentTokenRewards,
    form_segment_rewards,
    gather_response_values,
    parse_reward_form,
    segment_sequence_scores,
    segment_token_rewards,
)

__all__ = [
    "CONFIG_KEY",
    "SegmentRMSettings",
    "SegmentRewardModel",
    "SegmentedResponses",
    "capture_per_position_values",
    "find_score_head",
    "parse_threshold",
    "per_position_values",
]

CONFIG_KEY = "segment_rm"
_FORMAT = 1


def parse_threshold(value, name: str = "segment_threshold", *, allow_auto: bool = False) -> float | str:
    """A threshold from Python, YAML or JSON: a number >= 0, or ``inf`` (also ``"inf"``, ``None``).

    With ``allow_auto``, ``"auto"`` is returned as is (resolved later from the training data's
    reference entropies, see :func:`segrl.rm.entropy.resolve_segment_threshold`).
    """
    expected = "a number >= 0, 'inf' or 'auto'" if allow_auto else "a number >= 0 or 'inf'"
    if value is None:
        return math.inf
    if isinstance(value, str):
        text = value.strip().lower()
        if text in {"inf", "+inf", "infinity", "none", "null", "bandit"}:
            return math.inf
        if allow_auto and text == "auto":
            return "auto"
        try:
            value = float(text)
        except ValueError as err:
            raise ValueError(f"`{name}` must be {expected}, got {value!r}") from err
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"`{name}` must be {expected}, got {value!r}")
    value = float(value)
    if math.isnan(value) or value < 0:
        raise ValueError(f"`{name}` must be >= 0 (0 = token-level, inf = bandit), got {value!r}")
    return value


@dataclass
class SegmentRMSettings:
    """The segment-RM fields stored in ``config.segment_rm``.

    ``threshold`` is ``c`` (``math.inf`` for the bandit RM); ``reference_model`` the path / Hub id
    of the frozen reference causal LM whose entropy cuts segments; ``normalizer`` the fitted
    location normaliser or ``None``; ``sigma_floor`` the floor on ``sigma(p)``; ``reward_form`` the
    token-reward form (``"value"`` | ``"delta"``) the normaliser is fitted on, and the RM's default
    form (saved RMs from before reward forms existed read as ``"value"``, what they were fitted on).
    """

    threshold: float = math.inf
    reference_model: str | None = None
    normalizer: LocationNormalizerCoef | None = None
    sigma_floor: float = 1e-2
    reward_form: str = "value"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "format": _FORMAT,
            "threshold": "inf" if math.isinf(self.threshold) else float(self.threshold),
            "reference_model": self.reference_model,
            "normalizer": None if self.normalizer is None else self.normalizer.to_dict(),
            "sigma_floor": float(self.sigma_floor),
            "reward_form": self.reward_form,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict | None) -> SegmentRMSettings:
        if data is None:
            raise ValueError(
                f"the model config has no `{CONFIG_KEY}` entry: it was not saved as a segment RM. Load it with "
                "SegmentRewardModel(model, tokenizer, threshold=..., reference_model=...) instead"
            )
        data = dict(data)
        known = {"format", "threshold", "reference_model", "normalizer", "sigma_floor", "reward_form"}
        fmt = data.get("format", _FORMAT)
        if type(fmt) is not int or fmt != _FORMAT:
            raise ValueError(f"`{CONFIG_KEY}.format` is {fmt!r}, but this segrl reads format {_FORMAT} "
                             "(saved by another segrl version?)")
        sigma_floor = data.get("sigma_floor", 1e-2)
        if isinstance(sigma_floor, bool) or not isinstance(sigma_floor, (int, float)) or not 0 < sigma_floor < math.inf:
            raise ValueError(f"`{CONFIG_KEY}.sigma_floor` must be a finite number > 0, got {sigma_floor!r}")
        norm = data.get("normalizer")
        return cls(
            threshold=parse_threshold(data.get("threshold"), "segment_rm.threshold"),
            reference_model=data.get("reference_model"),
            normalizer=None if norm is None else LocationNormalizerCoef.from_dict(norm, f"{CONFIG_KEY}.normalizer"),
            sigma_floor=float(sigma_floor),
            reward_form=parse_reward_form(data.get("reward_form", "value"), "segment_rm.reward_form"),
            extra={k: v for k, v in data.items() if k not in known},
        )


# --------------------------------------------------------------------------------------------------
# Per-position values
# --------------------------------------------------------------------------------------------------


def stored_reference(reference: str | None, rm_dir) -> str | None:
    """How an RM saved in ``rm_dir`` records its reference model: as given (a Hub id, or a path),
    except that a local path inside ``rm_dir`` is stored relative to it (``"./ref"``), so the RM
    directory can be moved or pushed to the Hub with its reference."""
    if not reference or not os.path.exists(reference):
        return reference
    ref, root = Path(reference).resolve(), Path(rm_dir).resolve()
    if ref == root or root in ref.parents:
        return "./" + ref.relative_to(root).as_posix() if ref != root else "."
    return reference


def resolve_reference(stored: str | None, rm_dir) -> str | None:
    """The reference model of an RM loaded from ``rm_dir``: a stored ``./...`` path is relative to
    ``rm_dir``; any other relative path is tried relative to ``rm_dir`` and then as given (the
    working directory, or a Hub id)."""
    if not stored or os.path.isabs(stored):
        return stored
    inside = Path(rm_dir) / stored
    if stored.startswith("./") or stored == "." or (os.path.exists(inside) and not os.path.exists(stored)):
        return os.fspath(inside)
    return stored


def same_model_path(a: str | None, b: str | None) -> bool:
    """Whether two model references name the same model (local paths compared after resolving)."""
    if a is None or b is None:
        return a == b
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return a == b


def _unwrap(model):
    # DDP / DeepSpeed engines keep the model in `.module`; PEFT models expose the base model.
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def find_score_head(model) -> torch.nn.Module:
    """The linear head a sequence-classification model applies per position (``score``)."""
    base = _unwrap(model)
    head = getattr(base, "score", None)
    if not isinstance(head, torch.nn.Module):
        raise ValueError(
            f"`model` ({type(base).__name__}) has no per-position `score` head; the segment RM needs an "
            "AutoModelForSequenceClassification(num_labels=1) on a causal-LM backbone"
        )
    return head


class _Captured:
    values: torch.Tensor | None = None


@contextmanager
def capture_per_position_values(model):
    """Context manager: while active, forward calls of ``model`` store the score head's output.

    Yields an object whose ``.values`` is the last captured ``(B, L)`` tensor (part of the graph).
    """
    head = find_score_head(model)
    captured = _Captured()

    def hook(_module, _inputs, output):
        captured.values = output

    handle = head.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()
    if captured.values is not None:
        out = captured.values
        if out.dim() != 3 or out.shape[-1] != 1:
            raise ValueError(
                f"the score head produced shape {tuple(out.shape)}; expected (B, L, 1) per-position scalars "
                "(is num_labels == 1 and is the head applied before pooling?)"
            )
        captured.values = out.squeeze(-1)


def per_position_values(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs):
    """Run the RM once; return ``(values, outputs)``.

    ``values``: the head's scalar at every position. Shape: (B, L). ``outputs``: the model's own
    output, whose ``logits`` (B, 1) are the pooled (last non-pad token) scores.
    """
    with capture_per_position_values(model) as cap:
        outputs = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
    if cap.values is None or cap.values.shape != input_ids.shape:
        raise ValueError("the score head was not applied at every position of `input_ids`")
    return cap.values, outputs


# --------------------------------------------------------------------------------------------------
# The wrapper
# --------------------------------------------------------------------------------------------------


@dataclass
class SegmentedResponses:
    """Everything :meth:`SegmentRewardModel.segment_token_ids` computes, in the (B, T) layout.

    Attributes:
        values: RM value at every response token (fp32). Shape: (B, T).
        entropy: reference entropy per response token (zeros for the bandit RM). Shape: (B, T).
        mask: valid response tokens. Shape: (B, T).
        segment_ids: Shape: (B, T). seg_rewards, seg_valid: Shape: (B, K_max). scores: Shape: (B,).
        start_values: RM value at each row's last prompt token (0 for an empty prompt), the ``r_0``
            of ``reward_form="delta"``. Shape: (B,).
    """

    values: torch.Tensor
    entropy: torch.Tensor
    mask: torch.Tensor
    segment_ids: torch.Tensor
    seg_rewards: torch.Tensor
    seg_valid: torch.Tensor
    scores: torch.Tensor
    start_values: torch.Tensor | None = None

    @property
    def num_segments(self) -> torch.Tensor:
        return self.seg_valid.sum(dim=1)


def _check_id_lists(prompt_ids, response_ids) -> None:
    for name, value in (("prompt_ids", prompt_ids), ("response_ids", response_ids)):
        if isinstance(value, torch.Tensor) or not isinstance(value, Sequence) or isinstance(value, str):
            raise ValueError(f"`{name}` must be a list of lists of token ids")
        for i, row in enumerate(value):
            if isinstance(row, (str, bytes)) or not isinstance(row, Sequence) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in row
            ):
                raise ValueError(f"`{name}[{i}]` must be a list of int token ids")
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"`prompt_ids` has {len(prompt_ids)} rows but `response_ids` has {len(response_ids)}")
    if not response_ids:
        raise ValueError("`response_ids` is empty; need at least one response")
    empty = [i for i, r in enumerate(response_ids) if len(r) == 0]
    if empty:
        raise ValueError(f"`response_ids[{empty[0]}]` is empty; every response needs at least its EOS token")


class SegmentRewardModel:
    """A trained segment reward model with its threshold, reference model and normaliser.

    Args:
        model: ``AutoModelForSequenceClassification`` with ``num_labels=1`` (the trained RM).
        tokenizer: its tokenizer (shared with the reference model).
        threshold: segmentation threshold ``c``; ``math.inf`` is the ordinary (bandit) RM.
        reference_model: path / Hub id of the frozen reference causal LM (or a loaded module).
            Not needed, and never loaded, when ``threshold`` is inf.
        normalizer: fitted :class:`~segrl.ops.LocationNormalizerCoef` (or mapping), or ``None``.
        sigma_floor: floor on ``sigma(p)`` of the normaliser.
        reward_form: ``"value"`` | ``"delta"`` (docs/method.md#reward-form): the token-reward form
            the normaliser is fitted on, and the default of every scoring method. Change it only
            together with the normaliser (:meth:`set_normalizer`, ``segrl fit-norm --reward_form``).

    Scoring outputs follow docs/method.md#tensor-conventions: ``(B, T)`` over response tokens only, right-padded, on CPU in
    fp32.
    """

    def __init__(self, model, tokenizer, *, threshold: float, reference_model=None, normalizer=None,
                 sigma_floor: float = 1e-2, reward_form: str = "value"):
        if getattr(model.config, "num_labels", None) != 1:
            raise ValueError("`model` must be a sequence-classification model with num_labels=1")
        find_score_head(model)
        self.model = model
        self.tokenizer = tokenizer
        self.threshold = parse_threshold(threshold, "threshold")
        self._reference_module = reference_model if isinstance(reference_model, torch.nn.Module) else None
        if self._reference_module is not None:
            self.reference_model = getattr(reference_model.config, "_name_or_path", None) or None
        else:
            self.reference_model = None if reference_model is None else os.fspath(reference_model)
        if normalizer is not None and not isinstance(normalizer, LocationNormalizerCoef):
            normalizer = LocationNormalizerCoef.from_dict(
                normalizer if isinstance(normalizer, dict) else {k: getattr(normalizer, k) for k in
                                                                ("a_mu", "b_mu", "a_sigma", "b_sigma")}
            )
        self.normalizer: LocationNormalizerCoef | None = normalizer
        self.sigma_floor = float(sigma_floor)
        self.reward_form = parse_reward_form(reward_form)
        if self.tokenizer.pad_token_id is None and self.tokenizer.eos_token_id is None:
            raise ValueError("`tokenizer` needs a pad or eos token to pad batches")

    # ---------------------------------------------------------------- persistence

    @property
    def settings(self) -> SegmentRMSettings:
        return SegmentRMSettings(self.threshold, self.reference_model, self.normalizer, self.sigma_floor,
                                 self.reward_form, dict(getattr(self, "_extra", {})))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def from_pretrained(cls, path, *, reference_model=None, device=None, dtype=torch.float32, **init_kwargs):
        """Load a saved segment RM (a directory written by :meth:`save_pretrained` or by
        ``SegmentRewardTrainer.save_model``). ``reference_model`` overrides the stored one (a path,
        Hub id or module). PEFT adapter directories are merged into their base model on load.
        """
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = os.fspath(path)
        from segrl._deepspeed import whole_model_loading

        with whole_model_loading():  # a frozen scorer: never partitioned by ZeRO-3
            if os.path.isfile(os.path.join(path, "adapter_config.json")):
                from peft import PeftConfig, PeftModel

                base_id = PeftConfig.from_pretrained(path).base_model_name_or_path
                base = AutoModelForSequenceClassification.from_pretrained(base_id, num_labels=1, dtype=dtype,
                                                                          **init_kwargs)
                model = PeftModel.from_pretrained(base, path).merge_and_unload()
            else:
                model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype, **init_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
        settings = SegmentRMSettings.from_dict(getattr(model.config, CONFIG_KEY, None))
        if device is not None:
            model = model.to(device)
        model.eval()
        rm = cls(
            model, tokenizer, threshold=settings.threshold,
            reference_model=reference_model if reference_model is not None else resolve_reference(
                settings.reference_model, path),
            normalizer=settings.normalizer, sigma_floor=settings.sigma_floor, reward_form=settings.reward_form,
        )
        rm._extra = settings.extra
        return rm

    @classmethod
    def from_trainer(cls, trainer) -> SegmentRewardModel:
        """Wrap a :class:`~segrl.rm.trainer.SegmentRewardTrainer`'s model (PEFT adapters merged into a copy)."""
        import copy

        model = _unwrap_for_save(trainer.accelerator.unwrap_model(trainer.model))
        settings = SegmentRMSettings.from_dict(getattr(model.config, CONFIG_KEY, None))
        if hasattr(model, "merge_and_unload"):
            model = copy.deepcopy(model).merge_and_unload()
        return cls(model, trainer.processing_class, threshold=settings.threshold,
                   reference_model=resolve_reference(settings.reference_model, trainer.args.output_dir),
                   normalizer=settings.normalizer,
                   sigma_floor=settings.sigma_floor, reward_form=settings.reward_form)

    def save_pretrained(self, path, **kwargs) -> Path:
        """Save model, tokenizer and the segment-RM settings (``config.segment_rm``)."""
        path = Path(path)
        settings = self.settings.to_dict()
        settings["reference_model"] = stored_reference(self.reference_model, path)
        setattr(self.model.config, CONFIG_KEY, settings)
        self.model.save_pretrained(path, **kwargs)
        self.tokenizer.save_pretrained(path)
        return path

    def set_normalizer(self, normalizer: LocationNormalizerCoef | None, reward_form: str | None = None) -> None:
        """Set the normaliser and the reward form it was fitted on (default: the current form)."""
        self.reward_form = parse_reward_form(self.reward_form if reward_form is None else reward_form)
        self.normalizer = normalizer

    @staticmethod
    def write_normalizer(path, normalizer: LocationNormalizerCoef | None, reward_form: str | None = None) -> None:
        """Update only ``config.segment_rm.normalizer`` (and the ``reward_form`` it was fitted on, if
        given) of a saved RM (weights untouched)."""
        config_path = Path(path) / "config.json"
        config = json.loads(config_path.read_text())
        settings = SegmentRMSettings.from_dict(config.get(CONFIG_KEY))
        settings.normalizer = normalizer
        if reward_form is not None:
            settings.reward_form = parse_reward_form(reward_form)
        config[CONFIG_KEY] = settings.to_dict()
        tmp = config_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, config_path)

    # ---------------------------------------------------------------- reference model

    def load_reference(self):
        """The frozen reference causal LM (loaded once, on the RM's device). Bandit RMs never need it."""
        if self._reference_module is None:
            from segrl.rm.entropy import check_reference_vocab, load_reference_model

            if not self.reference_model:
                raise ValueError(
                    "`reference_model` is not set: a dense segment RM (finite threshold) needs the reference model "
                    "it was trained with; pass reference_model=..."
                )
            ref = load_reference_model(self.reference_model, device=self.device)
            ref_tok = _maybe_tokenizer(self.reference_model)
            check_reference_vocab(self.tokenizer, ref, reward_model=self.model, reference_tokenizer=ref_tok)
            self._reference_module = ref
        else:
            from segrl.rm.entropy import check_reference_vocab

            check_reference_vocab(self.tokenizer, self._reference_module, reward_model=self.model)
            self._reference_module.eval().requires_grad_(False)
        return self._reference_module

    # ---------------------------------------------------------------- scoring

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    @torch.no_grad()
    def segment_token_ids(self, prompt_ids, response_ids, *, batch_size: int = 8, entropy=None,
                          progress: bool = False) -> SegmentedResponses:
        """Run the RM (and, for a dense RM, the reference model) over tokenised responses.

        Args:
            prompt_ids: prompt token ids per row (may be empty).
            response_ids: response token ids per row, at least one each; the last is treated as EOS
                (include the EOS / end-of-turn token as TRL does).
            batch_size: rows per forward pass.
            entropy: optional precomputed reference entropies, one sequence per row of the
                response's length (skips the reference forward pass).
            progress: show a progress bar.

        Returns:
            :class:`SegmentedResponses` (fp32, CPU) with ``T`` the longest response.
        """
        _check_id_lists(prompt_ids, response_ids)
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
        n = len(response_ids)
        if entropy is not None:
            if len(entropy) != n or any(len(e) != len(r) for e, r in zip(entropy, response_ids)):
                raise ValueError("`entropy` must have one value per response token of every row")
        from segrl._deepspeed import embedding_rows

        vocab = embedding_rows(self.model.get_input_embeddings().weight)
        bad = [i for i, (p, r) in enumerate(zip(prompt_ids, response_ids))
               if any(t < 0 or t >= vocab for t in [*p, *r])]
        if bad:
            raise ValueError(f"row {bad[0]} has token ids outside the model's vocabulary [0, {vocab})")
        dense = not math.isinf(self.threshold)
        ref = self.load_reference() if dense and entropy is None else None
        t_max = max(len(r) for r in response_ids)
        values = torch.zeros(n, t_max)
        start_values = torch.zeros(n)
        ent = torch.zeros(n, t_max)
        mask = torch.zeros(n, t_max, dtype=torch.bool)
        device = self.device
        was_training = self.model.training
        self.model.eval()
        try:
            order = sorted(range(n), key=lambda i: len(prompt_ids[i]) + len(response_ids[i]), reverse=True)
            for lo in _progress(range(0, n, batch_size), progress, "Scoring responses"):
                rows = order[lo : lo + batch_size]
                seqs = [list(prompt_ids[i]) + list(response_ids[i]) for i in rows]
                plens = [len(prompt_ids[i]) for i in rows]
                ids, attn = pad_rows(seqs, self.pad_token_id)
                vals, _ = per_position_values(self.model, ids.to(device), attn.to(device))
                t_b = max(len(response_ids[i]) for i in rows)
                resp = gather_response_values(vals.float(), torch.tensor(plens, device=device), t_b).cpu()
                last_prompt = torch.tensor([max(p - 1, 0) for p in plens], device=device)
                starts = vals.float().gather(1, last_prompt[:, None]).squeeze(1).cpu()
                if ref is not None:
                    from segrl.rm.entropy import reference_entropy

                    rows_ent = reference_entropy(ref, seqs, plens, batch_size=len(rows), pad_token_id=self.pad_token_id)
                for j, i in enumerate(rows):
                    k = len(response_ids[i])
                    values[i, :k] = resp[j, :k]
                    start_values[i] = starts[j] if plens[j] > 0 else 0.0  # no prompt token: r_0 = 0
                    mask[i, :k] = True
                    if ref is not None:
                        ent[i, :k] = rows_ent[j]
                    elif entropy is not None:
                        ent[i, :k] = torch.as_tensor(entropy[i], dtype=torch.float32)
        finally:
            self.model.train(was_training)
        seg = segment_sequence_scores(values, ent if dense else None, mask, self.threshold)
        return SegmentedResponses(values, ent, mask, seg.segment_ids, seg.seg_rewards, seg.seg_valid, seg.scores,
                                  start_values)

    def _check_form(self, reward_form: str | None, normalize: bool) -> str:
        """The reward form to score with; an error if the fitted normaliser is for another form."""
        form = self.reward_form if reward_form is None else parse_reward_form(reward_form)
        if normalize and self.normalizer is None:
            raise ValueError(
                "this segment RM has no fitted location normaliser: run `segrl fit-norm` (or "
                "segrl.rm.fit_normalizer) first, or pass normalize=False for raw segment rewards"
            )
        if normalize and form != self.reward_form:
            raise ValueError(
                f"reward_form={form!r} but this segment RM's normaliser was fitted on reward_form="
                f"{self.reward_form!r}: refit it on the form in use (`segrl fit-norm --reward_form {form}`), "
                "or pass normalize=False for raw segment rewards"
            )
        return form

    def normalized_segment_rewards(self, seg: SegmentedResponses, reward_form: str | None = None) -> torch.Tensor:
        """Location-normalised segment rewards ``(r_k - mu(p_k)) / sigma(p_k)`` in the RM's reward
        form (``"delta"`` reads ``seg.start_values``). Shape: (B, K_max).

        Raises ``ValueError`` if no normaliser has been fitted (never a silent identity), or if it was
        fitted on another form.
        """
        form = self._check_form(reward_form, normalize=True)
        raw = form_segment_rewards(seg.seg_rewards, seg.seg_valid, getattr(seg, "start_values", None), form)
        return location_normalize(raw, seg.seg_valid, self.normalizer, sigma_floor=self.sigma_floor)

    def _token_rewards(self, seg: SegmentedResponses, form: str, *, normalize: bool, mode: str) -> SegmentTokenRewards:
        return segment_token_rewards(seg, seg.mask, start_values=seg.start_values, reward_form=form,
                                     normalizer=self.normalizer if normalize else None, sigma_floor=self.sigma_floor,
                                     mode=mode)

    def score(self, prompt_ids, response_ids, *, mode: str = "even", normalize: bool = True,
              reward_form: str | None = None, batch_size: int = 8, entropy=None,
              progress: bool = False) -> SegmentTokenRewards:
        """Token rewards **and** training sequence scores of tokenised responses, in one RM pass.

        Segment rewards in ``reward_form`` (default: the RM's, the form its normaliser was fitted
        on; another form with ``normalize=True`` is an error), location-normalised unless
        ``normalize=False``, spread over their tokens with ``mode`` (``"even"`` / ``"end"`` /
        ``"repeat"``). The EOS of a dense RM and padding get 0. ``scores`` is the mean raw segment
        value the RM was trained on, whatever the form. Computed by
        :func:`segrl.rm.scoring.segment_token_rewards`.

        Returns:
            :class:`~segrl.rm.scoring.SegmentTokenRewards` (fp32, CPU); Shape: (B, T) / (B,).
        """
        form = self._check_form(reward_form, normalize)
        seg = self.segment_token_ids(prompt_ids, response_ids, batch_size=batch_size, entropy=entropy,
                                     progress=progress)
        return self._token_rewards(seg, form, normalize=normalize, mode=mode)

    def score_token_ids(self, prompt_ids, response_ids, *, mode: str = "even", normalize: bool = True,
                        reward_form: str | None = None, batch_size: int = 8, return_segment_ids: bool = False,
                        entropy=None, progress: bool = False):
        """Dense token rewards for already-tokenised responses (see :meth:`score`).

        Token ``t`` of row ``b`` is ``response_ids[b][t]``.

        Returns:
            ``(rewards, mask)``, or ``(rewards, mask, segment_ids)`` with ``return_segment_ids``:
            ``rewards`` fp32 Shape: (B, T); ``mask`` bool Shape: (B, T); ``segment_ids`` long Shape: (B, T).
        """
        out = self.score(prompt_ids, response_ids, mode=mode, normalize=normalize, reward_form=reward_form,
                         batch_size=batch_size, entropy=entropy, progress=progress)
        return (out.token_rewards, out.mask, out.segment_ids) if return_segment_ids else (out.token_rewards, out.mask)

    def tokenize(self, prompts, responses) -> tuple[list[list[int]], list[list[int]]]:
        """``(prompt_ids, response_ids)`` tokenised as in training (EOS appended to plain-text
        responses; chat template for conversational ones)."""
        from trl.data_utils import common_prefix_length

        from segrl.rm.data import tokenize_completion

        if isinstance(prompts, (str, bytes)) or isinstance(responses, (str, bytes)):
            raise ValueError("`prompts` and `responses` must be lists (of strings or of chat-message lists)")
        if len(prompts) != len(responses):
            raise ValueError(f"`prompts` has {len(prompts)} items but `responses` has {len(responses)}")
        p_out, r_out = [], []
        for i, (prompt, response) in enumerate(zip(prompts, responses)):
            if response is None or len(response) == 0:
                raise ValueError(f"`responses[{i}]` is empty; every response needs at least one token")
            if prompt is None:
                raise ValueError(f"`prompts[{i}]` is None")
            p_ids, full = tokenize_completion(self.tokenizer, prompt, response)
            cut = common_prefix_length(p_ids, full)
            if cut >= len(full):
                raise ValueError(f"`responses[{i}]` tokenises to no response tokens")
            p_out.append(full[:cut])
            r_out.append(full[cut:])
        return p_out, r_out

    def score_tokens(self, prompts, responses, *, mode: str = "even", normalize: bool = True,
                     reward_form: str | None = None, batch_size: int = 8, return_segment_ids: bool = False,
                     progress: bool = False):
        """Dense token rewards for text (or chat-message) prompts and responses.

        Tokenises with :meth:`tokenize` and calls :meth:`score_token_ids`. Returns ``(rewards, mask)``
        (fp32 / bool, Shape: (B, T) over response tokens incl. EOS), plus ``segment_ids`` if asked.
        """
        prompt_ids, response_ids = self.tokenize(prompts, responses)
        return self.score_token_ids(prompt_ids, response_ids, mode=mode, normalize=normalize, reward_form=reward_form,
                                    batch_size=batch_size, return_segment_ids=return_segment_ids, progress=progress)

    def sequence_scores(self, prompt_ids, response_ids, *, batch_size: int = 8, progress: bool = False) -> torch.Tensor:
        """The training score (mean segment reward) of each tokenised response. Shape: (B,)."""
        return self.segment_token_ids(prompt_ids, response_ids, batch_size=batch_size, progress=progress).scores

    def __repr__(self) -> str:
        c = "inf" if math.isinf(self.threshold) else self.threshold
        return (f"SegmentRewardModel({type(self.model).__name__}, threshold={c}, reference_model="
                f"{self.reference_model!r}, normalizer={'fitted' if self.normalizer else None}, "
                f"reward_form={self.reward_form!r})")


def _unwrap_for_save(model):
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def _maybe_tokenizer(name_or_path):
    """The reference model's own tokenizer if its directory / repo has one, else ``None``."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(os.fspath(name_or_path))
    except (OSError, ValueError, TypeError):
        return None


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc)
