"""What every ``segrl`` subcommand shares: option parsing, names, help, devices and errors.

- :func:`parse_args`: ``--config file.yaml`` + flags (flags win) into the command's dataclasses, with
  unknown flags / YAML keys reported as ``unrecognised argument`` *before* any dataclass is built
  (so before TRL's own checks and long before a model loads), deprecated names mapped to the one
  name per concept (:data:`CONCEPTS`) with a warning, and on a machine without a GPU
  ``bf16=false`` / ``use_cpu=true`` chosen (and said) unless set explicitly.
- Global options of every command: ``--num_threads N`` (torch CPU threads), ``--debug`` (or
  ``SEGRL_DEBUG=1``: full traceback instead of the one-line error), ``--help`` (segrl's own options,
  grouped, read from the source without importing TRL / transformers: about a second) and
  ``--help-all`` (every inherited TRL / transformers option too).
- :func:`run_command`: one-line ``segrl NAME: error: ...`` and exit code 2 for bad options or data
  (``ValueError``, ``FileNotFoundError``), 1 for anything else.
"""

from __future__ import annotations

import ast
import difflib
import os
import sys
import textwrap
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

DEBUG_ENV = "SEGRL_DEBUG"
THREADS_ENV = "SEGRL_NUM_THREADS"

#: One flag name per concept (TRL's where TRL has one) -> the older names it replaces. A command
#: whose options still use an old name gets the new one mapped onto it; the old names keep working
#: with a deprecation warning.
CONCEPTS: dict[str, tuple[str, ...]] = {
    "model_name_or_path": ("policy",),
    "ref_model_name_or_path": ("reference_model", "ref_model"),
    "reward_model_path": ("reward_model", "token_reward_model", "segment_reward_model", "rm_path"),
    "dataset_name": ("dataset",),
    "dataset_train_split": ("dataset_split",),
    "asr_delta": ("delta",),
}

_OLD_NAMES = frozenset(n for old in CONCEPTS.values() for n in old)

#: Old names that are also a *different* option of some TRL config (GRPO's `delta`: two-sided clipping);
#: where both it and the new name exist, it is left alone.
DISTINCT_OPTIONS = frozenset({"delta"})

GLOBAL_HELP = [
    ("--config FILE.yaml", "YAML file of options (keys = flag names); flags override it."),
    ("--num_threads N", "CPU threads for torch (torch.set_num_threads); default: torch's choice."),
    ("--debug", f"Print the full traceback on error (or set {DEBUG_ENV}=1)."),
    ("--help-all", "Also list every inherited TRL / transformers option."),
]


class UsageError(ValueError):
    """A bad command line or config file (unknown option, bad value): exit code 2."""


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def _warn(prog: str, message: str) -> None:
    print(f"{prog}: warning: {message}", file=sys.stderr)


