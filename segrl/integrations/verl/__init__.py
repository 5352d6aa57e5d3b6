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

One concern per module; every public name is re-exported here, so ``from segrl.integrations.verl
import X`` and ``pkg://segrl.integrations.verl`` work as before:

- :mod:`~segrl.integrations.verl.rewards`: token-reward sources (the segment-RM adapter) and the
  dense ``rm_scores`` assembly;
- :mod:`~segrl.integrations.verl.reward_managers`: the ``segrl_dense`` reward-loop manager (and why
  it needs verl's colocated reward-model path);
- :mod:`~segrl.integrations.verl.options`: :class:`ASROptions` (``algorithm.segrl_asr``);
- :mod:`~segrl.integrations.verl.advantage`: the ``segrl_asr_gae`` estimator (and how the ASR mask
  and the kept-token denominator reach the actor);
- :mod:`~segrl.integrations.verl.caller_batch`: how the estimator finds the critic values verl does
  not pass it (the only stack inspection, isolated);
- :mod:`~segrl.integrations.verl.policy_loss`: the ``segrl_asr`` policy loss;
- :mod:`~segrl.integrations.verl.registration`: :func:`register_all`, run on import;
- :mod:`~segrl.integrations.verl.common`: the registered names and config access.
"""

# verl is imported by the submodules, at module level, on purpose: this package *is* the plugin and
# is only ever imported by verl (VERL_USE_EXTERNAL_MODULES) or by code that already uses verl.
# Nothing else in segrl imports it, so `import segrl` never needs verl.

from __future__ import annotations

import logging
import os

logging.getLogger(__name__).setLevel(os.getenv("SEGRL_LOGGING_LEVEL", os.getenv("VERL_LOGGING_LEVEL", "WARN")))

from segrl.integrations.verl.advantage import (  # noqa: E402
    ASRAdvantages,
    asr_gae_advantages,
    asr_keep_mask,
    compute_segrl_asr_gae_advantage,
)
from segrl.integrations.verl.common import (  # noqa: E402
    ADV_ESTIMATOR_NAME,
    CONFIG_KEY,
    POLICY_LOSS_NAME,
    REWARD_MANAGER_NAME,
)
from segrl.integrations.verl.options import ASROptions  # noqa: E402
from segrl.integrations.verl.policy_loss import compute_policy_loss_segrl_asr  # noqa: E402
from segrl.integrations.verl.registration import register_all  # noqa: E402
from segrl.integrations.verl.reward_managers import SegmentDenseRewardManager  # noqa: E402
from segrl.integrations.verl.rewards import (  # noqa: E402
    SegmentRMTokenRewards,
    TokenRewardSource,
    dense_scores_tensor,
    segment_rm_token_rewards,
)

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
    "register_all",
    "segment_rm_token_rewards",
]

register_all()
