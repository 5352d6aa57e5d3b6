"""``segrl make-tiny``: build and save the tiny offline tokenizer and causal LM(s).

Without ``--pair`` it writes one randomly initialised model plus tokenizer to ``--output_dir``;
with ``--pair true`` it writes a trained SFT reference model and a DPO policy to
``OUTPUT_DIR/sft`` and ``OUTPUT_DIR/policy`` (a few seconds on two CPU cores). Both load with
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``, fully offline.

Examples::

    segrl make-tiny --output_dir tiny/llama
    segrl make-tiny --output_dir tiny/qwen2 --arch qwen2 --hidden_size 128 --num_layers 4
    segrl make-tiny --output_dir tiny/pair --pair true
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class MakeTinyConfig:
    """Options of ``segrl make-tiny`` (flags, or keys of the ``--config`` YAML file)."""

    output_dir: str = field(metadata={"help": "Directory to write the model(s) and tokenizer to."})
    arch: str = field(default="llama", metadata={"help": "Architecture: llama or qwen2."})
    pair: bool = field(
        default=False,
        metadata={"help": "Write a trained SFT reference (OUTPUT_DIR/sft) and DPO policy (OUTPUT_DIR/policy) "
                          "instead of one random model."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the weights (and of training with --pair)."})
    hidden_size: int = field(default=64, metadata={"help": "Hidden size."})
    num_layers: int = field(default=2, metadata={"help": "Number of transformer layers."})
    num_heads: int = field(default=4, metadata={"help": "Number of attention heads (must divide hidden_size)."})
    sft_steps: int = field(default=200, metadata={"help": "With --pair: AdamW steps of SFT."})
    policy_steps: int = field(default=80, metadata={"help": "With --pair: DPO steps from the SFT model."})
    overwrite: bool = field(default=False, metadata={"help": "With --pair: rebuild even if an identical pair exists."})


def make_parser():
    from trl import TrlParser

    return TrlParser((MakeTinyConfig,), prog="segrl make-tiny")


def parse_config(argv: list[str]) -> MakeTinyConfig:
    from segrl.commands._common import parse_args

    (cfg,) = parse_args(make_parser(), argv, "segrl make-tiny")
    return cfg


def run(cfg: MakeTinyConfig) -> list[str]:
    """Build and save; returns the directories written."""
    from segrl.models import make_tiny_model_dir, make_tiny_pair

    shape = dict(hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads)
    if cfg.pair:
        pair = make_tiny_pair(cfg.output_dir, arch=cfg.arch, seed=cfg.seed, sft_steps=cfg.sft_steps,
                              policy_steps=cfg.policy_steps, overwrite=cfg.overwrite, **shape)
        return [str(pair.sft), str(pair.policy)]
    return [str(make_tiny_model_dir(cfg.output_dir, arch=cfg.arch, seed=cfg.seed, **shape))]


def _quiet_transformers() -> None:
    # Per-file "Loading weights" / "Writing model shards" bars drown the command's own output.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


HELP_GROUPS = [("make-tiny", "segrl.commands.make_tiny:MakeTinyConfig")]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``segrl make-tiny``. Returns 0 on success, 2 on invalid options, 1 on other errors."""
    from segrl.commands._common import command_main

    def _run(cfg):
        _quiet_transformers()
        for path in run(cfg):
            print(f"wrote {path}")

    return command_main("segrl make-tiny", argv, make_parser, _run, HELP_GROUPS)


if __name__ == "__main__":
    raise SystemExit(main())