def _info(prog: str, message: str) -> None:
    print(f"{prog}: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- global options


def strip_global_options(argv: Sequence[str]) -> list[str]:
    """Remove ``--debug`` and ``--num_threads N`` from ``argv``, recording them in the environment."""
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--debug":
            os.environ[DEBUG_ENV] = "1"
        elif arg == "--num_threads" or arg.startswith("--num_threads="):
            if "=" in arg:
                value = arg.split("=", 1)[1]
            else:
                if i + 1 >= len(args):
                    raise UsageError("`--num_threads` needs a value (a positive integer)")
                i += 1
                value = args[i]
            if not value.isdigit() or int(value) < 1:
                raise UsageError(f"`--num_threads` must be a positive integer, got {value!r}")
            os.environ[THREADS_ENV] = value
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ[var] = value  # read when torch starts; set_num_threads below if it already has
        else:
            out.append(arg)
        i += 1
    return out


def apply_num_threads(prog: str = "segrl") -> int | None:
    """``torch.set_num_threads`` from ``--num_threads`` (if given); returns the number set."""
    value = os.environ.get(THREADS_ENV)
    if not value:
        return None
    import torch

    torch.set_num_threads(int(value))
    _info(prog, f"using {int(value)} CPU thread(s)")
    return int(value)


# --------------------------------------------------------------------------- names


def canonical_dests(dests: Iterable[str]) -> dict[str, str]:
    """For a parser with option names ``dests``: canonical name -> the option that carries it."""
    dests = set(dests)
    out: dict[str, str] = {}
    for canonical, old in CONCEPTS.items():
        for name in (canonical, *old):
            if name in dests:
                out[canonical] = name
                break
    return out


def resolve_name(name: str, dests: set[str], prog: str, aliases: dict[str, str] | None = None) -> str:
    """Map a flag / YAML key to the parser's option name (deprecation warning for old names).

    ``aliases``: a command's own old name -> new name pairs, on top of :data:`CONCEPTS`."""
    if aliases and name in aliases and name not in dests:
        _warn(prog, f"`{name}` is deprecated, use `{aliases[name]}`")
        return aliases[name]
    carriers = canonical_dests(dests)
    if name in carriers:  # the canonical name
        return carriers[name]
    for canonical, old in CONCEPTS.items():
        if name in old and canonical in carriers:
            dest = carriers[canonical]
            if name in dests and name != dest and name in DISTINCT_OPTIONS:
                return name  # a different option that happens to share the name (TRL GRPO's `delta`)
            _warn(prog, f"`{name}` is deprecated, use `{canonical}`")
            return dest
    return name


def _rename_argv(argv: list[str], dests: set[str], prog: str, aliases: dict[str, str] | None = None) -> list[str]:
    out = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            key, eq, value = arg[2:].partition("=")
            if key not in dests:
                key = resolve_name(key, dests, prog, aliases)
            elif key in _OLD_NAMES:  # a config may keep the old name as a deprecated field: map it all the same
                key = resolve_name(key, dests, prog, aliases)
            arg = f"--{key}{eq}{value}"
        out.append(arg)
    return out


def _suggest(name: str, dests: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(dests), n=1, cutoff=0.75)
    return f" (did you mean --{close[0]}?)" if close else ""


# --------------------------------------------------------------------------- parsing


def _has_gpu() -> bool:
    import torch

    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


def parse_args(parser, argv: Sequence[str], prog: str, aliases: dict[str, str] | None = None):
    """Parse ``--config`` + flags into ``parser``'s dataclasses (see the module docstring).

    Returns the tuple of dataclass instances, like ``TrlParser.parse_args_and_config``.
    """
    import dataclasses

    import yaml

    args = strip_global_options(argv)
    parser.allow_abbrev = False  # a misspelt flag is an error, never silently a prefix of another one
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    config_path = None
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            raise UsageError("`--config` needs a YAML file")
        config_path = args[i + 1]
        del args[i:i + 2]
    args = _rename_argv(args, dests, prog, aliases)
    explicit: set[str] = set()
    if config_path is not None:
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"`config`: no such file or directory: {config_path}")
        with open(config_path) as f:
            try:
                config = yaml.safe_load(f)
            except yaml.YAMLError as err:
                raise UsageError(f"`config` {config_path} is not valid YAML: {err}") from None
        if config is None:
            config = {}
        if not isinstance(config, dict):
            raise UsageError(f"`config` {config_path} must hold a YAML mapping of option: value")
        for key, value in (config.pop("env", None) or {}).items():
            os.environ[str(key)] = str(value)
        if "num_threads" in config:
            strip_global_options(["--num_threads", str(config.pop("num_threads"))])
        renamed = {}
        for key, value in config.items():
            dest = resolve_name(str(key), dests, prog, aliases) if key not in dests or key in _OLD_NAMES else str(key)
            if dest not in dests:
                raise UsageError(f"unrecognised key `{key}` in config file {config_path}{_suggest(str(key), dests)}")
            renamed[dest] = value
        parser.set_defaults_with_config(**renamed)
        explicit |= set(renamed)
    namespace, rest = parser.parse_known_args(args=args)
    if rest:
        unknown = [r for r in rest if r.startswith("-")] or rest
        hint = _suggest(unknown[0].lstrip("-").split("=")[0], dests)
        raise UsageError(f"unrecognised argument(s): {' '.join(unknown)}{hint}; see `{prog} --help`")
    explicit |= {a[2:].split("=")[0] for a in args if a.startswith("--")}
    _auto_device(namespace, explicit, prog)
    outputs = []
    for dtype in parser.dataclass_types:
        keys = {f.name for f in dataclasses.fields(dtype) if f.init}
        outputs.append(dtype(**{k: v for k, v in vars(namespace).items() if k in keys}))
    apply_num_threads(prog)
    return tuple(outputs)


