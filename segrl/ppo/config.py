"""Configuration of the dense-reward PPO trainer. Defaults follow docs/method.md#ppo / the published runs."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from segrl.asr_options import ASRArguments
from segrl.checkpoints import ResumeArguments


def apply_asr_alias(config) -> None:
    """Map the deprecated ``asr: bool`` of the PPO / GRPO configs onto ``mask_type`` (in place).

    ``asr=True`` means ``mask_type="asr"`` (an error next to ``"tokenwise"`` / ``"stepwise"``);
    ``asr=False`` asks for no ASR mask, which the default ``mask_type="none"`` already is, so it only
    conflicts with ``mask_type="asr"`` (an old YAML's ``asr: false`` plus ``--mask_type tokenwise``
    works). The alias is consumed: afterwards ``config.asr`` is ``None`` again, so that
    ``dataclasses.replace(config, mask_type=...)`` works.
    """
    if config.asr is None:
        return
    if not isinstance(config.asr, bool):
        raise ValueError(f"`asr` must be true or false, got {config.asr!r}")
    warnings.warn("`asr` is deprecated: use `mask_type` ('asr' | 'tokenwise' | 'stepwise' | 'none')",
                  DeprecationWarning, stacklevel=4)
    if config.asr and config.mask_type not in ("none", "asr"):
        raise ValueError(f"`asr=True` contradicts `mask_type={config.mask_type!r}`; set only `mask_type`")
    if not config.asr and config.mask_type == "asr":
        raise ValueError("`asr=False` contradicts `mask_type='asr'`; set only `mask_type`")
    if config.asr:
        config.mask_type = "asr"
    config.asr = None


MASK_TYPE_HELP = ("Which tokens enter the policy loss: 'none' (every response token: plain PPO, the default), "
                  "'asr' (ASR-PPO: hysteresis segments agreeing with the sequence sign), 'tokenwise' or 'stepwise'.")


@dataclass
class SegmentPPOConfig(ASRArguments, ResumeArguments):
    """Dense-reward PPO with a critic (arXiv 2501.02790) and the optional keep mask on the policy loss
    (ASR, arXiv 2411.00809; options of :class:`segrl.asr_options.ASRArguments`, checked at construction)."""

    mask_type: str = field(default="none", metadata={"help": MASK_TYPE_HELP,
                                                      "choices": ["none", "asr", "tokenwise", "stepwise"]})

    output_dir: str = field(default="runs/ppo", metadata={"help": "Where checkpoints, logs and the final policy go."})
    model_name_or_path: str = field(
        default="", metadata={"help": "SFT policy: hub id or local path (deprecated name: `policy`)."}
    )
    reward_model_path: str = field(
        default="",
        metadata={"help": "Segment reward model (segrl train-rm + fit-norm output): hub id or path "
                          "(deprecated name: `reward_model`)."},
    )
    ref_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Frozen reference for the KL term and entropy segmentation (default: the policy; with "
                          "`use_peft` the adapter-disabled policy). Deprecated name: `reference_model`."},
    )
    critic_init: str = field(
        default="policy", metadata={"help": "Initialise the critic from the 'policy' (fresh head) or the 'reward_model'."}
    )
    dataset_name: str = field(
        default="",
        metadata={"help": "Prompts: `builtin:NAME`, a .jsonl/.json/.csv/.parquet file, a save_to_disk directory or a "
                          "Hub id, with a 'prompt' column of text or chat messages (deprecated name: `dataset`)."},
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split to read prompts from."})
    dataset_test_split: str = field(
        default="test", metadata={"help": "Split of `eval_dataset_name` (or of a Hub / save_to_disk `dataset_name`) "
                                          "to evaluate on."}
    )
    eval_dataset_name: str | None = field(
        default=None, metadata={"help": "Held-out prompts for evaluation (same formats as `dataset_name`)."}
    )
    eval_split: float | None = field(
        default=None,
        metadata={"help": "Hold out this fraction (0 < f < 1) of the `dataset_name` prompts (shuffled with `seed`) "
                          "for evaluation instead of `eval_dataset_name`."},
    )
    eval_steps: int = field(
        default=0,
        metadata={"help": "Evaluate every N iterations (0 = never) on the held-out prompts: greedy responses, their "
                          "mean reward, KL to the reference and length (`eval_reward`, `eval_kl`, "
                          "`eval_response_length`)."},
    )
    total_episodes: int | None = field(
        default=None,
        metadata={"help": "Prompts to sample in total, over all processes (TRL's PPOConfig); iterations = "
                          "ceil(total_episodes / (rollout_batch_size * processes)). Default: num_train_epochs passes "
                          "over the prompts."},
    )
    num_train_epochs: float = field(
        default=1.0, metadata={"help": "Passes over the prompt set when `total_episodes` is not set."}
    )
    segment_threshold: float | None = field(
        default=None,
        metadata={"help": "Entropy threshold c for the arm: inf bandit, 0 token, else segment (default: the RM's own)."},
    )
    spread_mode: str = field(default="even", metadata={"help": "Spread segment rewards: even | end | repeat."})
    num_iterations: int | None = field(
        default=None,
        metadata={"help": "Deprecated: `total_episodes` (or `num_train_epochs`). Rollout-and-update iterations."},
    )
    rollout_batch_size: int = field(default=16, metadata={"help": "Prompts per rollout, per process."})
    mini_batch_size: int = field(default=4, metadata={"help": "Rollouts per optimiser step, per process."})
    ppo_epochs: int = field(default=1, metadata={"help": "Passes over each rollout batch."})
    max_prompt_length: int = field(default=128, metadata={"help": "Prompts are left-truncated to this many tokens."})
    max_new_tokens: int = field(default=64, metadata={"help": "Generation budget; a response without EOS is truncated."})
    min_new_tokens: int = field(default=0, metadata={"help": "Suppress EOS before this many tokens (benchmarks: fixed length)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (also used for log-probs)."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0 = off)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling."})
    missing_eos_penalty: float | None = field(
        default=None, metadata={"help": "Subtracted from the last token's reward of responses that hit max_new_tokens."}
    )
    gradient_accumulation_steps: int = field(
        default=1,
        metadata={"help": "Split each mini-batch into this many micro-batches whose gradients are accumulated (same "
                          "update, less memory); `mini_batch_size` must be a multiple of it."},
    )
    lr_scheduler_type: str = field(
        default="constant_with_warmup",
        metadata={"help": "transformers `get_scheduler` name (linear, cosine, constant, constant_with_warmup, ...) for "
                          "the policy and the critic; it steps once per optimiser step."},
    )
    warmup_steps: int = field(default=0, metadata={"help": "Linear warm-up optimiser steps (overrides warmup_ratio)."})
    warmup_ratio: float = field(default=0.0, metadata={"help": "Warm-up as a fraction of all optimiser steps."})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in the backward pass (policy and critic): less memory."}
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bfloat16 mixed precision (accelerate autocast). Default: on when a bf16-capable GPU is "
                          "used, off otherwise."},
    )
    fp16: bool = field(default=False, metadata={"help": "float16 mixed precision with loss scaling (GPU only)."})
    dtype: str | None = field(
        default=None,
        metadata={"help": "dtype to load policy, reference and critic in: 'auto', 'bfloat16', 'float16', 'float32' "
                          "(TRL's ModelConfig; deprecated name: `torch_dtype`). Default: the checkpoint's (float32 "
                          "weights with bf16/fp16 autocast is the usual mixed precision).",
                  "choices": ["auto", "bfloat16", "float16", "float32"]},
    )
    use_peft: bool = field(
        default=False,
        metadata={"help": "Train a LoRA adapter on the policy (peft); the reference is then the adapter-disabled "
                          "policy, as in TRL. The critic stays a full model."},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (disabled during PPO like all dropout)."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Modules to adapt (default: peft's choice for the architecture)."}
    )
    learning_rate: float = field(default=5e-7, metadata={"help": "Policy learning rate (published: 5e-7)."})
    critic_learning_rate: float = field(default=9e-6, metadata={"help": "Critic learning rate (published: 9e-6)."})
    adam_betas: tuple[float, float] = field(default=(0.9, 0.95), metadata={"help": "Adam betas."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping for policy and critic."})
    kl_coef: float = field(default=0.01, metadata={"help": "beta of the k1 KL penalty in the per-token reward."})
    reward_clamp: float = field(default=10.0, metadata={"help": "Per-token rewards are clamped to +-this before the KL."})
    gamma: float = field(default=1.0, metadata={"help": "GAE discount."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    cliprange: float = field(default=0.2, metadata={"help": "PPO ratio clip epsilon."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Value clip (the paper's dense runs used 0.25)."})
    vf_coef: float = field(default=1.0, metadata={"help": "Weight of the value loss (the critic has its own optimiser)."})
    sigma_floor: float = field(default=1e-2, metadata={"help": "Floor of sigma(p) in the location normaliser."})
    asr: bool | None = field(
        default=None, metadata={"help": "Deprecated: `mask_type` ('asr' for true, 'none' for false)."}
    )
    asr_signal: str = field(
        default="token_rewards", metadata={"help": "Token signal for the keep mask: 'token_rewards' or critic 'values'."}
    )
    seed: int = field(default=42, metadata={"help": "Seed for prompts order, sampling and heads."})
    logging_steps: int = field(default=1, metadata={"help": "Log every N iterations."})
    save_steps: int = field(default=0, metadata={"help": "Checkpoint every N iterations (0 = only at the end)."})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A checkpoint directory, or 'latest' for the newest complete one in output_dir."}
    )
    report_to: str = field(default="none", metadata={"help": "none | tensorboard | wandb (through accelerate trackers)."})
    use_cpu: bool = field(default=False, metadata={"help": "Force CPU even if an accelerator is present."})
    deepspeed: str | None = field(
        default=None,
        metadata={"help": "DeepSpeed JSON config (as TRL's `deepspeed`; examples/deepspeed/zero2.json, zero3.json): "
                          "the policy and the critic each become a DeepSpeed engine; the frozen reference and reward "
                          "model stay whole on every process. Its \"auto\" batch sizes, accumulation and clipping "
                          "come from mini_batch_size, gradient_accumulation_steps and max_grad_norm. Launch with "
                          "torchrun or `accelerate launch` (docs/scale-out.md)."},
    )

    def __post_init__(self):
        apply_asr_alias(self)
        if self.num_iterations is not None:
            warnings.warn("`num_iterations` is deprecated: use `total_episodes` (prompts over all processes) or "
                          "`num_train_epochs`", FutureWarning, stacklevel=3)
            if self.num_iterations < 1:
                raise ValueError(f"`num_iterations` must be >= 1, got {self.num_iterations}")
        if self.total_episodes is not None and self.total_episodes < 1:
            raise ValueError(f"`total_episodes` must be >= 1, got {self.total_episodes}")
        if not self.num_train_epochs > 0:
            raise ValueError(f"`num_train_epochs` must be > 0, got {self.num_train_epochs}")
        if self.gradient_accumulation_steps < 1 or self.mini_batch_size % self.gradient_accumulation_steps:
            raise ValueError(f"`gradient_accumulation_steps` ({self.gradient_accumulation_steps}) must be >= 1 and "
                             f"divide `mini_batch_size` ({self.mini_batch_size})")
        if self.warmup_steps < 0 or not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"`warmup_steps` must be >= 0 and `warmup_ratio` in [0, 1), got {self.warmup_steps}, "
                             f"{self.warmup_ratio}")
        if self.eval_steps < 0:
            raise ValueError(f"`eval_steps` must be >= 0, got {self.eval_steps}")
        if self.eval_split is not None and not 0.0 < self.eval_split < 1.0:
            raise ValueError(f"`eval_split` must be a fraction in (0, 1), got {self.eval_split}")
        if self.eval_split is not None and self.eval_dataset_name:
            raise ValueError("pass either `eval_split` or `eval_dataset_name`, not both")
        if self.dtype not in (None, "auto", "bfloat16", "float16", "float32"):
            raise ValueError(f"`dtype` must be auto, bfloat16, float16 or float32, got {self.dtype!r}")
        if self.deepspeed is not None:
            from .engines import load_deepspeed_config

            load_deepspeed_config(self.deepspeed)  # a missing or malformed file fails here, before any output
        if self.bf16 and self.fp16:
            raise ValueError("`bf16` and `fp16` are exclusive; set one")
        if self.bf16 is None:
            from segrl.hardware import bf16_supported

            self.bf16 = (not self.use_cpu) and not self.fp16 and bf16_supported()
        from transformers import SchedulerType

        choices = [t.value for t in SchedulerType]
        if self.lr_scheduler_type not in choices:
            raise ValueError(f"`lr_scheduler_type` must be one of {choices}, got {self.lr_scheduler_type!r}")
        super().__post_init__()  # the ASR fields (ASRArguments): bad options fail here, not at the first rollout
        if self.critic_init not in ("policy", "reward_model"):
            raise ValueError(f"`critic_init` must be 'policy' or 'reward_model', got {self.critic_init!r}")
        if self.asr_signal not in ("token_rewards", "values"):
            raise ValueError(f"`asr_signal` must be 'token_rewards' or 'values', got {self.asr_signal!r}")
        if self.rollout_batch_size % self.mini_batch_size:
            raise ValueError(
                f"`rollout_batch_size` ({self.rollout_batch_size}) must be a multiple of "
                f"`mini_batch_size` ({self.mini_batch_size})"
            )
