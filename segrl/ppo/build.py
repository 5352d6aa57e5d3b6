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


def build_ppo_trainer(args: SegmentPPOConfig) -> SegmentPPOTrainer:
    """Load policy, reference, critic and segment RM by hub id or path, and wire them together."""
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    from segrl.rm.model import SegmentRewardModel, same_model_path

    if not args.policy:
        raise ValueError("`policy` is required (the SFT model: hub id or local path)")
    if not args.reward_model:
        raise ValueError("`reward_model` is required (a segment RM from `segrl train-rm` + `segrl fit-norm`)")
    reference = args.reference_model or args.policy
    tokenizer = AutoTokenizer.from_pretrained(args.policy)
    rm = SegmentRewardModel.from_pretrained(args.reward_model)
    if rm.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError("`reward_model` and `policy` use different tokenizers; segrl needs one shared tokenizer")
    if rm.reference_model and not same_model_path(rm.reference_model, reference):
        warnings.warn(
            f"the RM was trained with segments from {rm.reference_model!r} but PPO segments with {reference!r}; "
            "pass --ref_model_name_or_path to use the same one",
            stacklevel=2,
        )
    policy = AutoModelForCausalLM.from_pretrained(args.policy)
    ref_model = AutoModelForCausalLM.from_pretrained(reference)
    critic_path = args.policy if args.critic_init == "policy" else args.reward_model
    from transformers import set_seed

    set_seed(args.seed)  # the critic's fresh head is drawn now: make it a function of the seed only
    critic = AutoModelForTokenClassification.from_pretrained(critic_path, num_labels=1)
    source = source_from_reward_model(rm, threshold=args.segment_threshold, spread_mode=args.spread_mode)
    return SegmentPPOTrainer(
        args, policy=policy, ref_model=ref_model, critic=critic, reward_source=source, tokenizer=tokenizer,
        prompts=load_prompts(args.dataset, args.dataset_split),
    )
