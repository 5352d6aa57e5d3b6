"""Checkpoints: marked complete when written, `last` skips incomplete ones, resuming checks what is there.

A crash in the middle of a save is simulated for real (the optimizer save raises after the model
was written, as a kill -9 there would leave it) and by hand (a ``checkpoint-N`` holding only
``config.json``); files are truncated the way a full disk or a killed copy leaves them.
"""

import copy
import inspect
import json
import os
import random
import shutil

import pytest
import torch
from datasets import Dataset
from safetensors.torch import save_file

from segrl.checkpoints import (
    MARKER,
    CompleteCheckpointsMixin,
    check_checkpoint,
    finalize_checkpoint,
    is_complete,
    last_checkpoint,
    mark_complete,
    resolve_checkpoint,
)


def _truncate(path, keep=0.5):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


def _fake_trainer_checkpoint(path, *, rng="rng_state.pth"):
    """The files ``transformers.Trainer`` writes, with real formats (safetensors, torch.save zips, JSON)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    save_file({"w": torch.arange(64, dtype=torch.float32)}, str(path / "model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.ones(64)}}, "param_groups": []}, path / "optimizer.pt")
    torch.save({"last_epoch": 3}, path / "scheduler.pt")
    torch.save({"cpu": torch.random.get_rng_state()}, path / rng)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    mark_complete(path)
    return path


# --------------------------------------------------------------------------------------------------
# resolving `last`
# --------------------------------------------------------------------------------------------------


def test_last_skips_an_incomplete_checkpoint_with_a_warning_naming_it(tmp_path):
    _fake_trainer_checkpoint(tmp_path / "checkpoint-1")
    _fake_trainer_checkpoint(tmp_path / "checkpoint-2")
    killed = tmp_path / "checkpoint-3"  # what a kill -9 during a TRL save leaves
    killed.mkdir()
    (killed / "config.json").write_text("{}")
    (tmp_path / "checkpoint-4.tmp").mkdir()  # PPO's unfinished temporary directory: never a candidate
    for value in ("last", "latest", "LAST", "true", True):
        with pytest.warns(UserWarning, match="checkpoint-3") as record:
            assert resolve_checkpoint(value, tmp_path) == str(tmp_path / "checkpoint-2")
        assert "incomplete" in str(record[0].message)
    assert not is_complete(killed) and is_complete(tmp_path / "checkpoint-2")


def test_last_orders_by_step_not_by_name(tmp_path):
    for n in (9, 10, 2):
        _fake_trainer_checkpoint(tmp_path / f"checkpoint-{n}")
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")


def test_resolve_no_resume_explicit_paths_and_errors(tmp_path):
    assert resolve_checkpoint(None, tmp_path) is None
    assert resolve_checkpoint(False, tmp_path) is None
    assert resolve_checkpoint("", tmp_path) is None
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        resolve_checkpoint("last", tmp_path / "missing")
    (tmp_path / "checkpoint-5").mkdir()
    with pytest.warns(UserWarning, match="checkpoint-5"), pytest.raises(ValueError, match="no complete checkpoint"):
        resolve_checkpoint("latest", tmp_path)
    with pytest.raises(ValueError, match="no such checkpoint directory: .*nowhere"):
        resolve_checkpoint(str(tmp_path / "nowhere"), tmp_path)
    # an explicit path is returned as given; an arguments object works too
    assert resolve_checkpoint(str(tmp_path / "checkpoint-5"), tmp_path) == str(tmp_path / "checkpoint-5")

    class Args:
        resume_from_checkpoint, output_dir = str(tmp_path / "checkpoint-5"), str(tmp_path)

    assert resolve_checkpoint(Args()) == str(tmp_path / "checkpoint-5")


def test_finalize_marks_then_renames(tmp_path):
    tmp = _fake_trainer_checkpoint(tmp_path / "checkpoint-2.tmp")
    (tmp / MARKER).unlink()
    final = finalize_checkpoint(tmp, tmp_path / "checkpoint-2")
    assert not tmp.exists() and is_complete(final)
    listed = json.loads((final / MARKER).read_text())["files"]
    assert listed["optimizer.pt"] == os.path.getsize(final / "optimizer.pt") and MARKER not in listed


# --------------------------------------------------------------------------------------------------
# checking before resuming
# --------------------------------------------------------------------------------------------------


def test_a_complete_checkpoint_passes(tmp_path):
    check_checkpoint(_fake_trainer_checkpoint(tmp_path / "c"))


@pytest.mark.parametrize("missing, kind", [("optimizer.pt", "optimizer state"), ("scheduler.pt", "scheduler state"),
                                           ("rng_state.pth", "RNG state")])
def test_missing_state_is_an_error_unless_resume_partial(tmp_path, missing, kind):
    path = _fake_trainer_checkpoint(tmp_path / "c")
    (path / missing).unlink()
    with pytest.raises(ValueError, match=rf"lacks the {kind} \({missing}.*--resume_partial true"):
        check_checkpoint(path)
    with pytest.warns(UserWarning, match=f"resume_partial: resuming .* without the {kind}"):
        check_checkpoint(path, resume_partial=True)


def test_missing_rng_state_of_this_rank(tmp_path):
    path = _fake_trainer_checkpoint(tmp_path / "c", rng="rng_state_0.pth")
    check_checkpoint(path, world_size=2, process_index=0)
    with pytest.raises(ValueError, match="rng_state_1.pth"):
        check_checkpoint(path, world_size=2, process_index=1)


def test_missing_weights_or_trainer_state_is_always_an_error(tmp_path):
    path = _fake_trainer_checkpoint(tmp_path / "c")
    (path / "trainer_state.json").unlink()
    with pytest.raises(ValueError, match="no trainer state"):
        check_checkpoint(path, resume_partial=True)
    path = _fake_trainer_checkpoint(tmp_path / "d")
    (path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no model weights"):
        check_checkpoint(path, resume_partial=True)


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                                  "trainer_state.json"])
@pytest.mark.parametrize("marked", [True, False], ids=["marked", "unmarked"])
def test_truncated_file_is_named(tmp_path, name, marked):
    path = _fake_trainer_checkpoint(tmp_path / "c")
    if not marked:  # no sizes to compare: the formats' own structure gives it away
        (path / MARKER).unlink()
    _truncate(path / name)
    with pytest.raises(ValueError, match=rf"checkpoint file .*c/{name} is truncated or corrupted"):
        with pytest.warns(UserWarning) if not marked else _nothing():
            check_checkpoint(path, resume_partial=True)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_accelerate_layout_needs_rng_and_optimizer_state(tmp_path):
    path = tmp_path / "checkpoint-2"
    path.mkdir()
    save_file({"w": torch.zeros(4)}, str(path / "model.safetensors"))
    save_file({"w": torch.zeros(4)}, str(path / "model_1.safetensors"))
    torch.save({}, path / "optimizer.bin")
    torch.save({}, path / "random_states_0.pkl")
    (path / "segrl_state.json").write_text('{"iteration": 2, "history": []}')
    mark_complete(path)
    check_checkpoint(path, layout="accelerate")
    (path / "random_states_0.pkl").unlink()
    with pytest.raises(ValueError, match=r"lacks the RNG state \(random_states_0.pkl\)"):
        check_checkpoint(path, layout="accelerate")
    with pytest.raises(ValueError, match="layout"):
        check_checkpoint(path, layout="deepspeed")


# --------------------------------------------------------------------------------------------------
# the trainers
# --------------------------------------------------------------------------------------------------


def test_every_trl_trainer_uses_the_mixin_and_every_config_has_resume_partial():
    from transformers import Trainer

    from segrl.dpo import ASRDPOConfig, ASRDPOTrainer
    from segrl.grpo import SegmentGRPOConfig, SegmentGRPOTrainer
    from segrl.ppo import SegmentPPOConfig
    from segrl.rm.trainer import SegmentRewardConfig, SegmentRewardTrainer
    from segrl.rs import ASRRejectionSamplingConfig
    from segrl.rs.sampler import _RejectionSamplingSFTTrainer

    for cls in (ASRDPOTrainer, SegmentRewardTrainer, _RejectionSamplingSFTTrainer, SegmentGRPOTrainer):
        assert cls._save_checkpoint is CompleteCheckpointsMixin._save_checkpoint, cls.__name__
        assert cls.train is CompleteCheckpointsMixin.train, cls.__name__
    for cfg in (ASRDPOConfig, SegmentRewardConfig, ASRRejectionSamplingConfig, SegmentGRPOConfig, SegmentPPOConfig):
        field = cfg.__dataclass_fields__["resume_partial"]
        assert field.default is False and "optimizer" in field.metadata["help"], cfg.__name__
    # the transformers internals the mixin overrides / calls
    assert list(inspect.signature(Trainer._save_checkpoint).parameters) == ["self", "model", "trial"]
    assert "resume_from_checkpoint" in inspect.signature(Trainer.train).parameters
    assert hasattr(Trainer, "_get_output_dir")


@pytest.fixture(scope="module")
def tiny():
    from segrl.models.tiny import build_tiny_causal_lm, build_tiny_tokenizer
    from segrl.models.tiny_data import load_tiny_prefs

    tok = build_tiny_tokenizer()
    policy = build_tiny_causal_lm(tok, hidden_size=32, num_layers=1, seed=1)
    rows = load_tiny_prefs()[:8]
    rng = random.Random(0)
    for r in rows:
        for side in ("chosen", "rejected"):
            n = len(tok(r["prompt"] + r[side] + tok.eos_token)["input_ids"]) - len(tok(r["prompt"])["input_ids"])
            r[f"{side}_token_rewards"] = [round(rng.gauss(0, 1), 3) for _ in range(n)]
    return tok, policy, rows


def _dpo(tiny, out, trainer_cls=None, **kw):
    from segrl.dpo import ASRDPOConfig, ASRDPOTrainer

    tok, policy, rows = tiny
    args = ASRDPOConfig(output_dir=str(out), per_device_train_batch_size=4, bf16=False, gradient_checkpointing=False,
                        use_cpu=True, report_to="none", logging_steps=1, save_strategy="steps", save_steps=1,
                        disable_tqdm=True, dataloader_num_workers=0, learning_rate=1e-2, seed=0, **kw)
    return (trainer_cls or ASRDPOTrainer)(model=copy.deepcopy(policy), ref_model=copy.deepcopy(policy), args=args,
                                          train_dataset=Dataset.from_list(rows), processing_class=tok)


class _CrashInOptimizerSave(Exception):
    pass


def test_dpo_crash_mid_save_then_resume_last_uses_the_previous_checkpoint(tiny, tmp_path):
    from segrl.dpo import ASRDPOTrainer

    class Crashing(ASRDPOTrainer):
        def _save_optimizer_and_scheduler(self, output_dir):
            if self.state.global_step == 2:  # the model is on disk, the optimizer is not: like a kill -9 here
                raise _CrashInOptimizerSave
            super()._save_optimizer_and_scheduler(output_dir)

    with pytest.raises(_CrashInOptimizerSave):
        _dpo(tiny, tmp_path, Crashing, max_steps=3).train()
    assert is_complete(tmp_path / "checkpoint-1") and not is_complete(tmp_path / "checkpoint-2")
    assert (tmp_path / "checkpoint-2" / "model.safetensors").is_file()  # half-written, looks plausible

    resumed = _dpo(tiny, tmp_path, max_steps=3, save_total_limit=2)
    with pytest.warns(UserWarning, match=r"skipping incomplete checkpoint\(s\) .*checkpoint-2"):
        resumed.train(resume_from_checkpoint="last")
    logged = [h["step"] for h in resumed.state.log_history if "loss" in h]
    assert logged == [1, 2, 3]  # step 1 from checkpoint-1's history, then steps 2 and 3 trained again
    # rewritten checkpoint-2 and new checkpoint-3 are complete; save_total_limit=2 removed checkpoint-1
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert all(is_complete(p) for p in tmp_path.glob("checkpoint-*"))


def test_dpo_resume_without_optimizer_or_with_truncated_weights(tiny, tmp_path):
    _dpo(tiny, tmp_path, max_steps=1).train()
    ckpt = tmp_path / "checkpoint-1"
    saved = tmp_path / "saved"
    shutil.copytree(ckpt, saved)

    (ckpt / "optimizer.pt").unlink()
    with pytest.raises(ValueError, match=r"lacks the optimizer state \(optimizer.pt"):
        _dpo(tiny, tmp_path, max_steps=2).train(resume_from_checkpoint=str(ckpt))
    with pytest.warns(UserWarning, match="resume_partial"):
        _dpo(tiny, tmp_path, max_steps=2, resume_partial=True).train(resume_from_checkpoint=str(ckpt))

    shutil.rmtree(tmp_path / "checkpoint-2")
    shutil.rmtree(ckpt)
    shutil.copytree(saved, ckpt)
    _truncate(ckpt / "model.safetensors", keep=0.9)
    with pytest.raises(ValueError, match=r"checkpoint file .*checkpoint-1/model.safetensors is truncated"):
        _dpo(tiny, tmp_path, max_steps=2).train(resume_from_checkpoint="last")

    # corrupted inside, same size (the marker's sizes and the format checks cannot see it): named at load time
    shutil.rmtree(ckpt)
    shutil.copytree(saved, ckpt)
    size = os.path.getsize(ckpt / "optimizer.pt")
    (ckpt / "optimizer.pt").write_bytes(b"\x00garbage" * (size // 8) + b"\x00" * (size % 8))
    assert os.path.getsize(ckpt / "optimizer.pt") == size
    with pytest.raises(ValueError, match=r"checkpoint .*checkpoint-1: cannot read the optimizer / scheduler state"):
        _dpo(tiny, tmp_path, max_steps=2).train(resume_from_checkpoint="last")


def test_ppo_missing_rng_state_and_incomplete_latest(tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    from segrl import ops
    from segrl.models.tiny import make_tiny_model_dir
    from segrl.ppo import SegmentPPOConfig, SegmentPPOTrainer, SegmentRewardSource

    tiny_dir = str(make_tiny_model_dir(tmp_path / "policy", seed=1, hidden_size=32, num_layers=1))
    out = tmp_path / "ppo"

    def score(query_responses, attention_mask, context_length):
        return attention_mask.float().cumsum(dim=1) * 0.1

    def make(**kw):
        tok = AutoTokenizer.from_pretrained(tiny_dir)
        args = SegmentPPOConfig(output_dir=str(out), num_iterations=2, rollout_batch_size=4, mini_batch_size=4,
                                max_new_tokens=4, use_cpu=True, seed=0, save_steps=1, **kw)
        source = SegmentRewardSource(score, threshold=2.0, normalizer=ops.LocationNormalizerCoef(0.0, 0.0, 0.0, 1.0))
        return SegmentPPOTrainer(args, policy=AutoModelForCausalLM.from_pretrained(tiny_dir),
                                 ref_model=AutoModelForCausalLM.from_pretrained(tiny_dir),
                                 critic=AutoModelForTokenClassification.from_pretrained(tiny_dir, num_labels=1),
                                 reward_source=source, tokenizer=tok, prompts=["1+1=", "2+2=", "3+3=", "4+4="])

    make().train()
    assert is_complete(out / "checkpoint-1") and is_complete(out / "checkpoint-2")
    assert not list(out.glob("*.tmp"))
    # an interrupted save of iteration 3: `latest` skips it
    (out / "checkpoint-3").mkdir()
    (out / "checkpoint-3" / "model.safetensors").write_bytes(b"")
    (out / "checkpoint-2" / "random_states_0.pkl").unlink()
    trainer = make(resume_from_checkpoint="latest")
    with pytest.warns(UserWarning, match="checkpoint-3"), \
            pytest.raises(ValueError, match=r"checkpoint-2 lacks the RNG state \(random_states_0.pkl\)"):
        trainer.load_checkpoint("latest")
    trainer = make(resume_from_checkpoint="latest", resume_partial=True)
    with pytest.warns(UserWarning, match="resume_partial"):
        trainer.load_checkpoint("latest")
    assert trainer.iteration == 2