def _auto_device(namespace, explicit: set[str], prog: str) -> None:
    """No GPU: ``bf16=False`` and ``use_cpu=True`` unless the user set them (said once on stderr)."""
    wanted = {k: v for k, v in (("bf16", False), ("use_cpu", True)) if hasattr(namespace, k) and k not in explicit}
    if not wanted or _has_gpu():
        return
    changed = {k: v for k, v in wanted.items() if getattr(namespace, k) != v}
    for key, value in wanted.items():
        setattr(namespace, key, value)
    if changed:
        _info(prog, "no GPU found: using " + ", ".join(f"{k}={str(v).lower()}" for k, v in changed.items())
              + " (set them explicitly to override)")


# --------------------------------------------------------------------------- errors


def run_command(prog: str, fn: Callable[[], object]) -> int:
    """Run ``fn``: 0 on success; a one-line error and 2 for bad options / data, 1 for other failures.

    With ``--debug`` / ``SEGRL_DEBUG=1`` the full traceback is printed too.
    """
    try:
        fn()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as err:
        if debug_enabled():
            traceback.print_exc()
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the CLI's last line of defence: one line, exit 1
        if debug_enabled():
            traceback.print_exc()
        hint = "" if debug_enabled() else f" (run with --debug or {DEBUG_ENV}=1 for the traceback)"
        print(f"{prog}: error: {type(err).__name__}: {err}{hint}", file=sys.stderr)
        return 1
    return 0


def release_process_group() -> None:
    """Destroy torch.distributed's default process group, if a command created one.

    A process that exits with a live Gloo group can abort during interpreter shutdown ("terminate called
    without an active exception", SIGABRT; pytorch/pytorch#190489), which turns a finished ``torchrun``
    run into a failed one. Destroying the group is local to the process (no collective), so it is safe
    on the error path too.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def command_main(prog: str, argv: Sequence[str] | None, make_parser: Callable, run: Callable,
                 help_groups: Sequence[tuple[str, str]] = (), inherited: str = "",
                 common: Sequence[tuple[str, str]] = (), aliases: dict[str, str] | None = None) -> int:
    """The whole ``main`` of a dataclass-configured command: fast help, parse, run, errors."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(fast_help(prog, help_groups, inherited=inherited, common=common))
        return 0
    if "--help-all" in argv:
        try:
            make_parser().parse_args(["--help"])  # argparse prints everything and exits 0
        except SystemExit as exit_:
            return int(exit_.code or 0)
        return 0
    holder: dict = {}

    def _parse_and_run():
        holder["args"] = parse_args(make_parser(), argv, prog, aliases)
        return run(*holder["args"])

    return run_command(prog, _parse_and_run)


# --------------------------------------------------------------------------- fast help

_SEGRL_ROOT = Path(__file__).resolve().parents[1]


def pipeline_command_main(prog: str, argv: Sequence[str] | None, parse_config: Callable, validate: Callable,
                          run: Callable) -> int:
    """Entry point of the pipeline commands (``segrl demo``, ``segrl experiment``): parse the config
    dataclass, check it (exit 2 with a one-line error), then run it with the command line recorded."""
    import shlex

    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # CPU-only runs: keeps deepspeed's accelerator probe quiet
    cfg = parse_config(argv)
    try:
        validate(cfg)
    except ValueError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    run(cfg, command=f"{prog} " + " ".join(shlex.quote(a) for a in argv))
    return 0


