"""Tiny offline models, tokenizer and data for tests, benchmarks and the demo.

Everything is built locally (no Hub access). Attributes are imported lazily so that the data
helpers (:func:`load_tiny_prefs`, ...) do not import transformers.
"""

from __future__ import annotations

from segrl._lazy import lazy_exports

_EXPORTS = {
    "build_tiny_tokenizer": "segrl.models.tiny",
    "build_tiny_causal_lm": "segrl.models.tiny",
    "make_tiny_model_dir": "segrl.models.tiny",
    "make_tiny_pair": "segrl.models.tiny",
    "TinyPair": "segrl.models.tiny",
    "SPECIAL_TOKENS": "segrl.models.tiny",
    "CHATML_TEMPLATE": "segrl.models.tiny",
    "load_tiny_corpus": "segrl.models.tiny_data",
    "load_tiny_prefs": "segrl.models.tiny_data",
    "make_arithmetic_prefs": "segrl.models.tiny_data",
    "make_tiny_corpus": "segrl.models.tiny_data",
    "step_correctness": "segrl.models.tiny_data",
}

__getattr__, __dir__, __all__ = lazy_exports("segrl.models", _EXPORTS)
