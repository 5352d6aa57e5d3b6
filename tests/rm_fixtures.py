"""Session fixtures for the segment-RM tests (imported by tests/test_rm_*.py).

Models are tiny and random, built once per session in well under a second each:

- ``init``: the RM's init model (a tiny Llama causal LM; loaded as a 1-label seq-cls model).
- ``ref``: the frozen reference. Initialised with ``initializer_range=0.5`` so its next-token
  entropies spread over roughly 0.3-4 nats (a default random init is ~uniform, 6.6 nats everywhere,
  which would make every threshold trivial); ``THRESHOLD = 2.0`` then cuts real segments.
- ``other_vocab``: a model with a different tokenizer, for the mismatch errors.
"""

from __future__ import annotations

import json
import os
import random
from types import SimpleNamespace

for _key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_key, "1")

import pytest  # noqa: E402

THRESHOLD = 2.0
TEST_ARGS = dict(bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no",
                 disable_tqdm=True, logging_steps=1, seed=0, dataloader_num_workers=0)


@pytest.fixture(scope="session")
def rm_env(tmp_path_factory):
    from segrl.models import build_tiny_causal_lm, build_tiny_tokenizer, make_tiny_model_dir

    root = tmp_path_factory.mktemp("rm_models")
    tok = build_tiny_tokenizer()
    init_dir = make_tiny_model_dir(root / "init", tokenizer=tok, seed=0)
    ref_dir = root / "ref"
    ref = build_tiny_causal_lm(tok, seed=1, initializer_range=0.5)
    ref.save_pretrained(ref_dir)
    tok.save_pretrained(ref_dir)
    other_tok = build_tiny_tokenizer(vocab_size=600)
    other_dir = make_tiny_model_dir(root / "other_vocab", tokenizer=other_tok, seed=2)
    return SimpleNamespace(root=root, tokenizer=tok, init_dir=str(init_dir), ref_dir=str(ref_dir),
                           other_dir=str(other_dir))


@pytest.fixture(scope="module")
def seq_cls(rm_env):
    """The init model as a 1-label sequence-classification RM backbone, with a non-trivial head
    (the default init, std 0.02, makes every value ~0). One per test module."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(rm_env.init_dir, num_labels=1).eval()
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)
    return model


def seg_config(output_dir, threshold=THRESHOLD, **kwargs):
    from segrl.rm import SegmentRewardConfig

    args = {**TEST_ARGS, "per_device_train_batch_size": 4, "max_steps": 2, "learning_rate": 1e-3, **kwargs}
    return SegmentRewardConfig(output_dir=str(output_dir), segment_threshold=threshold, **args)


def tiny_rows(n: int = 8):
    """The first ``n`` built-in arithmetic preference pairs (standard format)."""
    from segrl.models import load_tiny_prefs

    return [dict(r) for r in load_tiny_prefs()[:n]]


def thanks_prefs(n: int, seed: int):
    """Synthetic pairs: the same description, chosen ends "thank you", rejected "sorry".

    Learnable from the tokens alone; which words differ is random per pair, so a model must read
    the ending rather than memorise pairs.
    """
    rng = random.Random(seed)
    topics = ["the river", "a small house", "the old tree", "my friend", "the red car", "a quiet town",
              "the sea", "our garden", "the hill", "a long road"]
    adjs = ["big", "calm", "warm", "bright", "slow", "green", "cold", "soft"]
    rows = []
    for _ in range(n):
        topic = rng.choice(topics)
        base = f"{topic} {rng.choice(['is', 'was', 'looks', 'seems'])} {rng.choice(adjs)} and {rng.choice(adjs)}"
        rows.append({"prompt": f"Tell me about {topic}. ", "chosen": base + ", thank you.",
                     "rejected": base + ", sorry."})
    return rows


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def fitted_rm(rm_env, tmp_path_factory):
    from segrl.cli import main

    tmp = tmp_path_factory.mktemp("ppo_cli")
    data = _jsonl(tmp / "prefs.jsonl", tiny_rows(16))
    out = tmp / "rm"
    args = ["train-rm", "--model_name_or_path", rm_env.init_dir, "--reference_model", rm_env.ref_dir,
            "--dataset_name", data, "--segment_threshold", str(THRESHOLD), "--output_dir", str(out),
            "--per_device_train_batch_size", "4", "--max_steps", "2", "--learning_rate", "1e-3"]
    for key, value in TEST_ARGS.items():
        args += [f"--{key}", str(value)]
    assert main(args) == 0
    assert main(["fit-norm", "--rm_path", str(out), "--dataset", data, "--n_pairs", "8", "--device", "cpu",
                 "--progress", "false", "--plot_path", str(tmp / "fit.png")]) == 0
    return tmp, out, data
