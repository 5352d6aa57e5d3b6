"""Options of the ``segrl_asr_gae`` estimator (``algorithm.segrl_asr``): segrl's one ASR options class plus verl's own.

:class:`ASROptions` is :class:`segrl.asr_options.ASRArguments` (the ASR mask fields, defaults and
checks every segrl trainer shares) with three verl-specific fields, read from verl's config by
:meth:`ASROptions.from_config`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from segrl.asr_options import ASRArguments  # the ASR options: one class for every trainer
from segrl.integrations.verl.common import ADV_ESTIMATOR_NAME, CONFIG_KEY, config_get

logger = logging.getLogger(__name__)

__all__ = ["ASROptions"]

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
            kept-token count (see :mod:`segrl.integrations.verl.advantage`); ``False`` keeps verl's
            all-token denominator.
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
        node = config_get(config, CONFIG_KEY) if config is not None else None
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
