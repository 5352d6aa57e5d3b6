"""Configuration of :class:`segrl.dpo.ASRDPOTrainer`."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import DPOConfig

from segrl.asr_options import ASRArguments
from segrl.checkpoints import ResumeArguments
from segrl.deprecation import RENAMED_FIELDS_HELP, apply_renamed_fields
from segrl.token_rewards import TOKEN_REWARD_SOURCES

SEGMENT_SPREAD_MODES = ("even", "end", "repeat")


@dataclass
class ASRDPOConfig(ASRArguments, ResumeArguments, DPOConfig):
    r"""
    Configuration for [`ASRDPOTrainer`]: TRL's [`~trl.DPOConfig`] plus the Adaptive Segment-level
    Reward (ASR, arXiv 2411.00809) mask.

    Every DPO option keeps its meaning. The policy and reference log-probabilities of a response are
    summed over the kept tokens only, with the **same** mask for both (docs/method.md#dpo):
    `LP(y) = sum_t m_t log pi(y_t | x, y_<t)`. Chosen rows use sequence sign +1 (keep the segments
    whose reward is above the baseline), rejected rows -1 (keep those below); a `"batch_mean"` /
    `"position_mean"` baseline is resolved over all 2B rows of the batch (of every process), and
    `asr_delta="auto"` once, before the first step, over a seeded sample of at most 100k training
    tokens (logged as `asr/delta`). Loss types that divide by the completion length
    (`ipo`, `sigmoid_norm`, WPO weights, `ld_alpha`) see the kept-token count. The `sft` term
    (`loss_type=["sigmoid", "sft"]`, `loss_weights=[1.0, alpha]`: RPO's NLL on chosen) is the mean
    NLL over *every* chosen token, kept or not (logged as `asr/sft_loss`).

    Late collapse: a sparse mask lets the policy win the margin on few tokens while the rest of the
    response drifts; trained 3x longer on the built-in task, ASR-DPO's held-out accuracy fell from
    0.77 to 0.72. The defence measured to work is the `sft` term above with `alpha = 1`
    (0.943 ± 0.009 after 300 steps, 3 seeds); `sigmoid_norm` (dividing by the kept count) made the
    collapse worse, and early stopping (`eval_dataset`, `load_best_model_at_end=True`) only keeps the
    peak. It is not the default (TRL's loss is kept as is); see experiments/README.md.

    Parameters:
        > ASR mask

        mask_type, asr_baseline, asr_delta, asr_delta_quantile, asr_neutral, asr_empty, step_boundary_chars:
            see [`segrl.asr_options.ASRArguments`] (defaults: `"asr"`, `"sequence_mean"`, `"auto"`, `0.3`,
            `"drop"`, `"full"`). With `asr_empty="none"` an empty response's log-ratio is 0.

        > Token rewards

        token_reward_source (`str`, *optional*, defaults to `"columns"`):
            `"columns"`: dataset columns `chosen_token_rewards` / `rejected_token_rewards`;
            `"segment_rm"`: a segment reward model (`reward_model_path`); `"implicit"`:
            `implicit_beta * (log pi - log pi_ref)` of the pair `implicit_policy` / `implicit_ref`.
        reward_model_path (`str`, *optional*):
            Path of a saved `segrl.rm.SegmentRewardModel` (for `"segment_rm"`). Deprecated name:
            `token_reward_model` (still accepted, with a `FutureWarning`).
        token_reward_mode (`str`, *optional*, defaults to `"even"`):
            How the segment RM spreads a segment's reward over its tokens: `"even"`, `"end"`, `"repeat"`.
        token_reward_normalize (`bool`, *optional*, defaults to `True`):
            Apply the segment RM's location-aware normaliser.
        token_reward_on_the_fly (`bool`, *optional*, defaults to `False`):
            `"segment_rm"` only: score every batch during training instead of once at dataset
            preparation (the RM is frozen, so the result is the same; this costs a forward pass per step).
        token_reward_batch_size (`int`, *optional*, defaults to `8`):
            Rows per reward-model forward pass.
        implicit_policy (`str`, *optional*):
            Path of the policy of the implicit-reward pair.
        implicit_ref (`str`, *optional*):
            Path of the reference of the implicit-reward pair.
        implicit_beta (`float`, *optional*, defaults to `0.1`):
            Scale of the implicit reward.
    """

    token_reward_source: str = field(
        default="columns",
        metadata={"help": "Where token rewards come from: 'columns' (chosen_token_rewards / rejected_token_rewards "
                          "in the dataset), 'segment_rm' (reward_model_path) or 'implicit' (implicit_policy / "
                          "implicit_ref).",
                  "choices": list(TOKEN_REWARD_SOURCES)},
    )
    reward_model_path: str | None = field(
        default=None,
        metadata={"help": "Path of a saved segrl segment reward model (token_reward_source='segment_rm')."},
    )
    token_reward_model: str | None = field(
        default=None, metadata={"help": RENAMED_FIELDS_HELP.format(new="reward_model_path")}
    )
    token_reward_mode: str = field(
        default="even",
        metadata={"help": "Segment RM: spread a segment reward 'even'ly over its tokens, on its 'end' token, or "
                          "'repeat' it on every token.", "choices": list(SEGMENT_SPREAD_MODES)},
    )
    token_reward_normalize: bool = field(
        default=True, metadata={"help": "Segment RM: apply its location-aware normaliser to segment rewards."}
    )
    token_reward_on_the_fly: bool = field(
        default=False,
        metadata={"help": "Segment RM: score each training batch instead of once at dataset preparation."},
    )
    token_reward_batch_size: int = field(
        default=8, metadata={"help": "Rows per forward pass of the token-reward model(s)."}
    )
    implicit_policy: str | None = field(
        default=None, metadata={"help": "token_reward_source='implicit': path of the pair's policy model."}
    )
    implicit_ref: str | None = field(
        default=None, metadata={"help": "token_reward_source='implicit': path of the pair's reference model."}
    )
    implicit_beta: float = field(
        default=0.1, metadata={"help": "token_reward_source='implicit': beta of beta * (log pi - log pi_ref)."}
    )

    def __post_init__(self):
        apply_renamed_fields(self, {"token_reward_model": "reward_model_path"})
        super().__post_init__()  # TRL's checks, then the ASR fields' (ASRArguments)
        if self.token_reward_source not in TOKEN_REWARD_SOURCES:
            raise ValueError(f"`token_reward_source` must be one of {TOKEN_REWARD_SOURCES}, got "
                             f"{self.token_reward_source!r}")
        if self.token_reward_mode not in SEGMENT_SPREAD_MODES:
            raise ValueError(f"`token_reward_mode` must be one of {SEGMENT_SPREAD_MODES}, got "
                             f"{self.token_reward_mode!r}")
        if self.token_reward_batch_size < 1:
            raise ValueError(f"`token_reward_batch_size` must be >= 1, got {self.token_reward_batch_size}")
        if self.token_reward_on_the_fly and self.token_reward_source != "segment_rm":
            raise ValueError("`token_reward_on_the_fly=True` is only supported with token_reward_source='segment_rm'")
        if self.mask_type != "none" and self.padding_free:
            # The mask is laid out on right-padded [chosen; rejected] rows; a packed batch has no
            # per-response rows to lay it on.
            raise ValueError(f"`padding_free=True` is not supported with mask_type={self.mask_type!r}; set "
                             "padding_free=False")
