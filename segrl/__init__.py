"""segrl: segment-level rewards for RLHF.

- :mod:`segrl.ops` — the maths as pure torch functions (no transformers import).
- :mod:`segrl.models` — tiny offline models and tokenizers for tests, benchmarks and the demo.
- :mod:`segrl.viz` — token heat-maps (HTML and PNG).
"""

__version__ = "0.1.0"
