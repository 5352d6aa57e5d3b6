"""segrl ppo under DeepSpeed: the config plumbing (fast). The ZeRO-2 / ZeRO-3 runs against one plain
process are in tests/test_distributed.py (cases ppo, ppo_ga2 of tests/distributed/dp_cases.py)."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from rm_fixtures import _jsonl, fitted_rm, rm_env  # noqa: F401

from segrl.ppo import SegmentPPOConfig
from segrl.ppo.engines import fill_deepspeed_config, load_deepspeed_config, uses_deepspeed

DEEPSPEED_CONFIGS = {s: Path(__file__).resolve().parents[1] / "examples" / "deepspeed" / f"{s}.json" for s in ("zero2", "zero3")}


def test_auto_and_absent_entries_are_filled_from_the_ppo_options():
    config = {"train_micro_batch_size_per_gpu": "auto", "gradient_clipping": "auto", "zero_optimization": {"stage": 2}}
    out = fill_deepspeed_config(config, {"train_micro_batch_size_per_gpu": 2, "gradient_clipping": 0.5,
                                         "gradient_accumulation_steps": 3})
    assert out is config
    assert config == {"train_micro_batch_size_per_gpu": 2, "gradient_clipping": 0.5, "gradient_accumulation_steps": 3,
                      "zero_optimization": {"stage": 2}}


def test_a_config_value_that_disagrees_with_the_options_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps=4 .* needs 2"):
        fill_deepspeed_config({"gradient_accumulation_steps": 4}, {"gradient_accumulation_steps": 2})
    # the same number is fine
    assert fill_deepspeed_config({"gradient_clipping": 1.0}, {"gradient_clipping": 1.0}) == {"gradient_clipping": 1.0}


def test_shipped_configs_load_and_leave_the_batch_entries_to_segrl():
    for path in DEEPSPEED_CONFIGS.values():
        config = load_deepspeed_config(str(path))
        for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
            assert config[key] == "auto", (path, key)


def test_bad_deepspeed_files_fail_at_config_construction(tmp_path):
    with pytest.raises(ValueError, match="`deepspeed` must be a DeepSpeed JSON config file"):
        SegmentPPOConfig(output_dir=str(tmp_path / "out"), deepspeed=str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{stage: 2")
    with pytest.raises(ValueError, match="is not valid JSON"):
        SegmentPPOConfig(output_dir=str(tmp_path / "out"), deepspeed=str(bad))
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="must hold a JSON object"):
        SegmentPPOConfig(output_dir=str(tmp_path / "out"), deepspeed=str(bad))
    assert not (tmp_path / "out").exists()


def test_deepspeed_is_chosen_by_the_option_or_by_accelerate_launch(monkeypatch, tmp_path):
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    assert not uses_deepspeed(SegmentPPOConfig(output_dir=str(tmp_path)))
    assert uses_deepspeed(SegmentPPOConfig(output_dir=str(tmp_path), deepspeed=str(DEEPSPEED_CONFIGS["zero2"])))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert uses_deepspeed(SegmentPPOConfig(output_dir=str(tmp_path)))


def _deepspeed_ppo_runner(rm_env, fitted_rm, tmp_path, stage="zero3", **options):
    """A function that runs `torchrun --nproc_per_node 2 -m segrl ppo` under DeepSpeed (``stage``: a shipped
    config) on the fixture's models (``options`` added to the config; output in ``tmp_path / "ppo"``) and
    asserts it exits 0."""
    _, rm_path, data = fitted_rm
    cfg = {
        "model_name_or_path": rm_env.init_dir, "ref_model_name_or_path": rm_env.ref_dir,
        "reward_model_path": str(rm_path), "dataset_name": data, "output_dir": str(tmp_path / "ppo"),
        "total_episodes": 8, "rollout_batch_size": 2, "mini_batch_size": 2, "gradient_accumulation_steps": 2,
        "max_new_tokens": 6, "learning_rate": 1e-3, "critic_learning_rate": 1e-3,
        "use_cpu": True, "deepspeed": str(DEEPSPEED_CONFIGS[stage]), **options,
    }
    (tmp_path / "ppo.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "DS_BUILD_OPS": "0",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_DEEPSPEED"):
        env.pop(key, None)
    torchrun = str(Path(sys.executable).with_name("torchrun"))

    def run(*extra):
        proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "segrl", "ppo", "--config",
                               str(tmp_path / "ppo.yaml"), *extra], env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    return run


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_segrl_ppo_cli_under_zero3_on_two_processes_saves_and_resumes(rm_env, fitted_rm, tmp_path):
    """`torchrun --nproc_per_node 2 -m segrl ppo --deepspeed zero3.json`: real sampling from the gathered
    ZeRO-3 policy, the whole frozen reference and RM on each rank, a checkpoint of both engines, a
    resumed run, and a saved policy whose weights are complete (gathered) and trained."""
    from safetensors.torch import load_file

    out = tmp_path / "ppo"
    run = _deepspeed_ppo_runner(rm_env, fitted_rm, tmp_path, save_steps=1)
    run()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2  # 8 episodes / (2 prompts x 2 processes)
    assert all(m["policy_grad_norm"] > 0 and m["critic_grad_norm"] > 0 for m in metrics)
    assert (out / "checkpoint-2" / "segrl_state.json").exists()
    # two DeepSpeed engines saved their own ZeRO checkpoints (accelerate names them per prepared model)
    assert (out / "checkpoint-2" / "pytorch_model").is_dir() and (out / "checkpoint-2" / "pytorch_model_1").is_dir()
    before = load_file(Path(rm_env.init_dir) / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert all(after[k].shape == v.shape for k, v in before.items() if k in after)  # gathered, not partitions
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)
    run("--total_episodes", "12", "--resume_from_checkpoint", "latest")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [1, 2, 3]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_segrl_ppo_cli_under_zero3_with_lora_and_the_adapter_disabled_reference(rm_env, fitted_rm, tmp_path):
    """ZeRO-3 + PEFT: no reference model is given, so the reference is the partitioned policy with its
    adapter disabled (a forward through DeepSpeed's gathering hooks on every rank). The run must train the
    adapter only and save it (gathered) as a loadable LoRA adapter."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "ppo"
    run = _deepspeed_ppo_runner(rm_env, fitted_rm, tmp_path, ref_model_name_or_path=None, use_peft=True, lora_r=4)
    run()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(m["policy_grad_norm"] > 0 for m in metrics)
    # the reference is the policy without its adapter: KL starts at 0 (LoRA's B is zero-initialised)
    assert abs(metrics[0]["kl"]) < 1e-5, metrics[0]["kl"]
    assert (out / "adapter_config.json").exists() and not (out / "model.safetensors").exists()
    adapter = load_file(out / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.numel() > 0 for v in adapter.values())  # gathered, not empty ZeRO-3 partitions
    assert any(v.abs().sum() > 0 for v in lora_b)  # trained away from B = 0
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(rm_env.init_dir), str(out))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_segrl_ppo_cli_under_zero2_in_bf16(rm_env, fitted_rm, tmp_path):
    """`--bf16 true` with a shipped config whose precision is "auto": DeepSpeed trains bf16 weights
    (fp32 master copies in its optimiser) next to the fp32 reference and RM; the run trains and the saved
    policy is finite."""
    from safetensors.torch import load_file

    out = tmp_path / "ppo"
    run = _deepspeed_ppo_runner(rm_env, fitted_rm, tmp_path, stage="zero2", bf16=True)
    run()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2
    assert all(math.isfinite(m["kl"]) and m["policy_grad_norm"] > 0 and m["critic_grad_norm"] > 0 for m in metrics)
    before = load_file(Path(rm_env.init_dir) / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert all(torch.isfinite(v.float()).all() for v in after.values())
    assert {v.dtype for v in after.values()} == {torch.bfloat16}  # DeepSpeed's bf16 engine weights, gathered
    assert any(not torch.equal(before[k], after[k].to(before[k].dtype)) for k in before if k in after)


def test_eval_batches_give_every_process_the_same_number_of_batches():
    from segrl.ppo.trainer import eval_batches

    # 5 prompts on 2 processes, batches of 2: rank 0 has prompts 0, 2, 4; rank 1 has 1, 3 (+ an empty batch)
    assert eval_batches(5, 2, 0, 2) == [[0, 2], [4]]
    assert eval_batches(5, 2, 1, 2) == [[1, 3], []]
    assert eval_batches(3, 4, 3, 8) == [[]]  # more processes than prompts: one empty batch
    assert eval_batches(4, 1, 0, 3) == [[0, 1, 2], [3]]
    for n in range(1, 12):
        for world in (1, 2, 3):
            plans = [eval_batches(n, world, r, 2) for r in range(world)]
            assert len({len(p) for p in plans}) == 1, (n, world)
            assert sorted(i for p in plans for b in p for i in b) == list(range(n))
