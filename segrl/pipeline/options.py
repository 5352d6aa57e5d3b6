"""Flat command-line / YAML options shared by ``segrl demo`` and ``segrl experiment``.

Every field is a flag (``--dpo_steps 150``) and a YAML key; :meth:`PipelineOptions.build` turns them
into the per-stage settings of :class:`segrl.pipeline.Pipeline`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from segrl.pipeline.settings import (
    DPOSettings,
    EvalSettings,
    PairSettings,
    PPOSettings,
    RMSettings,
    RSSettings,
    asr_default,
)
from segrl.pipeline.sft import PACKAGED_SFT, SFTSettings

__all__ = ["PipelineOptions"]


def _f(default, help_: str, **kw):
    return field(default=default, metadata={"help": help_, **kw})


@dataclass
class PipelineOptions:
    """Options of every pipeline stage (defaults: the full experiment; the demo overrides a few)."""

    output_dir: str = _f("runs/experiment", "Where every artifact, the results and the report are written.")
    # SFT
    train_sft: bool = _f(False, "Train the SFT model even when the packaged checkpoint has the requested settings "
                                "(about 4 minutes on one core for the default 1000 steps).")
    sft_steps: int = _f(PACKAGED_SFT.steps, "SFT steps (batch sft_batch_size, AdamW, cosine).")
    sft_batch_size: int = _f(PACKAGED_SFT.batch_size, "SFT batch size.")
    sft_learning_rate: float = _f(PACKAGED_SFT.learning_rate, "SFT peak learning rate.")
    sft_examples: int = _f(PACKAGED_SFT.n_examples, "Rows of segrl.tasks.make_sft_data (systematic carry errors).")
    hidden_size: int = _f(PACKAGED_SFT.hidden_size, "Tiny Llama hidden size.")
    num_layers: int = _f(PACKAGED_SFT.num_layers, "Tiny Llama layers.")
    # pairs
    pair_source: str = _f("sampled", "'sampled' from the SFT model (best vs worst of samples_per_prompt) or "
                                     "'synthetic' (segrl.tasks.make_preference_pairs).")
    pair_prompts: int = _f(3000, "Training prompts the pairs are drawn from (ties are dropped; a tenth of the pairs go to RM eval).")
    samples_per_prompt: int = _f(4, "Samples per prompt for 'sampled' pairs.")
    conflict_fraction: float = _f(0.5, "Conflict fraction of 'synthetic' pairs.")
    # reward models
    segment_threshold: float = _f(0.2, "Entropy threshold c (nats) of the segment RM (token RM: 0, bandit: inf).")
    rm_epochs: float = _f(2.0, "Reward-model epochs over the training pairs.")
    rm_batch_size: int = _f(32, "Reward-model batch size (pairs).")
    rm_learning_rate: float = _f(1e-3, "Reward-model learning rate (fresh scalar head on the SFT backbone).")
    rm_reward_form: str = _f("delta", "Token-reward form of every RM (normaliser fitted on it): 'delta' (the change of "
                                      "the RM value since the previous segment end; better within-response credit "
                                      "than 'value' on every seed of the credit study, experiments/README.md) or "
                                      "'value' (the RM value at each segment end, the paper's).")
    rm_segment_loss: str = _f("mean", "Reward-model training loss: 'mean' (Bradley-Terry on the mean segment reward, "
                                      "the paper's) or 'prefix_pairs' (Bradley-Terry between every chosen and every "
                                      "rejected segment reward; localises credit with rm_reward_form delta, see "
                                      "experiments/README.md).")
    # DPO
    dpo_steps: int = _f(100, "DPO steps per run.")
    dpo_batch_size: int = _f(32, "DPO batch size (pairs).")
    dpo_learning_rate: float = _f(1e-5, "DPO learning rate (constant after warm-up).")
    dpo_beta: float = _f(0.1, "DPO beta.")
    dpo_loss_type: str = _f("sigmoid", "DPO loss of every DPO-family method: 'sigmoid' (summed log-ratios) or "
                                       "'sigmoid_norm' (averaged over the kept tokens).")
    dpo_sft_weight: float = _f(0.0, "Weight of an NLL term on the full chosen response (TRL's 'sft' loss, RPO) added "
                                    "to every DPO-family method; 0 = none.")
    asr_baseline: str = _f(asr_default("asr_baseline"),
                           "ASR baseline for learned token rewards: sequence_mean (each response keeps its better / "
                           "worse than own-average segments; removes the sequence-level offset RM token rewards "
                           "carry), batch_mean, position_mean, zero or a number. The oracle always uses zero.")
    asr_delta: str = _f(asr_default("asr_delta"),
                        "ASR hysteresis half-width: 'auto' (the asr_delta_quantile quantile of |r - b| over the "
                        "training token rewards) or a number >= 0 (at 0 the ASR mask equals the token-wise one "
                        "whenever rewards have no ties).")
    asr_delta_quantile: float = _f(asr_default("asr_delta_quantile"), "Quantile q in [0, 1] of asr_delta='auto'.")
    # PPO
    ppo_iterations: int = _f(50, "PPO rollout-and-update iterations per run.")
    ppo_rollout_batch_size: int = _f(32, "Prompts per PPO rollout.")
    ppo_mini_batch_size: int = _f(16, "Rollouts per PPO optimiser step.")
    ppo_learning_rate: float = _f(1e-5, "PPO policy learning rate.")
    ppo_critic_learning_rate: float = _f(1e-4, "PPO critic learning rate.")
    ppo_kl_coef: float = _f(0.01, "PPO k1 KL coefficient.")
    # rejection sampling
    rs_prompts: int = _f(512, "Prompts sampled for rejection sampling.")
    rs_candidates: int = _f(4, "Candidates per prompt (best of K by the RM).")
    rs_steps: int = _f(60, "Fine-tuning steps on the selected responses.")
    rs_learning_rate: float = _f(1e-4, "Rejection-sampling fine-tuning learning rate.")
    # evaluation
    eval_dev: int = _f(200, "Held-out dev prompts (learning curves, checkpoint selection).")
    eval_test: int = _f(500, "Held-out test prompts (reported numbers).")
    eval_checkpoints: int = _f(5, "Dev evaluations per run, evenly spaced.")
    num_threads: int = _f(1, "torch intra-op threads (1 is fastest for these tiny models on a shared machine); the "
                             "global `segrl --num_threads N` sets it from the command line.")

    def __post_init__(self):
        from segrl.asr_options import parse_delta

        try:  # "0.05" from a flag is the number 0.05; a bad value is reported by stage_settings(), naming it
            self.asr_delta = parse_delta(self.asr_delta)
        except ValueError:
            pass

    def sft_settings(self) -> SFTSettings:
        from dataclasses import replace

        return replace(PACKAGED_SFT, steps=self.sft_steps, batch_size=self.sft_batch_size,
                       learning_rate=self.sft_learning_rate, n_examples=self.sft_examples,
                       hidden_size=self.hidden_size, num_layers=self.num_layers,
                       intermediate_size=3 * self.hidden_size)

    def stage_settings(self) -> dict:
        """The per-stage settings (validated by their own ``__post_init__``)."""
        return dict(
            sft=self.sft_settings(),
            pairs=PairSettings(source=self.pair_source, n_prompts=self.pair_prompts,
                               samples_per_prompt=self.samples_per_prompt, conflict_fraction=self.conflict_fraction),
            rm=RMSettings(segment_threshold=self.segment_threshold, epochs=self.rm_epochs,
                          batch_size=self.rm_batch_size, learning_rate=self.rm_learning_rate,
                          reward_form=self.rm_reward_form, segment_loss=self.rm_segment_loss),
            dpo=DPOSettings(steps=self.dpo_steps, batch_size=self.dpo_batch_size,
                            learning_rate=self.dpo_learning_rate, beta=self.dpo_beta,
                            loss_type=self.dpo_loss_type, sft_weight=self.dpo_sft_weight,
                            asr_baseline=str(self.asr_baseline), asr_delta=self.asr_delta,
                            asr_delta_quantile=self.asr_delta_quantile),
            ppo=PPOSettings(iterations=self.ppo_iterations, rollout_batch_size=self.ppo_rollout_batch_size,
                            mini_batch_size=self.ppo_mini_batch_size, learning_rate=self.ppo_learning_rate,
                            critic_learning_rate=self.ppo_critic_learning_rate, kl_coef=self.ppo_kl_coef),
            rs=RSSettings(n_prompts=self.rs_prompts, num_candidates=self.rs_candidates, steps=self.rs_steps,
                          learning_rate=self.rs_learning_rate),
            evals=EvalSettings(n_dev=self.eval_dev, n_test=self.eval_test, checkpoints=self.eval_checkpoints),
        )

    def build(self, reporter=None, **kwargs):
        """A :class:`segrl.pipeline.Pipeline` for these options."""
        from segrl.pipeline.stages import Pipeline

        import os

        from segrl.commands._common import THREADS_ENV

        # `segrl --num_threads N` is a global option (stripped before this config is parsed): it wins
        threads = int(os.environ[THREADS_ENV]) if os.environ.get(THREADS_ENV) else self.num_threads
        return Pipeline(self.output_dir, **self.stage_settings(), reporter=reporter,
                        use_packaged_sft=not self.train_sft, num_threads=threads, **kwargs)

    def to_dict(self) -> dict:
        return asdict(self)
