"""Tests of the verl plugin (segrl.integrations.verl). They need verl 0.9.1, which pins
transformers<5.11, so they run in the separate `.venv-verl` (scripts/make_verl_venv.sh):

    .venv-verl/bin/python -m pytest tests/verl

In an environment without verl (the main `.venv`) nothing here is collected.
"""

from __future__ import annotations

import importlib.util

import pytest

# Without verl installed, `verl` would still resolve to THIS directory as a namespace package (pytest
# puts tests/ on sys.path), so require a real package: one with an __init__ file (spec.origin).
_spec = importlib.util.find_spec("verl")
if _spec is None or _spec.origin is None:
    collect_ignore_glob = ["test_*.py"]


def pytest_configure(config):
    # verl announces every optional engine it cannot import (torchtitan, megatron, ...) on CPU boxes.
    config.addinivalue_line("filterwarnings", "ignore:.*engine is not available:UserWarning")


@pytest.fixture(scope="session")
def segment_rm_dir(tmp_path_factory):
    """A tiny dense segment RM (threshold 2.0, random weights, a made-up fitted normaliser)."""
    from transformers import AutoModelForSequenceClassification

    from segrl.models import build_tiny_causal_lm, build_tiny_tokenizer, make_tiny_model_dir
    from segrl.ops import LocationNormalizerCoef
    from segrl.rm import SegmentRewardModel

    root = tmp_path_factory.mktemp("verl_rm")
    tok = build_tiny_tokenizer()
    init = make_tiny_model_dir(root / "init", tokenizer=tok, seed=0)
    ref = build_tiny_causal_lm(tok, seed=1, initializer_range=0.5)  # spread-out entropies: real segments
    ref.save_pretrained(root / "ref")
    tok.save_pretrained(root / "ref")
    model = AutoModelForSequenceClassification.from_pretrained(init, num_labels=1)
    rm = SegmentRewardModel(model, tok, threshold=2.0, reference_model=str(root / "ref"),
                            normalizer=LocationNormalizerCoef(a_mu=0.1, b_mu=0.2, a_sigma=0.0, b_sigma=1.5))
    rm.save_pretrained(root / "rm")
    return root / "rm", tok
