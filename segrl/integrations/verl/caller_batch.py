"""Find the verl batch an advantage estimator was called for, by looking at its caller's frame.

Why a stack walk: the ``segrl_asr_gae`` estimator needs the critic's ``values`` (and the reward
model's ``token_level_scores``), but verl 0.9.1 gives a registered estimator only
``token_level_rewards, response_mask, config, [index], [reward_baselines]``
(``verl/trainer/ppo/ray_trainer.py::compute_advantage``). Only the hard-wired ``"gae"`` branch
receives ``values``; the whole ``batch`` is passed to the ``"gdpo"`` estimator alone, by name; the
v1 trainer (``trainer/ppo/v1/utils.py::compute_advantage_for_multi_trajectories``) delegates to the
same ``compute_advantage``; and ``config`` is the static ``algorithm`` config. So the batch is read
from ``compute_advantage``'s local ``data``, and only accepted if its ``token_level_rewards`` *is*
the tensor the estimator received: an unrelated ``data`` further up can never be used.

This is the only frame inspection in segrl. When verl passes the batch (or ``values``) to
registered estimators, call the estimator with ``values=`` / ``token_level_scores=`` and delete
this module.
"""

from __future__ import annotations

import sys

import torch
from verl import DataProto

__all__ = ["caller_batch"]


def _same_tensor(a, b) -> bool:
    return a is b or (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                      and a.device == b.device and a.data_ptr() == b.data_ptr())


def caller_batch(anchor: torch.Tensor, max_depth: int = 6):
    """The ``DataProto.batch`` that verl's ``compute_advantage(data, ...)`` is working on, or None.

    Call it from the estimator itself: the search starts at the estimator's caller (two frames up
    from here) and looks at up to ``max_depth`` frames for a local named ``data`` that is a
    ``DataProto`` whose ``batch["token_level_rewards"]`` is ``anchor`` (the same storage, shape and
    device). Returns that ``TensorDict``, or ``None`` when no such frame exists (a direct call, a
    trainer that names its batch differently); the estimator then raises an error saying what to
    pass or enable.

    Args:
        anchor: the ``token_level_rewards`` the estimator was given. Shape: (bs, T).
        max_depth: frames to look at, starting from the estimator's caller.
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
