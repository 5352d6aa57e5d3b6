"""Registration of the plugin's pieces in verl's own registries.

:func:`register_all` runs when :mod:`segrl.integrations.verl` is imported, which verl does in every
process named by ``VERL_USE_EXTERNAL_MODULES=segrl.integrations.verl``.
"""

from __future__ import annotations

from verl.trainer.ppo.core_algos import (
    ADV_ESTIMATOR_REGISTRY,
    POLICY_LOSS_REGISTRY,
    register_adv_est,
    register_policy_loss,
)

from segrl.integrations.verl import advantage, policy_loss, reward_managers
from segrl.integrations.verl.common import ADV_ESTIMATOR_NAME, POLICY_LOSS_NAME, REWARD_MANAGER_NAME

__all__ = ["register_all"]


def _register_once(registry: dict, name: str, obj, register) -> None:
    """Register ``obj`` with verl; on a re-import of its module, replace our own earlier object.

    verl's registries refuse a second, different object under a taken name. That is right for a
    clash with someone else's plugin (we let verl raise), but a reload of the plugin (``importlib.
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
    """Register the estimator, the policy loss and the reward manager with verl (idempotent).

    The objects are read from their modules at call time, so after ``importlib.reload`` of a module
    (and of the package, which calls this) the names point at the reloaded code.
    """
    from verl.experimental.reward_loop.reward_manager import registry as loop_registry

    _register_once(ADV_ESTIMATOR_REGISTRY, ADV_ESTIMATOR_NAME, advantage.compute_segrl_asr_gae_advantage,
                   register_adv_est)
    _register_once(POLICY_LOSS_REGISTRY, POLICY_LOSS_NAME, policy_loss.compute_policy_loss_segrl_asr,
                   register_policy_loss)
    _register_once(loop_registry.REWARD_MANAGER, REWARD_MANAGER_NAME, reward_managers.SegmentDenseRewardManager,
                   loop_registry.register)