def _module_file(module: str) -> Path | None:
    parts = module.split(".")
    if parts[0] != "segrl":
        return None
    base = _SEGRL_ROOT.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_ast(module: str):
    path = _module_file(module)
    return ast.parse(path.read_text(encoding="utf-8")) if path is not None else None


def _constant(module: str, name: str, depth: int = 0) -> object:
    """Value of a module-level constant ``name`` of a segrl module (following ``from segrl.x import``)."""
    tree = _module_ast(module) if depth < 4 else None
    if tree is None:
        return name
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets) and node.value is not None:
                return _literal(node.value, module, depth + 1)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("segrl"):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return _constant(node.module, alias.name, depth + 1)
    return name


def _literal(node, module: str = "", depth: int = 0) -> object:
    try:
        return ast.literal_eval(node)
    except Exception:  # noqa: BLE001 - names are looked up, anything else is shown as source text
        if isinstance(node, ast.Name) and module:
            return _constant(module, node.id, depth)
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("list", "tuple") and len(node.args) == 1:
            return _literal(node.args[0], module, depth)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "join"
                and len(node.args) == 1):
            sep, items = _literal(node.func.value, module, depth), _literal(node.args[0], module, depth)
            if isinstance(sep, str) and isinstance(items, (list, tuple)):
                return sep.join(map(str, items))
        if isinstance(node, ast.JoinedStr):  # f"..." help strings
            return "".join(str(_literal(v.value, module, depth)) if isinstance(v, ast.FormattedValue)
                           else str(v.value) for v in node.values)
        if isinstance(node, ast.Lambda):
            return _literal(node.body, module, depth)
        return ast.unparse(node)


def _class_fields(module: str, name: str, seen: set | None = None) -> tuple[list[tuple[str, object, str]], list[str]]:
    """Fields ``(name, default, help)`` of dataclass ``module.name`` read from its source, segrl bases
    first; and the names of the non-segrl (inherited TRL / transformers) bases."""
    seen = seen if seen is not None else set()
    path = _module_file(module)
    if path is None or (module, name) in seen:
        return [], [name]
    seen.add((module, name))
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imports = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                imports[alias.asname or alias.name] = node.module
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)
    if cls is None:
        return [], []
    fields: list[tuple[str, object, str]] = []
    external: list[str] = []
    for base in cls.bases:
        base_name = ast.unparse(base)
        if any(isinstance(n, ast.ClassDef) and n.name == base_name for n in tree.body):
            sub, ext = _class_fields(module, base_name, seen)
        elif base_name in imports and imports[base_name].startswith("segrl"):
            sub, ext = _class_fields(imports[base_name], base_name, seen)
        else:
            sub, ext = [], [base_name]
        fields += sub
        external += ext
    for stmt in cls.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        fname = stmt.target.id
        if fname.startswith("_"):
            continue
        default, help_ = "(required)", ""
        value = stmt.value
        if isinstance(value, ast.Call) and ast.unparse(value.func).endswith("field"):
            for kw in value.keywords:
                if kw.arg == "default":
                    default = _literal(kw.value, module)
                elif kw.arg == "default_factory":
                    default = _literal(kw.value, module) if isinstance(kw.value, ast.Lambda) else (
                        ast.unparse(kw.value) + "()")
                elif kw.arg == "metadata" and isinstance(kw.value, ast.Dict):
                    for key, val in zip(kw.value.keys, kw.value.values):
                        key = _literal(key) if key is not None else None
                        if key == "help":
                            help_ = str(_literal(val, module))
                        elif key == "choices":
                            choices = _literal(val, module)
                            if isinstance(choices, (list, tuple)):
                                help_ += " {" + ", ".join(map(str, choices)) + "}"
        elif value is not None:
            default = _literal(value, module)
        fields = [f for f in fields if f[0] != fname] + [(fname, default, help_)]
    return fields, external


def _doc_summary(module: str) -> str:
    path = _module_file(module)
    if path is None:
        return ""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def _format_option(flag: str, help_: str, width: int = 100) -> list[str]:
    head = f"  {flag}"
    body = textwrap.wrap(help_, width=width - 30) or [""]
    if len(head) <= 28:
        lines = [f"{head:<30}{body[0]}"]
    else:
        lines = [head, " " * 30 + body[0]]
    return lines + [" " * 30 + line for line in body[1:]]


