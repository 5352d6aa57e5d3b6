"""Procedurally generated, seeded tasks with known per-step correctness.

- :mod:`segrl.tasks.arith` — multi-step addition with running sums and systematic carry errors:
  SFT data, conflict preference pairs, oracle token rewards, held-out prompts and metrics.
"""

from segrl.tasks import arith
from segrl.tasks.arith import *  # noqa: F401,F403 - the public names, listed once in arith.__all__

__all__ = list(arith.__all__)
