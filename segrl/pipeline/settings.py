"""Settings of the pipeline stages and the registry of compared methods.

The command configs (``segrl demo``, ``segrl experiment``) are flat dataclasses for the CLI / YAML;
they are turned into these per-stage settings, whose hashes key the cached artifacts.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields

from segrl.asr_options import ASRArguments, parse_delta

__all__ = [
    "DPO_METHODS",
    "METHODS",
    "PPO_METHODS",
    "RS_METHODS",
    "DPOSettings",
    "EvalSettings",
    "MethodSpec",
    "PPOSettings",
    "PairSettings",
    "RMSettings",
    "RSSettings",
    "asr_default",
    "settings_key",
]


def asr_default(name: str):
    """The default of an ASR option (``asr_baseline``, ``asr_delta``, ...): :class:`ASRArguments` is the one
    place the ASR defaults are set, for the trainers, the CLI and the pipeline alike."""
    return {f.name: f.default for f in fields(ASRArguments)}[name]


def settings_key(*parts) -> str:
    """A short stable hash of dataclasses / plain values (the cache key of an artifact)."""
    def plain(x):
        if hasattr(x, "__dataclass_fields__"):
            return {"__type__": type(x).__name__, **asdict(x)}
        if isinstance(x, float) and math.isinf(x):
            return "inf"
        return x

    blob = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PairSettings:
    """Preference pairs: ``sampled`` from the SFT model (best vs worst of ``samples_per_prompt`` by
    wrong parts) or ``synthetic`` (:func:`segrl.tasks.make_preference_pairs`)."""

    source: str = "sampled"
    n_prompts: int = 3000
    samples_per_prompt: int = 4
    temperature: float = 1.0
    conflict_fraction: float = 0.5  # synthetic only
    rm_eval_fraction: float = 0.1  # pairs held out to measure the RM's pairwise accuracy

    def __post_init__(self):
        if self.source not in ("sampled", "synthetic"):
            raise ValueError(f"`pair_source` must be 'sampled' or 'synthetic', got {self.source!r}")
        if self.n_prompts < 8:
            raise ValueError(f"`pair_prompts` must be >= 8, got {self.n_prompts}")
        if self.samples_per_prompt < 2:
            raise ValueError(f"`samples_per_prompt` must be >= 2, got {self.samples_per_prompt}")
        if not 0.0 < self.rm_eval_fraction < 0.5:
            raise ValueError(f"`rm_eval_fraction` must be in (0, 0.5), got {self.rm_eval_fraction}")


@dataclass(frozen=True)
class RMSettings:
    """Segment reward model training (:class:`segrl.rm.SegmentRewardTrainer`) and normaliser fit."""

    segment_threshold: float = 0.2
    epochs: float = 2.0
    batch_size: int = 32
    learning_rate: float = 1e-3
    normalizer_pairs: int = 512
    reward_form: str = "value"
    segment_loss: str = "mean"

    def __post_init__(self):
        from segrl.rm.scoring import parse_reward_form, parse_segment_loss

        parse_reward_form(self.reward_form, "rm_reward_form")
        parse_segment_loss(self.segment_loss, "rm_segment_loss")
        if not (self.segment_threshold >= 0):
            raise ValueError(f"`segment_threshold` must be >= 0, got {self.segment_threshold}")
        if not self.epochs > 0:
            raise ValueError(f"`rm_epochs` must be > 0, got {self.epochs}")

    def key(self) -> dict:
        """What the cache key hashes: every field, except ``segment_loss`` at its default (it was added
        later, so RMs cached before it keep their keys)."""
        fields = {k: v for k, v in asdict(self).items() if not (k == "segment_loss" and v == "mean")}
        return {"__type__": type(self).__name__, **fields}


@dataclass(frozen=True)
class DPOSettings:
    """ASR-DPO / DPO runs (:class:`segrl.dpo.ASRDPOTrainer`), and the ASR options every family of the
    pipeline shares (defaults: :class:`segrl.asr_options.ASRArguments`'s)."""

    steps: int = 100
    batch_size: int = 32
    learning_rate: float = 1e-5
    beta: float = 0.1
    loss_type: str = "sigmoid"
    sft_weight: float = 0.0  # > 0 adds TRL's `sft` term (NLL on the full chosen response, RPO) with this weight
    asr_baseline: str = asr_default("asr_baseline")
    asr_delta: str | float = asr_default("asr_delta")
    asr_delta_quantile: float = asr_default("asr_delta_quantile")
    warmup_steps: int = 10
    implicit_beta: float = 0.1

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("`dpo_steps` and `dpo_batch_size` must be >= 1")
        if self.loss_type not in ("sigmoid", "sigmoid_norm"):
            raise ValueError(f"`dpo_loss_type` must be 'sigmoid' or 'sigmoid_norm', got {self.loss_type!r}")
        if not self.sft_weight >= 0:
            raise ValueError(f"`dpo_sft_weight` must be >= 0, got {self.sft_weight}")
        # The trainers' own checks, so a bad value fails before any stage runs; "0.05" becomes 0.05.
        checked = ASRArguments(asr_baseline=self.asr_baseline, asr_delta=self.asr_delta,
                               asr_delta_quantile=self.asr_delta_quantile)
        object.__setattr__(self, "asr_delta", checked.asr_delta)
        object.__setattr__(self, "asr_delta_quantile", checked.asr_delta_quantile)

    def asr_key(self, baseline: str | None = None) -> tuple:
        """What a masked method's result depends on among the ASR options (its cache key part):
        the baseline (``baseline`` overrides the configured one), the delta and, for ``"auto"``, its quantile."""
        parts = (baseline or self.asr_baseline, self.asr_delta)
        return parts + (self.asr_delta_quantile,) if self.asr_delta == "auto" else parts

    def without_asr(self) -> DPOSettings:
        """These settings with the ASR options blanked (what plain DPO's result depends on)."""
        from dataclasses import replace

        return replace(self, asr_baseline="zero", asr_delta=0.0, asr_delta_quantile=0.0)


@dataclass(frozen=True)
class PPOSettings:
    """Dense-reward PPO runs (:class:`segrl.ppo.SegmentPPOTrainer`)."""

    iterations: int = 50
    rollout_batch_size: int = 32
    mini_batch_size: int = 16
    ppo_epochs: int = 1
    learning_rate: float = 1e-5
    critic_learning_rate: float = 1e-4
    kl_coef: float = 0.01
    temperature: float = 1.0
    max_new_tokens: int = 80
    n_prompts: int = 2048

    def __post_init__(self):
        if self.iterations < 1:
            raise ValueError(f"`ppo_iterations` must be >= 1, got {self.iterations}")
        if self.rollout_batch_size % self.mini_batch_size:
            raise ValueError("`ppo_rollout_batch_size` must be a multiple of `ppo_mini_batch_size`")


@dataclass(frozen=True)
class RSSettings:
    """Rejection sampling (:class:`segrl.rs.ASRRejectionSampler`): sample, score, select, masked SFT."""

    n_prompts: int = 512
    num_candidates: int = 4
    steps: int = 60
    batch_size: int = 32
    learning_rate: float = 1e-4
    temperature: float = 1.0


@dataclass(frozen=True)
class EvalSettings:
    """Held-out evaluation: ``n_dev`` prompts for curves / checkpoint selection, ``n_test`` for the
    reported numbers (disjoint, both from the held-out side of the task's partition)."""

    n_dev: int = 200
    n_test: int = 500
    checkpoints: int = 5  # evaluations on dev per run (evenly spaced, the last at the final step)
    seed: int = 0

    def __post_init__(self):
        if self.n_dev < 1 or self.n_test < 1 or self.checkpoints < 1:
            raise ValueError("`eval_dev`, `eval_test` and `eval_checkpoints` must be >= 1")

    def schedule(self, total: int) -> list[int]:
        """The steps (1..total) at which a run of ``total`` steps is evaluated on dev."""
        k = min(self.checkpoints, total)
        return sorted({max(1, round(total * (i + 1) / k)) for i in range(k)})


@dataclass(frozen=True)
class MethodSpec:
    """One compared method.

    family: ``dpo`` | ``ppo`` | ``rs``; ``mask``: ``none`` | ``asr`` | ``tokenwise`` | ``stepwise``;
    ``rewards``: where token rewards come from (``segment_rm``, ``implicit``, ``oracle``, ``random`` (seeded
    Gaussian noise: a control with the sparsity of a mask but no credit), ``-``);
    ``rm_arm``: which reward model it needs (``segment`` / ``token`` / ``bandit``, or ``None``).
    """

    name: str
    family: str
    label: str
    mask: str = "none"
    rewards: str = "-"
    rm_arm: str | None = None
    needs: tuple[str, ...] = ()
    baseline: str | None = None  # overrides the configured ASR baseline (the oracle is centred at 0)
    lr_scale: float = 1.0  # multiplies the family's learning rate (a control for masked losses' larger steps)
    # DPO loss overrides (the late-collapse defences): None keeps the configured dpo_loss_type / dpo_sft_weight.
    loss_type: str | None = None
    sft_weight: float | None = None
    beta_scale: float = 1.0  # multiplies dpo_beta (sigmoid_norm averages the log-ratio: ~1/kept-count smaller)


def _registry() -> dict[str, MethodSpec]:
    m = MethodSpec
    specs = [m("dpo", "dpo", "DPO", "none")]
    for arm, short in (("segment", "seg"), ("token", "tok")):
        specs += [
            m(f"asr_dpo_{short}rm", "dpo", f"ASR-DPO ({arm} RM)", "asr", "segment_rm", arm),
            m(f"tokenwise_dpo_{short}rm", "dpo", f"token-wise DPO ({arm} RM)", "tokenwise", "segment_rm", arm),
            m(f"stepwise_dpo_{short}rm", "dpo", f"step-wise DPO ({arm} RM)", "stepwise", "segment_rm", arm),
        ]
    specs += [
        m("asr_dpo_segrm_batchmean", "dpo", "ASR-DPO (segment RM, batch-mean baseline)", "asr", "segment_rm",
          "segment", baseline="batch_mean"),
        # Defences against the late collapse of sparse-mask DPO (experiments/README.md#collapse-defences):
        # the masked log-ratio averaged over the kept tokens (beta x 10: about the kept count), or an NLL
        # term on the full chosen response (RPO, weight 1).
        m("asr_dpo_segrm_norm", "dpo", "ASR-DPO (segment RM), log-ratio / kept tokens", "asr", "segment_rm", "segment",
          loss_type="sigmoid_norm", beta_scale=10.0),
        m("asr_dpo_segrm_nll", "dpo", "ASR-DPO (segment RM) + NLL on chosen", "asr", "segment_rm", "segment",
          sft_weight=1.0),
        m("dpo_nll", "dpo", "DPO + NLL on chosen", "none", sft_weight=1.0),
        m("asr_dpo_implicit", "dpo", "ASR-DPO (implicit reward of DPO)", "asr", "implicit", None, ("dpo",)),
        m("random_dpo", "dpo", "random token mask DPO (control)", "tokenwise", "random"),
        m("asr_dpo_oracle", "dpo", "ASR-DPO (oracle rewards, upper bound)", "asr", "oracle", baseline="zero"),
        m("tokenwise_dpo_oracle", "dpo", "token-wise DPO (oracle rewards)", "tokenwise", "oracle", baseline="zero"),
        m("ppo_bandit", "ppo", "PPO, bandit RM (c=inf)", "none", "-", "bandit"),
        m("ppo_token", "ppo", "PPO, token RM (c=0)", "none", "-", "token"),
        m("ppo_segment", "ppo", "PPO, segment RM", "none", "-", "segment"),
        m("asr_ppo_segment", "ppo", "ASR-PPO, segment RM", "asr", "segment_rm", "segment"),
        m("asr_ppo_token", "ppo", "ASR-PPO, token RM", "asr", "segment_rm", "token"),
    ]
    for arm, short in (("segment", "seg"), ("token", "tok")):
        specs += [
            m(f"rs_{short}rm", "rs", f"rejection sampling ({arm} RM)", "none", "-", arm),
            m(f"asr_rs_{short}rm", "rs", f"ASR rejection sampling ({arm} RM)", "asr", "segment_rm", arm),
            m(f"random_rs_{short}rm", "rs", f"rejection sampling ({arm} RM), random token mask (control)",
              "tokenwise", "random", arm),
            m(f"rs_{short}rm_lr2x", "rs", f"rejection sampling ({arm} RM), 2x learning rate", "none", "-", arm,
              lr_scale=2.0),
        ]
    return {spec.name: spec for spec in specs}


METHODS: dict[str, MethodSpec] = _registry()
DPO_METHODS = tuple(n for n, m in METHODS.items() if m.family == "dpo")
PPO_METHODS = tuple(n for n, m in METHODS.items() if m.family == "ppo")
RS_METHODS = tuple(n for n, m in METHODS.items() if m.family == "rs")


def rm_threshold(arm: str, settings: RMSettings) -> float:
    """Entropy threshold of an RM arm: bandit ``inf``, token ``0``, segment ``settings.segment_threshold``."""
    return {"bandit": math.inf, "token": 0.0, "segment": settings.segment_threshold}[arm]
