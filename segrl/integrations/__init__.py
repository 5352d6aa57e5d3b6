"""Adapters from segrl to other RL frameworks.

Each adapter lives in its own module and imports its framework there, so ``import segrl`` (and
``import segrl.integrations``) never needs any of them installed:

- :mod:`segrl.integrations.verl` — verl 0.9.1 plugin (``pip install "segrl[verl]"``): a dense
  segment-reward manager, the ``segrl_asr_gae`` advantage estimator and the ``segrl_asr`` policy
  loss. Load it in every verl process with ``VERL_USE_EXTERNAL_MODULES=segrl.integrations.verl``.
"""
