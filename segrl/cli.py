"""`segrl` command line: one subcommand per module in `segrl.commands`.

Each subcommand module defines ``main(argv: list[str]) -> int`` and parses its own dataclass
config with :class:`trl.TrlParser`, so every command accepts ``--config file.yaml`` as well as
flags (flags override the YAML). Modules are imported lazily: ``segrl viz`` does not pay for
importing TRL.
"""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("segrl.commands.demo", "the whole pipeline on the tiny model and built-in task, with an HTML report"),
    "experiment": ("segrl.commands.experiment", "credit-assignment benchmark: every method, several seeds, results + plots"),
    "viz": ("segrl.commands.viz", "render token rewards / segments / masks as an HTML (and PNG) heat-map"),
    "dpo": ("segrl.commands.dpo", "ASR-DPO on TRL (segment-masked DPO; --mask_type none is vanilla DPO)"),
    "rs": ("segrl.commands.rs", "ASR rejection sampling: sample K, score with a segment RM, masked SFT on the best"),
    "make-tiny": ("segrl.commands.make_tiny", "build and save the tiny offline tokenizer + causal LMs"),
    "train-rm": ("segrl.commands.train_rm", "train a segment-level reward model (c = 0 token, c = inf bandit)"),
    "fit-norm": ("segrl.commands.fit_norm", "fit a segment RM's location-aware normaliser and save it with the RM"),
    "eval-rm": ("segrl.commands.eval_rm", "pairwise accuracy of a segment RM on held-out preference pairs"),
    "ppo": ("segrl.commands.ppo", "dense-reward PPO with a critic on a segment RM (bandit/token/segment arm, ASR-PPO)"),
    "grpo": ("segrl.commands.grpo", "critic-free variant: TRL GRPO with dense (B, T) segment advantages"),
    "eval": ("segrl.commands.eval", "evaluate a causal LM: credit-assignment task, HumanEval, reasoning-gym, refusal"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: segrl <command> [--config file.yaml] [--flag value ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`segrl <command> --help` lists a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"segrl: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
