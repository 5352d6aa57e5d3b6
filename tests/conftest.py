"""Shared fixtures. Tests run fully offline: the Hub is switched off before transformers is imported
(a stray Hub id then fails at once instead of after ~50 s of retries)."""

from __future__ import annotations

import os

for _key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_key] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# One intra-op thread per test process: `make test` runs two xdist workers on two cores, and two
# spin-waiting torch threads per worker made the tiny-model tests many times slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The built-in tiny byte-level BPE tokenizer (trained once per session, < 1 s)."""
    from segrl.models import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_pair_dir(tmp_path_factory):
    """``make_tiny_pair`` with default arguments, built once per session (a few seconds).

    Defaults on purpose: ``segrl demo`` with default options reuses a copy of this directory.
    """
    from segrl.models import make_tiny_pair

    return make_tiny_pair(tmp_path_factory.mktemp("tiny_pair"))


@pytest.fixture(scope="session")
def tiny_pair(tiny_pair_dir):
    """``(tokenizer, sft, policy)`` loaded from :func:`tiny_pair_dir`. Treat as read-only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_pair_dir.sft)
    sft = AutoModelForCausalLM.from_pretrained(tiny_pair_dir.sft).eval()
    policy = AutoModelForCausalLM.from_pretrained(tiny_pair_dir.policy).eval()
    return tokenizer, sft, policy


@pytest.fixture(scope="session")
def tiny_prefs():
    from segrl.models import load_tiny_prefs

    return load_tiny_prefs()
