"""How PPO's two trained models take an optimiser step: one process / DDP through accelerate, or DeepSpeed.

PPO trains two models with their own optimisers (policy and critic). accelerate refuses to prepare two
models in one call under DeepSpeed and drives ``backward`` through the last engine it prepared, so
under DeepSpeed each model is prepared on its own and becomes its own engine, stepped directly; the
frozen reference and reward model stay whole on every process (they are only ever called forward).
:class:`ModelUpdater` hides the difference from :meth:`SegmentPPOTrainer.update`.
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType


def uses_deepspeed(args) -> bool:
    """``args.deepspeed`` is set, or the run was started by ``accelerate launch`` with a DeepSpeed config."""
    return bool(args.deepspeed) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def load_deepspeed_config(config) -> dict:
    """A DeepSpeed config as a dict: a JSON file path or a dict (copied). Raises ``ValueError`` naming
    ``deepspeed`` when the file is missing or is not a JSON object."""
    if isinstance(config, dict):
        return json.loads(json.dumps(config))
    path = Path(config)
    if not path.is_file():
        raise ValueError(f"`deepspeed` must be a DeepSpeed JSON config file, got {config!r} (no such file); "
                         "examples: examples/deepspeed/zero2.json, zero3.json")
    try:
        loaded = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"`deepspeed` file {config} is not valid JSON: {err}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"`deepspeed` file {config} must hold a JSON object, got {type(loaded).__name__}")
    return loaded


def fill_deepspeed_config(config: dict, values: dict) -> dict:
    """Fill the ``"auto"`` (or absent) top-level entries of a DeepSpeed ``config`` with ``values``, in place.

    An entry the config sets to a different number is an error naming it: DeepSpeed would otherwise
    accumulate or clip differently from what the PPO options say.
    """
    for key, value in values.items():
        given = config.get(key, "auto")
        if given == "auto":
            config[key] = value
        elif given != value:
            raise ValueError(f"the DeepSpeed config sets {key}={given!r} but segrl ppo needs {value!r} from its own "
                             f"options; set {key} to \"auto\" in the DeepSpeed config")
    return config


def make_accelerator(args) -> Accelerator:
    """The Accelerator of a PPO run: DeepSpeed when asked for (:func:`uses_deepspeed`), else DDP / one process."""
    mixed = "bf16" if args.bf16 else "fp16" if args.fp16 else "no"
    log_with = None if args.report_to == "none" else args.report_to
    if not uses_deepspeed(args):
        return Accelerator(cpu=args.use_cpu, log_with=log_with, project_dir=args.output_dir, mixed_precision=mixed)
    from accelerate.utils import DeepSpeedPlugin

    # As transformers' TrainingArguments does: the process group first (gloo on CPU), then an Accelerator
    # without `cpu=True`, which would otherwise turn DeepSpeed off.
    if args.use_cpu:
        state = PartialState(cpu=True, backend="gloo")
    else:
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        state = PartialState()
    micro = args.mini_batch_size // args.gradient_accumulation_steps
    plugin = DeepSpeedPlugin(hf_ds_config=load_deepspeed_config(args.deepspeed)) if args.deepspeed else DeepSpeedPlugin()
    fill_deepspeed_config(plugin.deepspeed_config, {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "train_batch_size": micro * args.gradient_accumulation_steps * state.num_processes,
        "gradient_clipping": args.max_grad_norm,
    })
    return Accelerator(deepspeed_plugin=plugin, log_with=log_with, project_dir=args.output_dir, mixed_precision=mixed,
                       gradient_accumulation_steps=args.gradient_accumulation_steps)


class ModelUpdater:
    """One trained model with its optimiser and LR schedule: backward over micro-batches, then one step.

    Without DeepSpeed: accelerate's ``backward`` (``no_sync`` on every micro-batch but the last),
    ``clip_grad_norm_``, ``optimizer.step()``, ``scheduler.step()``. With DeepSpeed, ``model`` is the
    model's own engine: ``engine.backward`` without its 1/accumulation scaling (PPO's losses already
    divide by the whole mini-batch's token count), and ``engine.step()`` clips (the config's
    ``gradient_clipping``) and steps at the accumulation boundary.
    """

    def __init__(self, accelerator: Accelerator, model, optimizer, scheduler, max_grad_norm: float):
        self.accelerator, self.model, self.optimizer = accelerator, model, optimizer
        self.scheduler, self.max_grad_norm = scheduler, max_grad_norm
        self.deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED

    def zero_grad(self) -> None:
        """Before a mini-batch's first micro-batch (DeepSpeed engines clear their gradients when they step)."""
        if not self.deepspeed:
            self.optimizer.zero_grad(set_to_none=True)

    def accumulating(self, last: bool):
        """DDP: no gradient all-reduce on the micro-batches before the last one of a mini-batch."""
        if self.deepspeed or last:
            return nullcontext()
        return self.accelerator.no_sync(self.model)

    def backward(self, loss: torch.Tensor, *, last: bool) -> None:
        if self.deepspeed:
            self.model.set_gradient_accumulation_boundary(last)
            self.model.backward(loss, scale_wrt_gas=False)
        else:
            self.accelerator.backward(loss)

    def step(self) -> float:
        """Clip, step and schedule; returns the global gradient norm before clipping."""
        if self.deepspeed:
            self.model.step()
            norm = self.model.get_global_grad_norm()
        else:
            norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            self.optimizer.step()
        self.scheduler.step()
        return float(norm) if norm is not None else float("nan")
