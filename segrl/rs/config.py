"""Configuration of :class:`segrl.rs.ASRRejectionSampler`."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from segrl.asr_options import ASRArguments
from segrl.checkpoints import ResumeArguments
from segrl.deprecation import RENAMED_FIELDS_HELP, apply_renamed_fields

SEQUENCE_SCORES = ("rm", "sum", "mean")
SELECTIONS = ("best", "threshold")


@dataclass
class ASRRejectionSamplingConfig(ASRArguments, ResumeArguments, SFTConfig):
    r"""
    Configuration for ASR rejection sampling: TRL's [`~trl.SFTConfig`] (the fine-tuning stage) plus
    sampling, scoring, selection and the ASR mask (arXiv 2411.00809, docs/method.md#rejection-sampling).

    Pipeline: sample `num_candidates` responses per prompt with the policy, score them with the
    segment reward model, keep the best (or all above `score_threshold`), then fine-tune on the kept
    responses with `-sum_t m_t log pi(y_t|.) / sum_t m_t`, where `m` keeps the accepted response's
    above-baseline segments (sequence sign +1). `mask_type="none"` is plain rejection sampling.

    Parameters:
        > Sampling

        num_candidates (`int`, defaults to `4`): responses sampled per prompt (K).
        max_new_tokens (`int`, defaults to `128`): length limit of a sampled response.
        temperature (`float`, defaults to `1.0`), top_p (`float`, defaults to `1.0`),
        top_k (`int`, defaults to `0` = off): sampling parameters of `model.generate`.
        generation_batch_size (`int`, defaults to `8`): prompts per `generate` call (each yields K rows).

        > Scoring and selection

        reward_model_path (`str`, *optional*): path of a saved `segrl.rm.SegmentRewardModel` (deprecated
            name: `reward_model`, still accepted with a `FutureWarning`).
        sequence_score (`str`, defaults to `"rm"`): a response's score: the RM's own sequence score
            (`"rm"`: mean segment reward, docs/method.md#segment-rm), or the `"sum"` / `"mean"` of its token rewards.
        selection (`str`, defaults to `"best"`): `"best"` of K per prompt, or every response with score
            `>= score_threshold` (`"threshold"`).
        score_threshold (`float`, *optional*): required for `"threshold"`; with `"best"`, the best
            response is kept only if it reaches it.

        > Mask

        mask_type, asr_baseline, asr_delta, asr_delta_quantile, asr_neutral, asr_empty, step_boundary_chars:
            see [`segrl.asr_options.ASRArguments`]. The `"batch_mean"` / `"position_mean"` baselines are
            resolved over **all scored candidates** (accepted or not), so an accepted response keeps its
            better-than-typical segments rather than half of itself; `asr_delta="auto"` is resolved once
            over a seeded sample of at most 100k tokens of all scored candidates (`rs/delta`).
        token_reward_mode (`str`, defaults to `"even"`), token_reward_normalize (`bool`, defaults to
            `True`), reward_batch_size (`int`, defaults to `8`): passed to the RM's `score_token_ids`.

        > Files

        candidates_file (`str`, *optional*): JSONL of precomputed candidates, one prompt per line:
            `prompt`, `candidates` (list of str) and optionally `scores` (one per candidate),
            `token_rewards` (one list per candidate: one float per completion token, EOS optional),
            `prompt_ids` / `candidate_ids` (token ids; otherwise the texts are tokenised as TRL does).
            Skips generation; the RM is only needed for what the file lacks.
        save_candidates (`bool`, defaults to `True`): write the scored candidates to
            `output_dir/rs_candidates.jsonl` (reused on `--resume_from_checkpoint`) and the selected,
            masked responses to `output_dir/rs_selected.jsonl` (loadable by `segrl viz`).
    """

    num_candidates: int = field(default=4, metadata={"help": "Responses sampled per prompt (K)."})
    max_new_tokens: int = field(default=128, metadata={"help": "Maximum length of a sampled response."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling probability mass."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0 disables it)."})
    generation_batch_size: int = field(default=8, metadata={"help": "Prompts per generate call."})
    reward_model_path: str | None = field(
        default=None, metadata={"help": "Path of a saved segrl segment reward model."}
    )
    reward_model: str | None = field(
        default=None, metadata={"help": RENAMED_FIELDS_HELP.format(new="reward_model_path")}
    )
    sequence_score: str = field(
        default="rm",
        metadata={"help": "Response score: 'rm' (the RM's mean segment reward), or 'sum' / 'mean' of its token "
                          "rewards.", "choices": list(SEQUENCE_SCORES)},
    )
    selection: str = field(
        default="best",
        metadata={"help": "'best' of K per prompt, or every response scoring >= score_threshold ('threshold').",
                  "choices": list(SELECTIONS)},
    )
    score_threshold: float | None = field(
        default=None, metadata={"help": "Minimum score of an accepted response (required for selection='threshold')."}
    )
    token_reward_mode: str = field(default="even", metadata={"help": "Segment RM spread mode: even, end, repeat.",
                                                             "choices": ["even", "end", "repeat"]})
    token_reward_normalize: bool = field(default=True, metadata={"help": "Apply the RM's location normaliser."})
    reward_batch_size: int = field(default=8, metadata={"help": "Rows per reward-model forward pass."})
    candidates_file: str | None = field(
        default=None, metadata={"help": "JSONL of precomputed candidates (prompt, candidates, optional scores / "
                                        "token_rewards / prompt_ids / candidate_ids); skips generation."}
    )
    save_candidates: bool = field(
        default=True, metadata={"help": "Write output_dir/rs_candidates.jsonl and output_dir/rs_selected.jsonl."}
    )

    def __post_init__(self):
        apply_renamed_fields(self, {"reward_model": "reward_model_path"})
        super().__post_init__()  # TRL's checks, then the ASR fields' (ASRArguments)
        for name in ("num_candidates", "max_new_tokens", "generation_batch_size", "reward_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"`top_p` must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"`top_k` must be >= 0, got {self.top_k}")
        if self.sequence_score not in SEQUENCE_SCORES:
            raise ValueError(f"`sequence_score` must be one of {SEQUENCE_SCORES}, got {self.sequence_score!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"`selection` must be one of {SELECTIONS}, got {self.selection!r}")
        if self.selection == "threshold" and self.score_threshold is None:
            raise ValueError("selection='threshold' needs `score_threshold`")
