"""Build a :class:`SegmentPPOTrainer` from a :class:`SegmentPPOConfig` (what ``segrl ppo`` runs)."""

from __future__ import annotations

import warnings

from .config import SegmentPPOConfig
from .rewards import source_from_reward_model
from .trainer import SegmentPPOTrainer


def load_prompts(name_or_path: str, split: str = "train", column: str = "prompt", *, arg: str = "dataset_name",
                 drop_empty: bool = False) -> list:
    """Prompts (a ``column`` of text or chat messages) through segrl's one data loader and check
    (:func:`segrl.data_checks.load_data`: ``builtin:NAME``, local files, save_to_disk directories, Hub ids)."""
    from segrl.data_checks import check_prompt_data, load_data

    ds = load_data(name_or_path, split, arg=arg)
    ds, _ = check_prompt_data(ds, arg, column, drop_empty=drop_empty)
    return list(ds[column])


def load_ppo_prompts(args: SegmentPPOConfig) -> tuple[list, list | None]:
    """Training prompts and held-out prompts (``None`` without ``eval_split`` / ``eval_dataset_name`` /
    ``eval_steps``): ``eval_split`` holds out a fraction of ``dataset_name`` (shuffled with ``seed``);
    ``eval_dataset_name`` reads its ``dataset_test_split``; otherwise a Hub / ``save_to_disk``
    ``dataset_name`` with a ``dataset_test_split`` split is used when ``eval_steps`` is set."""
    from segrl.data_checks import check_prompt_data, load_data

    if not args.dataset_name:
        raise ValueError("`dataset_name` is required (builtin:NAME, a .jsonl/.json/.csv/.parquet file, a "
                         "save_to_disk directory or a Hub id, with a 'prompt' column)")
    train = load_data(args.dataset_name, args.dataset_train_split, arg="dataset_name")
    train, _ = check_prompt_data(train, "dataset_name", "prompt")
    held_out = None
    if args.eval_split is not None:
        if len(train) < 2:
            raise ValueError(f"`eval_split` needs at least 2 prompts in `dataset_name`, got {len(train)}")
        parts = train.train_test_split(test_size=args.eval_split, seed=args.seed)
        train, held_out = parts["train"], parts["test"]
    elif args.eval_dataset_name:
        held_out = load_data(args.eval_dataset_name, args.dataset_test_split, arg="eval_dataset_name")
        held_out, _ = check_prompt_data(held_out, "eval_dataset_name", "prompt")
    elif args.eval_steps:
        import os

        if os.path.exists(args.dataset_name) and not os.path.isdir(args.dataset_name) or \
                args.dataset_name.startswith("builtin:"):
            raise ValueError("`eval_steps` is set but a local `dataset_name` file has a single split: pass "
                             "`eval_split` (a held-out fraction) or `eval_dataset_name`")
        held_out = load_data(args.dataset_name, args.dataset_test_split, arg="dataset_name")
        held_out, _ = check_prompt_data(held_out, "dataset_name", "prompt")
    return list(train["prompt"]), None if held_out is None else list(held_out["prompt"])


def _dtype(name: str | None):
    import torch

    return None if name in (None, "auto") else getattr(torch, name)


def build_ppo_trainer(args: SegmentPPOConfig, callbacks=None) -> SegmentPPOTrainer:
    """Load policy, reference, critic and segment RM by hub id or path, and wire them together.

    With ``use_peft`` the policy gets a LoRA adapter and the reference is the adapter-disabled
    policy (no second copy of the weights), as in TRL."""
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    from segrl.rm.model import SegmentRewardModel, same_model_path

    if not args.model_name_or_path:
        raise ValueError("`model_name_or_path` is required (the SFT model: hub id or local path)")
    if not args.reward_model_path:
        raise ValueError("`reward_model_path` is required (a segment RM from `segrl train-rm` + `segrl fit-norm`)")
    if args.use_peft and args.ref_model_name_or_path and not same_model_path(args.ref_model_name_or_path,
                                                                          args.model_name_or_path):
        raise ValueError("with `use_peft` the reference is the adapter-disabled policy: drop "
                         f"`ref_model_name_or_path` ({args.ref_model_name_or_path!r}) or set `use_peft` false")
    prompts, eval_prompts = load_ppo_prompts(args)
    reference = args.ref_model_name_or_path or args.model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    rm = SegmentRewardModel.from_pretrained(args.reward_model_path)
    if rm.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError("`reward_model_path` and `model_name_or_path` use different tokenizers; segrl needs one "
                         "shared tokenizer")
    if rm.reference_model and not same_model_path(rm.reference_model, reference):
        warnings.warn(
            f"the RM was trained with segments from {rm.reference_model!r} but PPO segments with {reference!r}; "
            "pass --ref_model_name_or_path to use the same one",
            stacklevel=2,
        )
    load = {"dtype": _dtype(args.dtype)} if args.dtype else {}
    policy = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, **load)
    if args.use_peft:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                          target_modules=args.lora_target_modules, task_type="CAUSAL_LM")
        policy = get_peft_model(policy, lora)
        ref_model = None
    else:
        ref_model = AutoModelForCausalLM.from_pretrained(reference, **load)
    critic_path = args.model_name_or_path if args.critic_init == "policy" else args.reward_model_path
    from transformers import set_seed

    set_seed(args.seed)  # the critic's fresh head is drawn now: make it a function of the seed only
    critic = AutoModelForTokenClassification.from_pretrained(critic_path, num_labels=1, **load)
    source = source_from_reward_model(rm, threshold=args.segment_threshold, spread_mode=args.spread_mode)
    return SegmentPPOTrainer(
        args, policy=policy, ref_model=ref_model, critic=critic, reward_source=source, tokenizer=tokenizer,
        prompts=prompts, eval_prompts=eval_prompts, callbacks=callbacks,
    )
