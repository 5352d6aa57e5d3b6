"""`segrl` command line: one subcommand per module in `segrl.commands` (also ``python -m segrl``).

Each subcommand module defines ``main(argv: list[str]) -> int`` and parses its own dataclass
config (:func:`segrl.commands._common.parse_args`), so every command accepts ``--config file.yaml``
as well as flags (flags override the YAML). Modules are imported lazily: ``segrl viz`` does not pay
for importing TRL, and ``segrl <command> --help`` reads the options from the source (about a
second). Global options: ``--debug`` (or ``SEGRL_DEBUG=1``: full tracebacks), ``--num_threads N``,
``--version``.
"""

from __future__ import annotations

import difflib
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
    "init": ("segrl.commands.init", "write the example configs and the tiny data into a directory (works after pip install)"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: segrl [--debug] [--num_threads N] [--version] <command> [--config file.yaml] [--flag value ...]", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`segrl <command> --help` lists a command's own options, `--help-all` the inherited TRL /",
              "transformers ones too. `--debug` (or SEGRL_DEBUG=1) prints full tracebacks; `--num_threads N`",
              "sets torch's CPU threads. Quick start: `segrl init segrl-examples` (see its README.md)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    leading: list[str] = []  # global options given before the command: `segrl --num_threads 2 demo ...`
    while argv and (argv[0] in ("--debug", "--num_threads") or argv[0].startswith("--num_threads=")):
        take = 2 if argv[0] == "--num_threads" else 1
        leading, argv = leading + argv[:take], argv[take:]
    if argv and argv[0] == "--version":
        from segrl import __version__

        print(f"segrl {__version__}")
        return 0
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"segrl: error: unknown command {name!r}{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from segrl.commands._common import UsageError, release_process_group, run_command, strip_global_options

    try:
        rest = strip_global_options(leading + rest)  # --debug, --num_threads N: the same for every command
    except UsageError as err:
        print(f"segrl {name}: error: {err}", file=sys.stderr)
        return 2
    code: list[int] = [0]

    def _run():
        module = importlib.import_module(COMMANDS[name][0])
        code[0] = int(module.main(rest) or 0)

    try:
        failed = run_command(f"segrl {name}", _run)
    finally:
        release_process_group()
    return failed or code[0]


if __name__ == "__main__":
    raise SystemExit(main())
