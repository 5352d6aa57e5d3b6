"""ASR rejection sampling (arXiv 2411.00809, docs/method.md#rejection-sampling): sample K, score, select, masked SFT on TRL.

:class:`ASRRejectionSampler` runs the pipeline in four inspectable steps::

    sampler = ASRRejectionSampler("sft-model", args, reward_model="segment-rm", prompts=dataset)
    records = sampler.generate()      # K sampled responses per prompt (transformers generate, batched)
    records = sampler.score(records)  # sequence scores + per-token rewards from the segment RM
    selected = sampler.select(records)  # best-of-K (or >= threshold) + the ASR keep mask -> labels
    sampler.train(selected)           # TRL SFTTrainer on ready input_ids / labels

The mask enters SFT through the labels: a token outside the kept segments (or in the prompt) has
label ``-100``, so TRL's SFT loss ``-sum(log p at labelled tokens) / #labelled tokens`` is exactly
``-sum_t m_t l_t / sum_t m_t`` over the batch.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from trl import SFTTrainer

from segrl._trl_compat import check_trl_compat
from segrl.checkpoints import CompleteCheckpointsMixin, resolve_checkpoint
from segrl.rewards.segment_rm import SegmentRMRewards
from segrl import ops
from segrl.padding import pad_rows
from segrl.rs.config import ASRRejectionSamplingConfig
from segrl.token_rewards import (
    align_token_rewards,
    StepBoundaries,
)

check_trl_compat("rs")  # fail at import if TRL changed what this module overrides or calls


__all__ = ["ASRRejectionSampler", "load_candidates"]

CANDIDATES_FILE = "rs_candidates.jsonl"
#: ``asr_delta="auto"`` is resolved over a seeded sample of at most this many scored candidate tokens.
DELTA_SAMPLE_TOKENS = 100_000
SELECTED_FILE = "rs_selected.jsonl"


class _RejectionSamplingSFTTrainer(CompleteCheckpointsMixin, SFTTrainer):
    """SFTTrainer that reports the selection statistics next to every training log line."""

    _tag_names = ["trl", "sft", "segrl", "asr-rejection-sampling"]

    def __init__(self, *args, selection_metrics: dict[str, float] | None = None, **kwargs):
        self._selection_metrics = dict(selection_metrics or {})
        super().__init__(*args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training and "loss" in logs:
            logs.update(self._selection_metrics)
        super().log(logs, start_time)


def _stop_ids(model, tokenizer) -> set[int]:
    ids = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if not ids:
        raise ValueError("the tokenizer / generation config defines no EOS token; sampled responses would never end")
    return ids


def _finite_floats(values, what: str) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a list of numbers") from None
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{what} contains NaN or inf")
    return out


def load_candidates(path: str | os.PathLike, tokenizer) -> list[dict]:
    """Read a candidates JSONL file into sampler records.

    One prompt per line: ``prompt`` (text or chat messages), ``candidates`` (list of response texts) and
    optionally ``scores`` (one float per candidate), ``token_rewards`` (one list per candidate, one
    float per completion token, the trailing EOS optional), ``prompt_ids`` and ``candidate_ids``
    (token ids; without them the texts are tokenised as TRL tokenises prompt + completion: jointly,
    EOS appended, split at the common prefix).
    """
    from trl.data_utils import common_prefix_length

    from segrl.rm.data import tokenize_completion

    records = []
    with open(path) as f:
        for line_no, line in enumerate(f):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {line_no + 1} is not valid JSON ({err})") from None
            where = f"{path}: line {line_no + 1}"
            if "prompt" not in row or not isinstance(row.get("candidates"), list) or not row["candidates"]:
                raise ValueError(f"{where} needs `prompt` and a non-empty `candidates` list")
            k = len(row["candidates"])
            if row.get("candidate_ids") is not None:
                if row.get("prompt_ids") is None or len(row["candidate_ids"]) != k:
                    raise ValueError(f"{where}: `candidate_ids` needs `prompt_ids` and one id list per candidate")
                prompt_ids, candidate_ids = list(row["prompt_ids"]), [list(c) for c in row["candidate_ids"]]
            else:
                pairs = [tokenize_completion(tokenizer, row["prompt"], c) for c in row["candidates"]]
                cut = min(common_prefix_length(p, full) for p, full in pairs)
                prompt_ids, candidate_ids = pairs[0][1][:cut], [full[cut:] for _, full in pairs]
            if any(len(c) == 0 for c in candidate_ids):
                raise ValueError(f"{where}: a candidate has no tokens")
            record = {"prompt": row["prompt"], "prompt_ids": prompt_ids, "candidates": list(row["candidates"]),
                      "candidate_ids": candidate_ids}
            if row.get("scores") is not None:
                if len(row["scores"]) != k:
                    raise ValueError(f"{where}: `scores` has {len(row['scores'])} values for {k} candidates")
                record["scores"] = _finite_floats(row["scores"], f"{where}: `scores`")
            if row.get("token_rewards") is not None:
                if len(row["token_rewards"]) != k:
                    raise ValueError(f"{where}: `token_rewards` needs one list per candidate ({k})")
                record["token_rewards"] = [
                    align_token_rewards(r, c, eos_token_id=tokenizer.eos_token_id, column=f"token_rewards[{j}]",
                                        row=line_no)
                    for j, (r, c) in enumerate(zip(row["token_rewards"], candidate_ids))
                ]
            records.append(record)
    if not records:
        raise ValueError(f"{path} holds no candidates")
    return records


def _seeded_rows(lengths: Sequence[int], max_tokens: int, seed: int) -> torch.Tensor:
    """Indices of a seeded random sample of rows holding at most ``max_tokens`` tokens (one row at least)."""
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    picked, tokens = [], 0
    for i in order:
        if picked and tokens + lengths[i] > max_tokens:
            break
        picked.append(i)
        tokens += lengths[i]
    return torch.tensor(sorted(picked), dtype=torch.long)


def _takes(fn, name: str) -> bool:
    """Whether callable ``fn`` accepts keyword ``name`` (reward models without progress bars exist)."""
    import inspect

    try:
        return fn is not None and name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    """Written by the main process only (every rank holds the same rows), atomically."""
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, path)
    state.wait_for_everyone()


class ASRRejectionSampler:
    """Rejection sampling with ASR-masked fine-tuning.

    Args:
        model: the policy to sample from and fine-tune: a causal LM or its path / Hub id.
        args: [`ASRRejectionSamplingConfig`].
        processing_class: the policy's tokenizer (loaded from `model` when it is a path).
        reward_model: a `segrl.rm.SegmentRewardModel` (or its path); default `args.reward_model_path`.
            Only needed for scores / token rewards that `args.candidates_file` does not provide.
        prompts: a `datasets.Dataset` with a `prompt` column, or a list of prompts (text or chat
            messages), for :meth:`generate`.

    Attributes:
        selection_metrics: after :meth:`select`: `rs/acceptance_rate`, `rs/mean_score`,
            `rs/mean_score_selected`, and the mask's `asr/kept_token_fraction`, `asr/segments_per_response`,
            `asr/mean_segment_length`, `asr/fallbacks`, `asr/baseline` (`asr/delta`); logged with every SFT
            log line.
        trainer: the `SFTTrainer` of the last :meth:`train`.
    """

    def __init__(self, model, args: ASRRejectionSamplingConfig, *, processing_class=None, reward_model=None,
                 prompts=None):
        if not isinstance(args, ASRRejectionSamplingConfig):
            raise TypeError(f"`args` must be an ASRRejectionSamplingConfig, got {type(args).__name__}")
        self.args = args
        if isinstance(model, (str, os.PathLike)):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            init = dict(args.model_init_kwargs or {})
            init.setdefault("dtype", torch.float32)
            if processing_class is None:
                processing_class = AutoTokenizer.from_pretrained(os.fspath(model))
            model = AutoModelForCausalLM.from_pretrained(os.fspath(model), **init)
            args.model_init_kwargs = None  # spent here; TRL would warn that they are ignored
        if processing_class is None:
            raise ValueError("pass `processing_class` (the policy's tokenizer) when `model` is a module")
        if processing_class.pad_token is None:
            processing_class.pad_token = processing_class.eos_token
        self.model, self.tokenizer = model, processing_class
        self._reward_model_arg = reward_model if reward_model is not None else args.reward_model_path
        self._rewards: SegmentRMRewards | None = None
        self.prompts = prompts
        self.selection_metrics: dict[str, float] = {}
        self.trainer = None

    # ------------------------------------------------------------------ generation

    def _prompt_ids(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer(prompt)["input_ids"]
        else:
            ids = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                     return_dict=True)["input_ids"]
        if not ids:
            raise ValueError(f"prompt {prompt!r} encodes to no tokens; generation needs a context")
        return list(ids)

    def _prompt_list(self, prompts):
        prompts = self.prompts if prompts is None else prompts
        if prompts is None:
            raise ValueError("no prompts: pass `prompts` to the sampler or to generate()")
        if hasattr(prompts, "column_names"):
            if "prompt" not in prompts.column_names:
                raise ValueError(f"the prompt dataset needs a `prompt` column, it has {prompts.column_names}")
            prompts = prompts["prompt"]
        return list(prompts)

    @torch.no_grad()
    def generate(self, prompts=None) -> list[dict]:
        """Sample `args.num_candidates` responses per prompt.

        Prompts are left-padded and sampled `args.generation_batch_size` at a time. A response ends
        after its first EOS (kept, as TRL's completions keep it) or at `max_new_tokens`. Under several
        processes each rank samples its share of the prompts (seeded by rank) and every rank gets
        all records back, in prompt order.

        Returns:
            One record per prompt: `prompt`, `prompt_ids`, `candidates` (texts), `candidate_ids`.
        """
        from transformers import set_seed

        from accelerate import PartialState
        from accelerate.utils import gather_object

        args, tok = self.args, self.tokenizer
        prompts = self._prompt_list(prompts)
        state = PartialState()
        order = list(range(state.process_index, len(prompts), state.num_processes))
        all_prompts, prompts = prompts, [prompts[i] for i in order]
        set_seed(args.seed + state.process_index)
        device = args.device
        self.model.to(device)
        was_training = self.model.training
        self.model.eval()
        stops = _stop_ids(self.model, tok)
        records = []
        from tqdm.auto import tqdm

        batches = range(0, len(prompts), args.generation_batch_size)
        try:
            for lo in tqdm(batches, desc=f"Sampling {args.num_candidates} candidates per prompt", unit="batch",
                           disable=args.disable_tqdm or not state.is_local_main_process):
                chunk = prompts[lo: lo + args.generation_batch_size]
                encoded = [self._prompt_ids(p) for p in chunk]
                # Left padding: every prompt ends where generation starts.
                input_ids, attention = pad_rows(encoded, tok.pad_token_id, side="left")
                width = input_ids.shape[1]
                out = self.model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention.to(device), do_sample=True,
                    temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                    max_new_tokens=args.max_new_tokens, num_return_sequences=args.num_candidates,
                    pad_token_id=tok.pad_token_id, eos_token_id=sorted(stops),
                )
                generated = out[:, width:].tolist()
                for i, (prompt, ids) in enumerate(zip(chunk, encoded)):
                    cands = []
                    for row in generated[i * args.num_candidates: (i + 1) * args.num_candidates]:
                        end = next((t + 1 for t, token in enumerate(row) if token in stops), len(row))
                        cands.append(row[:end])
                    records.append({
                        "prompt": prompt, "prompt_ids": ids, "candidate_ids": cands,
                        "candidates": tok.batch_decode(cands, skip_special_tokens=True),
                    })
        finally:
            self.model.train(was_training)
        if state.num_processes == 1:
            return records
        for index, record in zip(order, records):
            record["_index"] = index
        gathered = sorted(gather_object(records), key=lambda r: r.pop("_index"))
        if len(gathered) != len(all_prompts):
            raise RuntimeError(f"gathered {len(gathered)} prompt records from all ranks, expected {len(all_prompts)}")
        return gathered

    # ------------------------------------------------------------------ scoring

    def _reward_source(self) -> SegmentRMRewards:
        if self._rewards is None:
            if self._reward_model_arg is None:
                raise ValueError("scoring needs a segment reward model: set `reward_model_path`, or give `scores` "
                                 "(and, for an ASR mask, `token_rewards`) in the candidates file")
            self._rewards = SegmentRMRewards(
                self._reward_model_arg, policy_tokenizer=self.tokenizer, mode=self.args.token_reward_mode,
                normalize=self.args.token_reward_normalize, batch_size=self.args.reward_batch_size,
                device=self.args.device,
            )
            self._rewards.progress = self._show_progress() and _takes(
                getattr(self._rewards.model, "score_token_ids", None), "progress")
        return self._rewards

    def _show_progress(self) -> bool:
        from accelerate import PartialState

        return not self.args.disable_tqdm and PartialState().is_local_main_process

    def score(self, records: list[dict]) -> list[dict]:
        """Add `scores` (one per candidate) and, for a mask, `token_rewards` (one list per candidate).

        Values already present (from a candidates file) are kept; the RM runs only on records that
        lack them.
        """
        args = self.args
        # Token rewards are needed for the mask, and for scores that are their sum / mean.
        tokens_for_scores = args.sequence_score in ("sum", "mean")
        need_tokens = [r for r in records if r.get("token_rewards") is None
                       and (args.needs_token_rewards or (tokens_for_scores and r.get("scores") is None))]
        both = [r for r in need_tokens if r.get("scores") is None] if args.sequence_score == "rm" else []
        if both and callable(getattr(self._reward_source().model, "score", None)):
            # Token rewards and the RM's sequence score from one RM (and reference) pass.
            out = self._reward_source().score(*self._flat(both))
            lengths = [len(c) for r in both for c in r["candidate_ids"]]
            self._unflatten(both, "token_rewards", [out.token_rewards[i, :n].tolist() for i, n in enumerate(lengths)])
            self._unflatten(both, "scores", [float(v) for v in out.scores])
            need_tokens = [r for r in need_tokens if r.get("token_rewards") is None]
        if need_tokens:
            lists = self._reward_source()(*self._flat(need_tokens))
            self._unflatten(need_tokens, "token_rewards", lists)
        need_scores = [r for r in records if r.get("scores") is None]
        if need_scores:
            if args.sequence_score == "rm":
                rm = self._reward_source().model
                if not callable(getattr(rm, "sequence_scores", None)):
                    raise ValueError("sequence_score='rm' needs a reward model with `sequence_scores`; use 'sum' or "
                                     "'mean' of the token rewards instead")
                progress = {"progress": True} if self._show_progress() and _takes(rm.sequence_scores, "progress") else {}
                scores = rm.sequence_scores(*self._flat(need_scores), batch_size=args.reward_batch_size, **progress)
                self._unflatten(need_scores, "scores", [float(s) for s in scores])
            else:
                reduce = sum if args.sequence_score == "sum" else (lambda v: sum(v) / max(len(v), 1))
                for r in need_scores:
                    r["scores"] = [float(reduce(t)) for t in r["token_rewards"]]
        return records

    @staticmethod
    def _flat(records):
        prompts = [r["prompt_ids"] for r in records for _ in r["candidate_ids"]]
        return prompts, [c for r in records for c in r["candidate_ids"]]

    @staticmethod
    def _unflatten(records, key, values):
        it = iter(values)
        for r in records:
            r[key] = [next(it) for _ in r["candidate_ids"]]

    # ------------------------------------------------------------------ selection

    def select(self, records: list[dict]):
        """Accept responses and build their masked SFT examples.

        Returns a `datasets.Dataset` with `input_ids` / `labels` (`-100` on the prompt and on masked
        tokens) plus, for inspection, `prompt`, `completion`, `score`, `token_rewards`, `kept`.
        """
        from datasets import Dataset

        args = self.args
        if any(r.get("scores") is None for r in records):
            raise ValueError("select() needs scored records: call score() first")
        accepted = []
        for i, r in enumerate(records):
            scores = r["scores"]
            if args.selection == "best":
                k = max(range(len(scores)), key=scores.__getitem__)  # first of equal maxima
                if args.score_threshold is None or scores[k] >= args.score_threshold:
                    accepted.append((i, k))
            else:
                accepted += [(i, k) for k, s in enumerate(scores) if s >= args.score_threshold]
        if not accepted:
            raise ValueError("no response was accepted (every score is below `score_threshold`)")
        all_scores = [s for r in records for s in r["scores"]]
        completions = [records[i]["candidate_ids"][k] for i, k in accepted]
        keep, stats = self._keep_masks(records, accepted, completions)

        rows = {name: [] for name in ("prompt", "completion", "score", "token_rewards", "kept", "input_ids", "labels")}
        for (i, k), ids, kept in zip(accepted, completions, keep):
            r = records[i]
            prompt_ids = list(r["prompt_ids"])
            rows["prompt"].append(r["prompt"] if isinstance(r["prompt"], str) else self.tokenizer.decode(prompt_ids))
            rows["completion"].append(r["candidates"][k])
            rows["score"].append(float(r["scores"][k]))
            rows["token_rewards"].append(r["token_rewards"][k] if "token_rewards" in r else [0.0] * len(ids))
            rows["kept"].append(kept)
            rows["input_ids"].append(prompt_ids + list(ids))
            rows["labels"].append([-100] * len(prompt_ids) + [t if m else -100 for t, m in zip(ids, kept)])
        self.selection_metrics = {
            "rs/acceptance_rate": len(accepted) / len(all_scores),
            "rs/mean_score": sum(all_scores) / len(all_scores),
            "rs/mean_score_selected": sum(rows["score"]) / len(accepted),
            **stats,
        }
        dataset = Dataset.from_dict(rows)
        if args.save_candidates:
            self._save_selected(dataset, accepted, token_level=[bool(args.needs_token_rewards)
                                                                and "token_rewards" in records[i] for i, _ in accepted])
        return dataset

    def _keep_masks(self, records, accepted, completions) -> tuple[list[list[bool]], dict[str, float]]:
        """ASR keep masks of the accepted responses (sequence sign +1) and their statistics."""
        if not self.args.needs_token_rewards:
            n_tok = sum(map(len, completions))
            return [[True] * len(c) for c in completions], {
                "asr/kept_token_fraction": 1.0, "asr/segments_per_response": 1.0,
                "asr/mean_segment_length": n_tok / len(completions), "asr/fallbacks": 0.0, "asr/baseline": 0.0,
            }
        options = self.args.mask_kwargs()
        # Baselines and "auto" delta are resolved once over every scored candidate, accepted or not
        # (see the config docs), then handed to the per-chunk masks as numbers.
        every = [tr for r in records for tr in r["token_rewards"]]
        all_rewards, attention = pad_rows(every, dtype=torch.float32)
        all_mask = attention.bool()
        resolved = options["baseline"]
        if resolved in ("batch_mean", "position_mean"):
            resolved = ops.resolve_baseline(all_rewards, all_mask, resolved)
        if options["kind"] == "asr" and options["delta"] == "auto":
            rows = _seeded_rows([len(tr) for tr in every], DELTA_SAMPLE_TOKENS, self.args.seed)
            sample_baseline = resolved[rows] if isinstance(resolved, torch.Tensor) else resolved
            options["delta"] = ops.resolve_delta(all_rewards[rows], all_mask[rows], sample_baseline, "auto",
                                                 options["delta_quantile"])
        offsets = [0]
        for r in records:
            offsets.append(offsets[-1] + len(r["token_rewards"]))
        flat_index = torch.tensor([offsets[i] + k for i, k in accepted], dtype=torch.long)
        boundaries = StepBoundaries(self.tokenizer, self.args.step_boundary_chars) if options["kind"] == "stepwise" \
            else None
        keep_lists, totals = [], torch.zeros(7, dtype=torch.float64)
        chunk = 256
        for lo in range(0, len(accepted), chunk):
            part = accepted[lo: lo + chunk]
            ids = completions[lo: lo + chunk]
            width = max(map(len, ids))
            rewards = torch.zeros(len(part), width)
            mask = torch.zeros(len(part), width, dtype=torch.bool)
            id_tensor = torch.zeros(len(part), width, dtype=torch.long)
            for j, ((i, k), c) in enumerate(zip(part, ids)):
                rewards[j, : len(c)] = torch.tensor(records[i]["token_rewards"][k], dtype=torch.float32)
                mask[j, : len(c)] = True
                id_tensor[j, : len(c)] = torch.tensor(c)
            boundary = None if boundaries is None else boundaries(id_tensor, mask)
            baseline = resolved
            if isinstance(resolved, torch.Tensor):  # rows of the accepted responses, cut to this chunk's width
                baseline = resolved[flat_index[lo: lo + chunk]]
                baseline = baseline[:, :width] if baseline.dim() == 2 else baseline
            km = ops.keep_mask(rewards, mask, torch.ones(len(part), dtype=torch.long), is_boundary=boundary,
                               **{**options, "baseline": baseline})
            totals += km.counts(mask).cpu()
            keep_lists += [km.keep[j, : len(c)].tolist() for j, c in enumerate(ids)]
        kept, tokens, segments, in_segments, fallbacks, rows, baseline_sum = totals.tolist()
        stats = {"asr/kept_token_fraction": kept / tokens if tokens else 0.0, "asr/fallbacks": fallbacks,
                 "asr/baseline": baseline_sum / max(rows, 1)}
        if options["kind"] == "asr":
            stats["asr/delta"] = float(options["delta"])
        if options["kind"] != "tokenwise":
            stats["asr/segments_per_response"] = segments / rows if rows else 0.0
            stats["asr/mean_segment_length"] = in_segments / segments if segments else 0.0
        return keep_lists, stats

    def _save_selected(self, dataset, accepted, token_level=None) -> None:
        # One row per accepted response in `segrl viz`'s JSONL format, with the rewards the selection
        # used: the token rewards behind an ASR mask, else the sequence score on every token.
        rows = []
        token_level = token_level if token_level is not None else [True] * len(accepted)
        for (i, k), ex, per_token in zip(accepted, dataset, token_level):
            ids = ex["input_ids"][len(ex["input_ids"]) - len(ex["kept"]):]
            rewards = ex["token_rewards"] if per_token else [ex["score"]] * len(ids)
            rows.append({"title": f"prompt {i}, candidate {k}, score {ex['score']:.3f}", "prompt": ex["prompt"],
                         "tokens": self.tokenizer.batch_decode([[t] for t in ids]), "rewards": rewards,
                         "score": ex["score"], "reward_kind": "token" if per_token else "sequence",
                         "kept": ex["kept"], "seq_sign": 1})
        _write_jsonl(Path(self.args.output_dir) / SELECTED_FILE, rows)

    # ------------------------------------------------------------------ training

    def train(self, dataset=None, callbacks=None, *, print_logs: bool = True):
        """Fine-tune on the selected responses with TRL's `SFTTrainer` (labels carry the mask).

        `args.resume_from_checkpoint` resumes the fine-tuning (`"last"` / `"true"` picks the newest
        checkpoint in `output_dir`). `callbacks` (transformers `TrainerCallback`s) go to the
        trainer, which stays available as `self.trainer`; `print_logs=False` drops the log printer
        transformers adds when `disable_tqdm=True`. Returns the `TrainOutput`; the model is saved to
        `output_dir`.
        """
        if dataset is None:
            raise ValueError("train() needs the dataset returned by select()")
        self.trainer = _RejectionSamplingSFTTrainer(
            model=self.model, args=self.args, train_dataset=dataset.select_columns(["input_ids", "labels"]),
            processing_class=self.tokenizer, selection_metrics=self.selection_metrics, callbacks=callbacks,
        )
        if not print_logs:
            from transformers.trainer_callback import PrinterCallback

            self.trainer.remove_callback(PrinterCallback)
        output = self.trainer.train(resume_from_checkpoint=resolve_checkpoint(self.args))
        self.trainer.save_model(self.args.output_dir)
        return output

    def run(self):
        """generate (or read `args.candidates_file`) -> score -> select -> train.

        With `args.resume_from_checkpoint` and a saved `output_dir/rs_candidates.jsonl`, the saved
        candidates are reused so the resumed fine-tuning sees the same data.
        """
        args = self.args
        saved = Path(args.output_dir) / CANDIDATES_FILE
        if args.candidates_file:
            records = load_candidates(args.candidates_file, self.tokenizer)
        elif resolve_checkpoint(args) and saved.is_file():
            records = load_candidates(saved, self.tokenizer)
        else:
            records = self.generate()
        records = self.score(records)
        if args.save_candidates:
            _write_jsonl(saved, [{k: r[k] for k in ("prompt", "candidates", "scores", "token_rewards", "prompt_ids",
                                                   "candidate_ids") if k in r} for r in records])
        return self.train(self.select(records))

