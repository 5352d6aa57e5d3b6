"""segrl plugin for verl 0.9.1: dense segment rewards, ASR-masked GAE, and a kept-token policy loss.

Install with ``pip install "segrl[verl]"`` (verl pins ``transformers<5.11``; use a separate
environment, see ``scripts/make_verl_venv.sh``) and load it in the driver **and** every Ray worker::

    export VERL_USE_EXTERNAL_MODULES=segrl.integrations.verl

(``import verl`` imports every module named there, so the registrations below happen in each
process that touches verl.) Everything is registered through verl's own registries:

- :class:`SegmentDenseRewardManager` in ``verl.experimental.reward_loop.reward_manager``
  (``reward.reward_manager.name=segrl_dense``);
- :func:`segment_rm_token_rewards`, the token-reward source for a segrl segment RM
  (``reward.custom_reward_function.path=pkg://segrl.integrations.verl``), a thin adapter onto
  segrl's one segment-RM source :class:`segrl.rewards.SegmentRMRewards`;
- :func:`compute_segrl_asr_gae_advantage` via ``register_adv_est``
  (``algorithm.adv_estimator=segrl_asr_gae``);
- :func:`compute_policy_loss_segrl_asr` via ``register_policy_loss``
  (``actor_rollout_ref.actor.policy_loss.loss_mode=segrl_asr``).

Tensor layout (verl's, which matches SPEC §0): ``(bs, response_length)`` tensors over response
tokens, ``response_mask`` 1 on tokens the policy generated. ``token_level_scores`` are the reward
manager's dense rewards, ``token_level_rewards`` the same minus the in-reward KL penalty (equal when
``algorithm.use_kl_in_reward=False``).

How the ASR mask reaches the actor, and why the loss is divided by the kept-token count
----------------------------------------------------------------------------------------
A verl advantage estimator only returns ``(advantages, returns)``, and the actor's policy loss only
receives ``old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config,
rollout_is_weights``. The ASR mask therefore travels inside the advantages: dropped tokens get an
advantage of exactly ``0.0`` (so they contribute exactly nothing to any PPO surrogate), and the
``segrl_asr`` loss recovers ``kept = response_mask & (advantages != 0)``.

The token-count pitfall: the actor's engine counts the denominator of ``token-mean`` *before* the
loss runs — ``batch_num_tokens = loss_mask.sum()`` all-reduced over the data-parallel group, with
``loss_mask = response_mask`` (``verl/workers/engine/fsdp/transformer_impl.py``,
``workers/utils/padding.py``) — and hands it to the loss in ``config.global_batch_info``. Zeroing
advantages (or shrinking the mask inside the loss) keeps every dropped token in that denominator
(verl#4852), so the surrogate would be averaged over *all* response tokens, not the kept ones. A
loss function cannot recount it either: it sees one micro-batch, while the count spans the whole
mini-batch on every DP rank.

The fix: the estimator runs on the driver and sees the whole rollout batch (all DP ranks), so it
multiplies the kept advantages by ``N / K`` (``N`` response tokens, ``K`` kept tokens in the batch).
The PPO surrogate is positively homogeneous in the advantage (also with dual-clip and rollout IS
weights), so the engine's ``sum_kept(loss) / N`` becomes exactly ``sum_kept(loss) / K``: the mean
over kept tokens across the DP group. This is exact when one PPO mini-batch is the whole rollout
batch (``actor.ppo_mini_batch_size == data.train_batch_size``, any number of epochs, micro-batches
or DP ranks); with several mini-batches each one is divided by ``K * N_mb / N``, the expected kept
count of a randomly drawn mini-batch. ``rescale: false`` turns this off (dropped tokens are then
zero-weighted but still counted, the "vanilla denominator" semantics). The critic is untouched:
``returns`` are plain GAE returns and the value loss covers every response token (SPEC §3).

Dense rewards only reach the trainer on verl's **colocated reward-model path**
(``reward.reward_model.enable=True``, ``enable_resource_pool=False``): there
``RewardLoopManager.compute_rm_score`` calls :meth:`SegmentDenseRewardManager.assemble_rm_scores`,
which writes our (bs, response_len) tensor. On the default asynchronous path the agent loop puts
one scalar ``reward_score`` on the last response token, so the manager refuses to start there.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

# verl is imported here, at module level, on purpose: this module *is* the plugin and is only ever
# imported by verl (VERL_USE_EXTERNAL_MODULES) or by code that already uses verl. Nothing else in
# segrl imports it, so `import segrl` never needs verl.
from verl import DataProto
from verl.trainer.ppo.core_algos import (
    ADV_ESTIMATOR_REGISTRY,
    POLICY_LOSS_REGISTRY,
    compute_gae_advantage_return,
    compute_policy_loss_vanilla,
    register_adv_est,
    register_policy_loss,
)

from segrl import ops

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("SEGRL_LOGGING_LEVEL", os.getenv("VERL_LOGGING_LEVEL", "WARN")))

__all__ = [
    "ADV_ESTIMATOR_NAME",
    "ASRAdvantages",
    "ASROptions",
    "CONFIG_KEY",
    "POLICY_LOSS_NAME",
    "REWARD_MANAGER_NAME",
    "SegmentDenseRewardManager",
    "SegmentRMTokenRewards",
    "TokenRewardSource",
    "asr_gae_advantages",
    "asr_keep_mask",
    "compute_policy_loss_segrl_asr",
    "compute_segrl_asr_gae_advantage",
    "dense_scores_tensor",
    "segment_rm_token_rewards",
]

ADV_ESTIMATOR_NAME = "segrl_asr_gae"
POLICY_LOSS_NAME = "segrl_asr"
REWARD_MANAGER_NAME = "segrl_dense"
CONFIG_KEY = "segrl_asr"  # options live under `+algorithm.segrl_asr.*`


# ============================================================================ token-reward sources


@runtime_checkable
class TokenRewardSource(Protocol):
    """Dense token rewards for one response.

    ``prompt_ids``: the prompt's token ids (no padding). ``response_ids``: the response's token ids
    (no padding, EOS included when generated). Returns one reward per response token: shape (T,)
    with ``T = len(response_ids)``, as a tensor, array or list of floats. Token ``t`` is
    ``response_ids[t]``, the same token whose log-prob verl puts at response position ``t``.
    """

    def __call__(self, prompt_ids: list[int], response_ids: list[int]) -> Any: ...


class SegmentRMTokenRewards:
    """A :class:`TokenRewardSource` backed by a trained segrl segment reward model.

    A thin adapter onto :class:`segrl.rewards.SegmentRMRewards` (docs/method.md#segment-rm: entropy
    segments of the frozen reference, segment rewards in the RM's reward form, location-normalised,
    spread over their tokens), adding lazy loading, a lock and the reward clamp. The RM must share
    the policy's tokenizer: ids are passed through unchanged (out-of-vocabulary ids are an error).

    Args:
        model_path: directory written by ``segrl train-rm`` / ``SegmentRewardModel.save_pretrained``.
        model: an already loaded ``SegmentRewardModel`` (instead of ``model_path``).
        mode: spreading of a segment reward over its tokens: ``"even"`` | ``"end"`` | ``"repeat"``.
        normalize: apply the fitted location normaliser (a missing fit is an error, never identity).
        reward_form: ``"value"`` | ``"delta"`` (docs/method.md#reward-form); ``None``: the RM's, the
            form its normaliser was fitted on (another one with ``normalize`` is an error).
        reference_model: override the reference model stored with the RM (path or module).
        device: where to load the RM (default: CPU; pass ``"cuda"`` if the reward worker owns a GPU).
        batch_size: rows per RM forward pass in :meth:`score_batch`.
        clamp: clamp every token reward to ``[-clamp, clamp]`` (docs/method.md#ppo: 10, before verl
            subtracts the KL penalty); ``None`` disables it.

    The model is loaded on first use and calls are serialised with a lock: verl's reward loop runs
    sources in a thread pool, and one model shared by many threads would only thrash.
    """

    def __init__(self, model_path: str | os.PathLike | None = None, *, model=None, mode: str = "even",
                 normalize: bool = True, reward_form: str | None = None, reference_model=None, device=None,
                 batch_size: int = 8, clamp: float | None = 10.0):
        from segrl.rm.scoring import parse_reward_form

        if (model_path is None) == (model is None):
            raise ValueError("pass exactly one of `model_path` and `model`")
        if mode not in ("even", "end", "repeat"):
            raise ValueError(f"`mode` must be one of ('even', 'end', 'repeat'), got {mode!r}")
        if int(batch_size) < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
        if reward_form is not None:
            parse_reward_form(reward_form)
        self.model_path = None if model_path is None else os.fspath(model_path)
        self.mode, self.normalize, self.batch_size = mode, bool(normalize), int(batch_size)
        self.reward_form = reward_form
        if clamp is not None and not (isinstance(clamp, (int, float)) and clamp >= 0):
            raise ValueError(f"`clamp` must be a number >= 0 or None, got {clamp!r}")
        self.reference_model, self.device = reference_model, device
        self.clamp = None if clamp is None else float(clamp)
        self._rm = model
        self._source = None
        self._lock = threading.Lock()

    @property
    def source(self):
        """The :class:`segrl.rewards.SegmentRMRewards` doing the scoring (built lazily, once)."""
        if self._source is None:
            with self._lock:
                if self._source is None:
                    # Imported here: segrl.rm pulls in transformers, which the estimator/loss do not need.
                    from segrl.rewards.segment_rm import SegmentRMRewards

                    model = self._rm if self._rm is not None else self.model_path
                    self._source = SegmentRMRewards(
                        model, mode=self.mode, normalize=self.normalize, reward_form=self.reward_form,
                        batch_size=self.batch_size, device=self.device, reference_model=self.reference_model,
                        name="model_path",
                    )
        return self._source

    @property
    def rm(self):
        """The underlying ``segrl.rm.SegmentRewardModel`` (loaded lazily, once)."""
        return self.source.model

    def __call__(self, prompt_ids, response_ids) -> torch.Tensor:
        """Token rewards of one response. Shape: (T,) fp32 on CPU, ``T = len(response_ids)``."""
        return self.score_batch([prompt_ids], [response_ids])[0]

    def score_batch(self, prompt_ids, response_ids) -> list[torch.Tensor]:
        """Token rewards of several responses in batched RM passes; one (T_b,) tensor per row."""
        prompts = [[int(t) for t in p] for p in prompt_ids]
        responses = [[int(t) for t in r] for r in response_ids]
        source = self.source
        with self._lock:
            rewards, _ = source.token_rewards(prompts, responses)  # checks one reward per token of every row
        if self.clamp is not None:
            rewards = rewards.clamp(-self.clamp, self.clamp)
        return [rewards[b, : len(r)].float().cpu() for b, r in enumerate(responses)]


_SOURCES: dict[tuple, SegmentRMTokenRewards] = {}
_SOURCES_LOCK = threading.Lock()


def segment_rm_token_rewards(prompt_ids, response_ids, *, model_path: str, mode: str = "even",
                             normalize: bool = True, reward_form: str | None = None, reference_model: str | None = None,
                             device: str | None = None, batch_size: int = 8, clamp: float | None = 10.0) -> torch.Tensor:
    """verl ``custom_reward_function`` entry point: dense token rewards from a segment RM.

    Use with ``reward.custom_reward_function.path=pkg://segrl.integrations.verl``,
    ``reward.custom_reward_function.name=segment_rm_token_rewards`` and
    ``+reward.custom_reward_function.reward_kwargs.model_path=/path/to/segment_rm`` (other keyword
    arguments likewise). One :class:`SegmentRMTokenRewards` is cached per process and setting, so
    each reward-loop worker loads the RM once.

    Returns:
        Tensor of shape (T,), ``T = len(response_ids)``.
    """
    key = (os.fspath(model_path), mode, bool(normalize), reward_form, reference_model, device, int(batch_size), clamp)
    with _SOURCES_LOCK:
        source = _SOURCES.get(key)
        if source is None:
            source = _SOURCES[key] = SegmentRMTokenRewards(model_path, mode=mode, normalize=normalize,
                                                           reward_form=reward_form, reference_model=reference_model,
                                                           device=device, batch_size=batch_size, clamp=clamp)
    return source(prompt_ids, response_ids)


def _checked_token_rewards(value, n_tokens: int, row: int) -> list[float]:
    """A source's output as ``n_tokens`` finite floats, or ``ValueError`` naming the row."""
    if isinstance(value, torch.Tensor):
        value = value.detach().float().cpu().reshape(-1).tolist()
    elif isinstance(value, np.ndarray):
        value = value.astype(np.float64).reshape(-1).tolist()
    elif isinstance(value, (int, float)) or not isinstance(value, Sequence):
        raise ValueError(
            f"token-reward source returned {type(value).__name__} for row {row}; it must return one reward per "
            f"response token (a sequence of {n_tokens} floats), not a scalar"
        )
    rewards = [float(v) for v in value]
    if len(rewards) != n_tokens:
        raise ValueError(f"token-reward source returned {len(rewards)} rewards for row {row}, which has {n_tokens} tokens")
    if not all(math.isfinite(v) for v in rewards):
        raise ValueError(f"token-reward source returned NaN or inf for row {row}")
    return rewards


# ============================================================================ reward managers


def _row_token_ids(data: DataProto, row: int) -> tuple[list[int], list[int]]:
    """Unpadded ``(prompt_ids, response_ids)`` of one row of a verl batch.

    ``attention_mask`` is read as a boolean mask over ``[prompts | responses]``, so both of verl's
    layouts work: left-padded prompts (rollout batches) and right-padded prompts (the colocated
    reward path rebuilds ``[prompts | responses]`` from nested tensors, prompts padded on the right).
    """
    prompts, responses = data.batch["prompts"], data.batch["responses"]
    attention = data.batch["attention_mask"][row].bool()
    prompt_len = prompts.shape[-1]
    prompt_ids = prompts[row][attention[:prompt_len]].tolist()
    response_ids = responses[row][attention[prompt_len:]].tolist()
    return prompt_ids, response_ids


def dense_scores_tensor(data: DataProto, scores: Sequence) -> torch.Tensor:
    """Per-row token rewards -> verl's ``rm_scores``: shape (bs, response_length), fp32, 0 at padding.

    ``scores[b]`` is a sequence with one reward per valid response token of row ``b`` (as
    :meth:`SegmentDenseRewardManager.run_single` returns). A plain number is accepted too and put on
    the last valid token, exactly like verl's scalar default, so mixing managers stays possible.
    """
    prompt_len = data.batch["prompts"].shape[-1]
    response_mask = data.batch["attention_mask"][:, prompt_len:].bool()
    out = torch.zeros(data.batch["responses"].shape, dtype=torch.float32)
    if len(scores) != out.shape[0]:
        raise ValueError(f"got {len(scores)} scores for a batch of {out.shape[0]} rows")
    lengths = response_mask.sum(dim=1).tolist()
    for b, (score, n) in enumerate(zip(scores, lengths)):
        if isinstance(score, (int, float)) and not isinstance(score, bool):
            if n > 0:
                out[b, n - 1] = float(score)
            continue
        rewards = _checked_token_rewards(score, n, b)
        # Valid response tokens are contiguous from position 0 (responses are right-padded).
        out[b, :n] = torch.tensor(rewards, dtype=torch.float32)
    return out


def _config_get(config, dotted: str, default=None):
    node = config
    for part in dotted.split("."):
        if node is None:
            return default
        try:
            node = node.get(part) if hasattr(node, "get") else getattr(node, part, None)
        except Exception:  # OmegaConf raises on missing keys in struct mode
            return default
    return default if node is None else node


def _check_colocated_path(config) -> None:
    """Refuse configs on which verl 0.9.1 would drop the dense rewards (or never call us)."""
    if config is None or _config_get(config, "reward") is None:
        return  # constructed by hand (tests, custom loops): nothing to check
    if not _config_get(config, "reward.reward_model.enable", False) or _config_get(
        config, "reward.reward_model.enable_resource_pool", False
    ):
        raise ValueError(
            f"reward manager '{REWARD_MANAGER_NAME}' returns dense token rewards, which verl 0.9.1 only keeps on the "
            "colocated reward-model path: set reward.reward_model.enable=True and "
            "reward.reward_model.enable_resource_pool=False (on the asynchronous path the agent loop writes one "
            "scalar on the last token)"
        )
    if not _config_get(config, "reward.custom_reward_function.path"):
        raise ValueError(
            f"reward manager '{REWARD_MANAGER_NAME}' needs a token-reward source: set "
            "reward.custom_reward_function.path (e.g. pkg://segrl.integrations.verl) and .name (e.g. "
            "segment_rm_token_rewards); without it verl sends colocated batches to its own RM server instead"
        )


def _load_reward_loop_base():
    from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

    return RewardManagerBase


class SegmentDenseRewardManager(_load_reward_loop_base()):
    """Reward-loop manager that writes dense segment-level token rewards into ``rm_scores``.

    verl turns ``rm_scores`` into ``token_level_scores`` (and, minus the in-reward KL, into
    ``token_level_rewards``). The token rewards come from the configured ``custom_reward_function``,
    called positionally as ``compute_score(prompt_ids, response_ids)`` (verl adds the keyword
    arguments of ``custom_reward_function.reward_kwargs``) — see :class:`TokenRewardSource` and
    :func:`segment_rm_token_rewards` for the segment-RM adapter.

    Args:
        config: verl's trainer config. The colocated reward path is required (checked here).
        tokenizer: the policy tokenizer (unused: the source receives token ids).
        compute_score: the token-reward source built by verl from ``custom_reward_function``.
        token_reward_fn: a source passed directly (overrides ``compute_score``; for custom loops).
    """

    def __init__(self, config, tokenizer, compute_score=None, reward_router_address=None, reward_model_tokenizer=None,
                 token_reward_fn=None, **kwargs):
        super().__init__(config, tokenizer, compute_score)
        if token_reward_fn is None:
            _check_colocated_path(config)
        self.source = token_reward_fn if token_reward_fn is not None else compute_score
        if self.source is None:
            raise ValueError("no token-reward source: pass `token_reward_fn` or configure reward.custom_reward_function")
        self.is_async_source = inspect.iscoroutinefunction(self.source)

    async def run_single(self, data: DataProto) -> dict:
        """Dense token rewards of one sample: ``{"reward_score": [r_0, ..., r_{T-1}], "reward_extra_info": ...}``."""
        data = data[-1:]  # multi-sequence outputs: score the last one, as verl's managers do
        prompt_ids, response_ids = _row_token_ids(data, 0)
        if self.is_async_source:
            raw = await self.source(prompt_ids, response_ids)
        else:
            # An RM forward pass blocks: run it off the event loop like verl's naive manager does (on
            # the loop actually running us, not the one captured at construction).
            raw = await asyncio.get_running_loop().run_in_executor(
                None, lambda: self.source(prompt_ids, response_ids)
            )
        rewards = _checked_token_rewards(raw, len(response_ids), 0)
        extra = {"segrl_token_reward_sum": float(sum(rewards)), "segrl_response_tokens": len(rewards)}
        return {"reward_score": rewards, "reward_extra_info": extra}

    @classmethod
    def assemble_rm_scores(cls, data: DataProto, scores: list) -> torch.Tensor:
        """Per-sample token-reward lists -> ``rm_scores``. Shape: (bs, response_length)."""
        return dense_scores_tensor(data, scores)


# ============================================================================ ASR-masked GAE


from segrl.asr_options import ASRArguments  # noqa: E402  (the ASR options: one class for every trainer)

#: Keys of ``algorithm.segrl_asr`` before the options became :class:`segrl.asr_options.ASRArguments`.
_LEGACY_KEYS = {"baseline": "asr_baseline", "delta": "asr_delta", "delta_quantile": "asr_delta_quantile",
                "neutral": "asr_neutral", "empty": "asr_empty"}


@dataclass
class ASROptions(ASRArguments):
    """Options of the ``segrl_asr_gae`` estimator, read from ``algorithm.segrl_asr`` (docs/method.md#asr-mask).

    The mask options are segrl's one options class, :class:`segrl.asr_options.ASRArguments`, with its
    names, defaults and checks (at construction): ``mask_type`` (``"asr"`` | ``"tokenwise"`` |
    ``"none"``; ``"stepwise"`` needs token texts, which an estimator never sees), ``asr_baseline``
    (default ``"sequence_mean"``), ``asr_delta`` (default ``"auto"``: resolved over the whole rollout
    batch, which the estimator holds on the driver, for all DP ranks at once), ``asr_delta_quantile``,
    ``asr_neutral``, ``asr_empty``. The keys ``baseline`` / ``delta`` / ``delta_quantile`` /
    ``neutral`` / ``empty`` of earlier releases are still read (deprecated). verl-specific:

    Attributes:
        seq_baseline: sequence sign ``sign(R - b_seq)`` against the ``"batch_mean"`` of ``R`` (docs) or
            the ``"group_mean"`` of responses to the same prompt (verl's ``uid``; for ``rollout.n > 1``).
        signal: token signal for the mask: ``"scores"`` (``token_level_scores``, the reward model's
            own dense rewards, before any in-reward KL; as segrl's PPO trainer does) or ``"rewards"``
            (``token_level_rewards``). Identical when ``use_kl_in_reward=False``.
        rescale: scale kept advantages by ``N / K`` so verl's token-mean denominator becomes the
            kept-token count (see the module docstring); ``False`` keeps verl's all-token denominator.
    """

    seq_baseline: str = "batch_mean"
    signal: str = "scores"
    rescale: bool = True

    def __post_init__(self):
        def choice(name, allowed):
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{CONFIG_KEY}.{name}` must be one of {allowed}, got {getattr(self, name)!r}")

        super().__post_init__()  # the ASR fields (ASRArguments): errors name the field
        if self.mask_type == "stepwise":
            raise ValueError(f"`{CONFIG_KEY}.mask_type='stepwise'` is not supported by '{ADV_ESTIMATOR_NAME}': step "
                             "boundaries need token texts, which a verl advantage estimator never receives")
        choice("seq_baseline", ("batch_mean", "group_mean"))
        choice("signal", ("scores", "rewards"))
        if not isinstance(self.rescale, bool):
            raise ValueError(f"`{CONFIG_KEY}.rescale` must be true or false, got {self.rescale!r}")

    @classmethod
    def from_config(cls, config) -> ASROptions:
        """Options from ``config[CONFIG_KEY]`` (a mapping or verl ``AlgoConfig``/``DictConfig``); defaults if absent."""
        node = _config_get(config, CONFIG_KEY) if config is not None else None
        if node is None:
            return cls()
        if not isinstance(node, Mapping) and not hasattr(node, "items"):
            raise ValueError(f"`algorithm.{CONFIG_KEY}` must be a mapping of options, got {type(node).__name__}")
        values = dict(node.items())
        for old, new in _LEGACY_KEYS.items():
            if old in values:
                if new in values:
                    raise ValueError(f"`algorithm.{CONFIG_KEY}` sets both `{old}` and `{new}`; keep `{new}`")
                logger.warning("`algorithm.%s.%s` is deprecated: use `%s`", CONFIG_KEY, old, new)
                values[new] = values.pop(old)
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown `algorithm.{CONFIG_KEY}` option(s) {sorted(unknown)}; "
                             f"known: {sorted(cls.__dataclass_fields__)}")
        return cls(**values)


@dataclass
class ASRAdvantages:
    """Output of :func:`asr_gae_advantages`. Shapes: (bs, T) unless noted.

    ``advantages``: whitened GAE advantages, exactly 0 on dropped tokens and padding, kept tokens
    times ``scale``. ``returns``: plain GAE returns (critic targets, every response token).
    ``keep``: the ASR mask. ``fallback``: (bs,) rows whose mask fell back to the full response.
    ``seq_sign``: (bs,) the sequence signs. ``scale``: the kept-token rescale factor ``N / K``.
    ``delta``: the hysteresis half-width the mask used (``asr_delta`` resolved; 0 without hysteresis).
    """

    advantages: torch.Tensor
    returns: torch.Tensor
    keep: torch.Tensor
    fallback: torch.Tensor
    seq_sign: torch.Tensor
    scale: float
    delta: float = 0.0


def _group_ids(index, batch: int, device) -> torch.Tensor:
    """verl's ``uid`` array (any hashable per row) -> dense group ids, shape (bs,)."""
    if index is None:
        raise ValueError(f"`{CONFIG_KEY}.seq_baseline='group_mean'` needs verl's `uid` index (pass `index`)")
    values = np.asarray(index, dtype=object).reshape(-1)
    if values.shape[0] != batch:
        raise ValueError(f"`index` has {values.shape[0]} entries for a batch of {batch}")
    _, inverse = np.unique(values.astype(str), return_inverse=True)
    return torch.as_tensor(inverse, dtype=torch.long, device=device)


def asr_keep_mask(signal: torch.Tensor, response_mask: torch.Tensor, *, options: ASROptions | None = None,
                  index=None, result: bool = False):
    """The keep mask of a verl rollout batch (docs/method.md#asr-mask, PPO case).

    Sequence reward ``R_b = sum_t signal[b, t]`` over response tokens; sequence sign
    :func:`segrl.ops.sequence_sign` of ``R_b`` against ``b_seq``, the batch (or group) mean of ``R``
    (ties +1); then :func:`segrl.ops.keep_mask` with the options' ``mask_kwargs()``. The batch is
    the whole rollout batch (every DP rank's rows: the estimator runs on the driver), so a batch
    baseline and ``asr_delta="auto"`` are resolved over all of it, never per micro-batch.

    verl's ``response_mask`` can have holes (multi-turn: tool-observation tokens are 0); segrl.ops
    wants right-padded rows, so each row's valid tokens are moved to the front in order, masked,
    and scattered back. For single-turn batches this is the identity.

    Args:
        signal: token signal. Shape: (bs, T).
        response_mask: Shape: (bs, T), bool or 0/1.
        options: :class:`ASROptions`.
        index: verl's ``uid`` per row, for ``seq_baseline="group_mean"``. Shape: (bs,).

        result: also return the :class:`segrl.ops.KeepMaskResult` (over the compacted rows).

    Returns:
        ``(keep (bs, T) bool, fallback (bs,) bool, seq_sign (bs,) long)``, plus the result when ``result``.
    """
    options = ASROptions() if options is None else options
    if signal.shape != response_mask.shape or signal.dim() != 2:
        raise ValueError(f"`signal` {tuple(signal.shape)} and `response_mask` {tuple(response_mask.shape)} "
                         "must both have shape (bs, T)")
    mask = response_mask.bool()
    signal = signal.detach().float()
    seq = torch.where(mask, signal, torch.zeros_like(signal)).sum(dim=1, dtype=torch.float64)
    if options.seq_baseline == "batch_mean":
        b_seq = ops.masked_mean(seq)
    else:
        groups = _group_ids(index, seq.shape[0], seq.device)
        n_groups = int(groups.max()) + 1 if groups.numel() else 0
        sums = torch.zeros(n_groups, dtype=seq.dtype, device=seq.device).index_add_(0, groups, seq)
        counts = torch.zeros(n_groups, dtype=seq.dtype, device=seq.device).index_add_(0, groups, torch.ones_like(seq))
        b_seq = (sums / counts)[groups]
    seq_sign = ops.sequence_sign(seq, b_seq)  # ties -> +1 (docs/method.md#sequence-sign)

    # Stable sort of "is padding" puts valid tokens first, in their original order.
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    compact_mask = mask.gather(1, order)
    compact_signal = torch.where(compact_mask, signal.gather(1, order), torch.zeros_like(signal))
    res = ops.keep_mask(compact_signal, compact_mask, seq_sign, **options.mask_kwargs())
    keep = torch.zeros_like(mask).scatter(1, order, res.keep)
    return (keep, res.fallback, seq_sign, res) if result else (keep, res.fallback, seq_sign)


def asr_gae_advantages(token_level_rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor, *,
                       gamma: float, lam: float, signal: torch.Tensor | None = None, index=None,
                       options: ASROptions | None = None) -> ASRAdvantages:
    """GAE with verl's own ``compute_gae_advantage_return``, then the ASR mask on the advantages.

    Args:
        token_level_rewards: per-token PPO rewards (dense RM rewards, minus KL if in-reward). Shape: (bs, T).
        values: critic values at response positions. Shape: (bs, T).
        response_mask: Shape: (bs, T).
        gamma, lam: GAE discount and lambda (``algorithm.gamma`` / ``algorithm.lam``).
        signal: token signal of the mask (default: ``token_level_rewards``). Shape: (bs, T).
        index: verl's ``uid`` per row (for ``group_mean``). Shape: (bs,).
        options: :class:`ASROptions`.

    Returns:
        :class:`ASRAdvantages`. Advantages are whitened over all response tokens first (verl's GAE
        does that), then masked, so kept tokens keep the batch's advantage scale.
    """
    mask = response_mask.bool()
    # verl's GAE does arithmetic on the mask (`1 - mask`), which a bool tensor does not support.
    advantages, returns = compute_gae_advantage_return(
        token_level_rewards=token_level_rewards, values=values,
        response_mask=mask.to(token_level_rewards.dtype), gamma=gamma, lam=lam,
    )
    options = ASROptions() if options is None else options
    keep, fallback, seq_sign, res = asr_keep_mask(token_level_rewards if signal is None else signal, mask,
                                                  options=options, index=index, result=True)
    n_tokens, n_kept = int(mask.sum()), int(keep.sum())
    scale = n_tokens / n_kept if options.rescale and n_kept > 0 else 1.0
    advantages = torch.where(keep, advantages * scale, torch.zeros_like(advantages))
    return ASRAdvantages(advantages, returns, keep, fallback, seq_sign, scale, res.delta)


def _same_tensor(a, b) -> bool:
    return a is b or (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                      and a.device == b.device and a.data_ptr() == b.data_ptr())


def _caller_batch(anchor: torch.Tensor, max_depth: int = 6):
    """The ``DataProto.batch`` that verl's ``compute_advantage(data, ...)`` is working on, or None.

    verl 0.9.1 calls registered estimators with only ``token_level_rewards, response_mask, config,
    [index], [reward_baselines]`` — not ``values`` (only the hard-wired "gae" branch gets the critic).
    The caller's ``data`` is found by walking up the stack and accepted only if its
    ``token_level_rewards`` *is* the tensor we were given, so an unrelated ``data`` can never be used.
    """
    frame = sys._getframe(2)
    try:
        for _ in range(max_depth):
            if frame is None:
                return None
            data = frame.f_locals.get("data")
            if isinstance(data, DataProto) and data.batch is not None and "token_level_rewards" in data.batch.keys():
                if _same_tensor(data.batch["token_level_rewards"], anchor):
                    return data.batch
            frame = frame.f_back
        return None
    finally:
        del frame  # frames reference their locals: break the cycle promptly


def compute_segrl_asr_gae_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, config=None,
                                    index=None, values: torch.Tensor | None = None,
                                    token_level_scores: torch.Tensor | None = None, **kwargs):
    """verl advantage estimator ``segrl_asr_gae``: GAE + the ASR mask (arXiv 2411.00809).

    Registered with ``register_adv_est``; select it with ``algorithm.adv_estimator=segrl_asr_gae``
    (needs ``critic.enable=True``: verl only enables the critic by itself for ``gae``). Options come
    from ``algorithm.segrl_asr`` (:class:`ASROptions`); ``algorithm.gamma`` / ``algorithm.lam`` drive GAE.

    ``values`` (and ``token_level_scores``) are taken from the keyword arguments when given, else
    from the ``DataProto`` verl's ``compute_advantage`` is processing (see :func:`_caller_batch`).

    Shapes: all tensors (bs, response_length). Returns ``(advantages, returns)``; see
    :func:`asr_gae_advantages` and the module docstring for how the mask and the kept-token
    denominator reach the ``segrl_asr`` policy loss.
    """
    options = ASROptions.from_config(config)
    batch = None
    if values is None or (options.signal == "scores" and token_level_scores is None):
        batch = _caller_batch(token_level_rewards)
    if values is None:
        if batch is None or "values" not in batch.keys():
            raise ValueError(
                f"adv_estimator '{ADV_ESTIMATOR_NAME}' needs critic values: set critic.enable=True (verl enables the "
                "critic on its own only for 'gae'), or pass `values=` when calling it directly"
            )
        values = batch["values"]
    signal = token_level_rewards
    if options.signal == "scores":
        if token_level_scores is None and batch is not None and "token_level_scores" in batch.keys():
            token_level_scores = batch["token_level_scores"]
        if token_level_scores is not None:
            signal = token_level_scores
    gamma = float(_config_get(config, "gamma", 1.0))
    lam = float(_config_get(config, "lam", 1.0))
    out = asr_gae_advantages(token_level_rewards, values, response_mask, gamma=gamma, lam=lam, signal=signal,
                             index=index, options=options)
    mask = response_mask.bool()
    logger.info("segrl_asr_gae: asr/delta %.4g, asr/kept_token_fraction %.3f of %d response tokens, "
                "%d fallback rows, rescale %.3f", out.delta, float(out.keep.sum()) / max(int(mask.sum()), 1),
                int(mask.sum()), int(out.fallback.sum()), out.scale)
    return out.advantages, out.returns


# ============================================================================ policy loss


def compute_policy_loss_segrl_asr(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                                  response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config=None,
                                  rollout_is_weights: torch.Tensor | None = None):
    """verl policy loss ``segrl_asr``: PPO clipped surrogate over the ASR-kept tokens.

    ``kept = response_mask & (advantages != 0)``: the ``segrl_asr_gae`` estimator writes dropped
    tokens as exactly 0. (A kept token whose advantage happens to be exactly 0 contributes 0 to the
    loss either way; it only leaves the metrics.) The per-token surrogate is verl's own
    ``compute_policy_loss_vanilla`` (dual-clip, ``clip_ratio_low/high``, rollout IS weights), summed
    over kept tokens and divided by verl's global token count ``batch_num_tokens`` times ``dp_size``
    exactly as verl's token-mean does; with the estimator's ``N / K`` rescale that is the mean over
    kept tokens across the DP group. Dropped tokens get exactly zero gradient: their advantage is 0
    and verl's masked sum selects them out with ``torch.where`` (log-ratios are clamped to +-20, so
    the ratio there stays finite).

    Only ``loss_agg_mode="token-mean"`` (verl's default) is supported: the rescale is calibrated for
    a token denominator, and the seq-mean modes would divide twice.

    Shapes: all tensors (bs, response_length). Returns ``(loss, metrics)``; metrics add
    ``actor/segrl_asr_kept_fraction`` (clip fraction and ppo_kl are over kept tokens).
    """
    if loss_agg_mode != "token-mean":
        raise ValueError(f"policy loss '{POLICY_LOSS_NAME}' supports loss_agg_mode='token-mean' only, got "
                         f"{loss_agg_mode!r}")
    mask = response_mask.bool()
    keep = mask & (advantages != 0)
    info = dict(getattr(config, "global_batch_info", None) or {})
    n_tokens = info.get("batch_num_tokens")
    if n_tokens is None:
        # Outside verl's engines (direct calls, one process): count what the engine would count,
        # every response token; the estimator's rescale assumes that denominator.
        if int(info.get("dp_size") or 1) > 1:
            raise ValueError("(global) batch_num_tokens is required when dp_size > 1")
        n_tokens = mask.sum()
    # token-sum returns sum_kept(loss) * dp_size (verl's DP scaling); dividing by the global count
    # reproduces token-mean with the engine's denominator.
    token_sum, metrics = compute_policy_loss_vanilla(
        old_log_prob=old_log_prob, log_prob=log_prob, advantages=advantages, response_mask=keep,
        loss_agg_mode="token-sum", config=config, rollout_is_weights=rollout_is_weights,
    )
    loss = token_sum / n_tokens
    metrics = dict(metrics)
    metrics["actor/segrl_asr_kept_fraction"] = (keep.sum() / mask.sum().clamp(min=1)).item()
    return loss, metrics


# ============================================================================ registration


def _register_once(registry: dict, name: str, obj, register) -> None:
    """Register ``obj`` with verl; on a re-import of this module, replace our own earlier object.

    verl's registries refuse a second, different object under a taken name. That is right for a
    clash with someone else's plugin (we let verl raise), but a reload of this module (``importlib.
    reload``, notebooks) must simply point the name at the new code.
    """
    current = registry.get(name)
    if current is not None and current is not obj and (
        getattr(current, "__module__", None), getattr(current, "__qualname__", None)
    ) == (obj.__module__, obj.__qualname__):
        registry[name] = obj
        return
    register(name)(obj)


def register_all() -> None:
    """Register the estimator, the policy loss and the reward manager with verl (idempotent)."""
    from verl.experimental.reward_loop.reward_manager import registry as loop_registry

    _register_once(ADV_ESTIMATOR_REGISTRY, ADV_ESTIMATOR_NAME, compute_segrl_asr_gae_advantage, register_adv_est)
    _register_once(POLICY_LOSS_REGISTRY, POLICY_LOSS_NAME, compute_policy_loss_segrl_asr, register_policy_loss)
    _register_once(loop_registry.REWARD_MANAGER, REWARD_MANAGER_NAME, SegmentDenseRewardManager,
                   loop_registry.register)


register_all()