def fast_help(prog: str, groups: Sequence[tuple[str, str]], *, inherited: str = "",
              common: Sequence[tuple[str, str]] = ()) -> str:
    """``--help`` text: segrl's own options by group (read from the source, nothing heavy imported),
    then the most used inherited options, then the global ones."""
    from segrl.cli import COMMANDS

    name = prog.split()[-1]
    command_module = COMMANDS[name][0] if name in COMMANDS else (groups[0][1].split(":")[0] if groups else "")
    lines = [f"usage: {prog} [--config FILE.yaml] [--flag value ...]", ""]
    summary = _doc_summary(command_module) if command_module else ""
    if summary:
        lines += textwrap.wrap(summary.replace("``", "`"), width=100) + [""]
    shown: set[str] = set()
    externals: list[str] = []
    all_names: set[str] = set()
    group_fields = []
    for title, target in groups:
        module, cls = target.split(":")
        fields, ext = _class_fields(module, cls)
        externals += [e for e in ext if e not in externals and e != cls]
        group_fields.append((title, fields))
        all_names |= {f[0] for f in fields}
    all_names |= {name for name, _ in common}
    renames = {dest: canonical for canonical, dest in canonical_dests(all_names).items() if canonical != dest}
    # A config that renamed a field keeps the old one as a deprecated alias (segrl.deprecation): it is
    # listed on the new name's line, not as an option of its own.
    kept_old = {name: canonical for canonical, old in CONCEPTS.items() if canonical in all_names
                for name in old if name in all_names and name not in DISTINCT_OPTIONS}
    for title, fields in group_fields:
        body = []
        for fname, default, help_ in fields:
            if fname in shown or fname in kept_old:
                continue
            shown.add(fname)
            flag = f"--{renames.get(fname, fname)}"
            if isinstance(default, str) and default != default.strip() or isinstance(default, str) and "\n" in default:
                default = repr(default)
            extra = f" (default: {default})" if default not in ("(required)", None, "") else (
                " (required)" if default == "(required)" else "")
            old_names = ([fname] if fname in renames else []) + [o for o, c in kept_old.items() if c == fname]
            alias = "".join(f" [deprecated name: --{o}]" for o in old_names)
            body += _format_option(flag, f"{help_}{extra}{alias}")
        if body:
            lines += [f"{title}:"] + body + [""]
    common = [(n, h) for n, h in common if n not in shown]
    if common:
        lines += ["common inherited options (see --help-all for all of them):"]
        for name, help_ in common:
            lines += _format_option(f"--{renames.get(name, name)}", help_)
        lines.append("")
    lines += ["global options:"]
    for flag, help_ in GLOBAL_HELP:
        lines += _format_option(flag, help_)
    if externals or inherited:
        lines += ["", f"Inherited options ({inherited or ', '.join(externals)}) are listed by `{prog} --help-all`."]
    return "\n".join(lines)


TRAINING_COMMON = [
    ("model_name_or_path", "Model to start from: a local directory or a Hub id."),
    ("output_dir", "Where checkpoints and the final model are written."),
    ("max_steps", "Stop after this many optimiser steps (overrides num_train_epochs)."),
    ("num_train_epochs", "Passes over the training data."),
    ("per_device_train_batch_size", "Rows per device per step."),
    ("learning_rate", "Peak learning rate."),
    ("max_length", "Longest prompt + response in tokens."),
    ("save_strategy", "no | steps | epoch."),
    ("logging_steps", "Log every N steps."),
    ("report_to", "none | tensorboard | wandb ..."),
    ("resume_from_checkpoint", "A checkpoint directory, or `last` for the newest complete one in output_dir."),
    ("bf16", "bfloat16 training (default on a GPU; off without one)."),
    ("use_cpu", "Train on the CPU even if a GPU is present (on automatically without one)."),
    ("seed", "Random seed."),
]
