"""The tiny offline tokenizer, models, corpus and preference data."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segrl.models import (
    SPECIAL_TOKENS,
    build_tiny_causal_lm,
    build_tiny_tokenizer,
    load_tiny_corpus,
    load_tiny_prefs,
    make_arithmetic_prefs,
    make_tiny_corpus,
    make_tiny_model_dir,
    make_tiny_pair,
    step_correctness,
)

# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def test_shipped_files_match_generators():
    # The package data must be exactly what the generators produce, or a silent edit of one
    # would change every downstream number.
    assert load_tiny_corpus() == make_tiny_corpus()
    assert load_tiny_prefs() == make_arithmetic_prefs()


def test_corpus_size_and_content():
    text = load_tiny_corpus()
    assert 50_000 <= len(text.encode()) <= 150_000
    assert "The morning was cold and clear." in text  # prose
    assert "Q: " in text and "\nA: " in text  # Q/A
    assert re.search(r"^\d(\+\d)+=\d\+\d=\d+;.*;=\d+$", text, re.M)  # running sums
    assert not any(tok in text for tok in SPECIAL_TOKENS)  # specials must not be learnt as text


def test_generators_are_pure_functions_of_seed():
    assert make_tiny_corpus(0) == make_tiny_corpus(0)
    assert make_tiny_corpus(0) != make_tiny_corpus(1)
    assert make_arithmetic_prefs(20, seed=3) == make_arithmetic_prefs(20, seed=3)
    assert make_arithmetic_prefs(20, seed=3) != make_arithmetic_prefs(20, seed=4)


@pytest.mark.parametrize(
    ("prompt", "response", "expected"),
    [
        ("7+3+6=", "7+3=10;10+6=16;=16", [True, True, True]),
        ("7+3+6=", "7+3=11;11+6=17;=17", [False, True, False]),
        ("7+3+6=", "7+3=10;10+6=16;=15", [True, True, False]),
        ("2+5=", "2+5=6;=7", [False, True]),
        ("2+5=", "two;=7", [False, True]),
    ],
)
def test_step_correctness(prompt, response, expected):
    assert step_correctness(prompt, response) == expected


def test_prefs_format_and_conflicts():
    rows = load_tiny_prefs()
    assert 32 <= len(rows) <= 64
    n_conflict = 0
    for r in rows:
        assert set(r) == {"prompt", "chosen", "rejected"}
        assert all(isinstance(v, str) and v for v in r.values())
        assert r["chosen"] != r["rejected"]
        c, j = step_correctness(r["prompt"], r["chosen"]), step_correctness(r["prompt"], r["rejected"])
        # Sequence-level preference is by final answer: chosen right, rejected wrong, always.
        assert c[-1] and not j[-1]
        assert sum(not ok for ok in c[:-1]) <= 1
        if not all(c):
            n_conflict += 1
            # The credit-assignment conflict: a wrong step in chosen, only correct steps in rejected.
            assert all(j[:-1])
        else:
            assert not all(j[:-1])  # clean pair: rejected has a wrong step
    assert 0.15 * len(rows) <= n_conflict <= 0.35 * len(rows)


def test_prefs_arguments_checked():
    with pytest.raises(ValueError, match="n"):
        make_arithmetic_prefs(0)
    with pytest.raises(ValueError, match="conflict_fraction"):
        make_arithmetic_prefs(4, conflict_fraction=1.5)
    assert all(not all(step_correctness(r["prompt"], r["chosen"])) for r in make_arithmetic_prefs(8, conflict_fraction=1.0))


def test_data_helpers_do_not_import_transformers():
    code = "import sys, segrl.models as m; m.load_tiny_prefs(); m.load_tiny_corpus(); print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------


def test_tokenizer_basics(tiny_tokenizer):
    tok = tiny_tokenizer
    assert 512 <= len(tok) <= 1024
    assert tok.convert_ids_to_tokens(list(range(len(SPECIAL_TOKENS)))) == SPECIAL_TOKENS
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<|pad|>", "<|bos|>", "<|eos|>")
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}) == 3
    # Encoding adds no BOS / EOS (like Qwen2); the caller decides.
    ids = tok("The cat sat.")["input_ids"]
    assert tok.bos_token_id not in ids and tok.eos_token_id not in ids
    # Trained, not just bytes: common words are single tokens; digits are split one by one (Qwen2 style).
    assert len(tok("The")["input_ids"]) == 1 and len(tok(" morning")["input_ids"]) == 1
    assert tok.convert_ids_to_tokens(tok("10+6=16")["input_ids"]) == ["1", "0", "+", "6", "=", "1", "6"]


@pytest.mark.parametrize("text", ["7+3+6=7+3=10;10+6=16;=16", "Hello,  world!\n\tTabs", "naïve café — 東京 🙂", ""])
def test_tokenizer_round_trip(tiny_tokenizer, text):
    ids = tiny_tokenizer(text)["input_ids"]
    assert tiny_tokenizer.decode(ids) == text


def test_tokenizer_special_tokens_in_text(tiny_tokenizer):
    ids = tiny_tokenizer("1+2=3<|eos|>")["input_ids"]
    assert ids[-1] == tiny_tokenizer.eos_token_id and ids.count(tiny_tokenizer.eos_token_id) == 1


def test_tokenizer_chat_template(tiny_tokenizer):
    msgs = [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "2+2=4;=4"}]
    text = tiny_tokenizer.apply_chat_template(msgs, tokenize=False)
    assert text == "<|im_start|>user\n2+2=<|im_end|>\n<|im_start|>assistant\n2+2=4;=4<|im_end|>\n"
    gen = tiny_tokenizer.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert gen.endswith("<|im_start|>assistant\n")
    ids = tiny_tokenizer(text)["input_ids"]
    assert ids[0] == tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")


def test_tokenizer_deterministic_across_processes(tiny_tokenizer):
    # Training must not depend on hash seeds or thread scheduling: a fresh process (other
    # PYTHONHASHSEED, tokenizers parallelism on) gives the same vocabulary and merges.
    code = ("from segrl.models import build_tiny_tokenizer; import sys; "
            "sys.stdout.write(build_tiny_tokenizer().backend_tokenizer.to_str())")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "TOKENIZERS_PARALLELISM": "true"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=Path(__file__).resolve().parent.parent)
    assert json.loads(out.stdout) == json.loads(tiny_tokenizer.backend_tokenizer.to_str())
    assert build_tiny_tokenizer().get_vocab() == tiny_tokenizer.get_vocab()


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "cls_name"), [("llama", "LlamaForCausalLM"), ("qwen2", "Qwen2ForCausalLM")])
def test_build_tiny_causal_lm(tiny_tokenizer, arch, cls_name):
    model = build_tiny_causal_lm(tiny_tokenizer, arch=arch)
    cfg = model.config
    assert type(model).__name__ == cls_name
    assert cfg.vocab_size == len(tiny_tokenizer)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (64, 2, 4)
    assert cfg.max_position_embeddings == 1024
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (
        tiny_tokenizer.pad_token_id, tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    ids = torch.tensor([tiny_tokenizer("1+2=3")["input_ids"]])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tiny_tokenizer))


def test_build_tiny_causal_lm_seeded_and_rng_neutral(tiny_tokenizer):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = build_tiny_causal_lm(tiny_tokenizer, seed=7)
    assert torch.equal(torch.rand(3), expected_next)  # caller's RNG stream untouched
    b = build_tiny_causal_lm(tiny_tokenizer, seed=7)
    c = build_tiny_causal_lm(tiny_tokenizer, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_build_tiny_causal_lm_overrides_and_errors(tiny_tokenizer):
    model = build_tiny_causal_lm(tiny_tokenizer, arch="qwen2", hidden_size=32, num_layers=1, num_heads=2,
                                 num_key_value_heads=1)
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.num_key_value_heads) == (32, 1, 1)
    with pytest.raises(ValueError, match="arch"):
        build_tiny_causal_lm(tiny_tokenizer, arch="gpt5")
    with pytest.raises(ValueError, match="num_heads"):
        build_tiny_causal_lm(tiny_tokenizer, hidden_size=30, num_heads=4)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_make_tiny_model_dir_round_trip(tmp_path, tiny_tokenizer, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = make_tiny_model_dir(tmp_path / arch, arch=arch, seed=3, tokenizer=tiny_tokenizer)
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    text = "Q: What is 2 plus 3?\nA: 5."
    # AutoTokenizer builds Qwen2Tokenizer for a qwen2 directory: it must still give the same ids.
    for sample in (text, "7+3+6=7+3=10;10+6=16;=16<|eos|>", "naïve café — 東京 🙂\n\n  x"):
        assert tok(sample)["input_ids"] == tiny_tokenizer(sample)["input_ids"]
    assert len(tok) == len(tiny_tokenizer) == model.config.vocab_size
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (
        tiny_tokenizer.pad_token_id, tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<|im_start|>user\nhi<|im_end|>\n"
    ids = torch.tensor([tok(text)["input_ids"]])
    fresh = build_tiny_causal_lm(tiny_tokenizer, arch=arch, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, fresh(input_ids=ids).logits)
    out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] <= ids.shape[1] + 3


# --------------------------------------------------------------------------------------------------
# SFT / policy pair
# --------------------------------------------------------------------------------------------------


def _mean_chosen_nll(model, tokenizer, prefs):
    from segrl.rewards import response_token_logprobs

    lp, batch = response_token_logprobs(model, tokenizer, [p["prompt"] for p in prefs], [p["chosen"] for p in prefs])
    return float(-lp.sum() / batch.mask.sum())


def test_pair_layout(tiny_pair_dir):
    for d in (tiny_pair_dir.sft, tiny_pair_dir.policy):
        assert (d / "config.json").is_file() and (d / "model.safetensors").is_file()
    assert tiny_pair_dir.ref == tiny_pair_dir.sft
    # One tokenizer for both: the implicit reward compares them token by token.
    assert (tiny_pair_dir.sft / "tokenizer.json").read_bytes() == (tiny_pair_dir.policy / "tokenizer.json").read_bytes()


def test_sft_model_learned_something(tiny_pair, tiny_tokenizer, tiny_prefs):
    tokenizer, sft, _ = tiny_pair
    random_model = build_tiny_causal_lm(tiny_tokenizer)
    nll_sft, nll_random = _mean_chosen_nll(sft, tokenizer, tiny_prefs), _mean_chosen_nll(random_model, tokenizer, tiny_prefs)
    assert nll_random > 0.9 * torch.log(torch.tensor(float(len(tokenizer)))).item()  # ~uniform
    assert nll_sft < 0.5 * nll_random


def test_policy_implicit_reward_is_informative(tiny_pair, tiny_prefs):
    from segrl.rewards import implicit_token_rewards

    tokenizer, sft, policy = tiny_pair
    prompts = [p["prompt"] for p in tiny_prefs]
    r_c, b_c = implicit_token_rewards(policy, sft, tokenizer, prompts, [p["chosen"] for p in tiny_prefs])
    r_r, b_r = implicit_token_rewards(policy, sft, tokenizer, prompts, [p["rejected"] for p in tiny_prefs])
    seq_c, seq_r = r_c.sum(-1), r_r.sum(-1)
    assert (seq_c > seq_r).float().mean() >= 0.75
    # Token level: chosen tokens go up on average, rejected tokens down.
    assert r_c[b_c.mask].mean() > 0 > r_r[b_r.mask].mean()


def test_make_tiny_pair_reuse_and_rebuild(tmp_path):
    kw = dict(sft_steps=3, policy_steps=2)
    pair = make_tiny_pair(tmp_path, **kw)
    weights = pair.policy / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    before = weights.read_bytes()
    # Same arguments: reused, nothing rewritten.
    assert make_tiny_pair(tmp_path, **kw) == pair
    assert weights.stat().st_mtime_ns == stamp
    # Other arguments (or overwrite=True): rebuilt.
    make_tiny_pair(tmp_path, seed=1, **kw)
    assert weights.read_bytes() != before
    meta = json.loads((tmp_path / "segrl_tiny_pair.json").read_text())
    assert meta["seed"] == 1
    # An interrupted build (marker missing) is never reused.
    (tmp_path / "segrl_tiny_pair.json").unlink()
    calls = []
    make_tiny_pair(tmp_path, seed=1, progress=lambda *a: calls.append(a), **kw)
    assert ("sft", 3, 3) in calls and ("dpo", 2, 2) in calls


def test_make_tiny_pair_deterministic(tmp_path):
    kw = dict(sft_steps=4, policy_steps=2)
    a, b = make_tiny_pair(tmp_path / "a", **kw), make_tiny_pair(tmp_path / "b", **kw)
    assert (a.sft / "model.safetensors").read_bytes() == (b.sft / "model.safetensors").read_bytes()
    assert (a.policy / "model.safetensors").read_bytes() == (b.policy / "model.safetensors").read_bytes()


def test_make_tiny_cli(tmp_path, tiny_tokenizer):
    from segrl.cli import main

    assert main(["make-tiny", "--output_dir", str(tmp_path / "m"), "--arch", "qwen2", "--seed", "2"]) == 0
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    ref = build_tiny_causal_lm(tiny_tokenizer, arch="qwen2", seed=2)
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in model.state_dict().items())
    assert main(["make-tiny", "--output_dir", str(tmp_path / "bad"), "--arch", "nope"]) == 2


def test_make_tiny_pair_qwen2(tmp_path, tiny_prefs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from segrl.rewards import implicit_token_rewards

    pair = make_tiny_pair(tmp_path, arch="qwen2", sft_steps=2, policy_steps=1)
    tok = AutoTokenizer.from_pretrained(pair.policy)  # a Qwen2Tokenizer: same ids, same size
    policy = AutoModelForCausalLM.from_pretrained(pair.policy)
    assert type(policy).__name__ == "Qwen2ForCausalLM" and len(tok) == policy.config.vocab_size
    prompts = [p["prompt"] for p in tiny_prefs[:4]]
    rewards, batch = implicit_token_rewards(pair.policy, pair.sft, tok, prompts, [p["chosen"] for p in tiny_prefs[:4]])
    assert rewards[batch.mask].abs().sum() > 0


def test_make_tiny_pair_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="sft_steps"):
        make_tiny_pair(tmp_path, sft_steps=-1)
    with pytest.raises(ValueError, match="arch"):
        make_tiny_pair(tmp_path, arch="gpt2")
    assert not any(tmp_path.iterdir())
