"""The README's code, run as written (keeps the README true).

- The Python quickstart blocks are executed verbatim, in order, in an empty directory, on the CPU.
- The CLI quickstart block is executed verbatim by bash in an empty directory (slow: it trains).
- Every other ``python`` block compiles and every ``segrl`` name it imports exists; every
  ``segrl <command> ...`` line of every ``bash`` block parses with that command's options (no
  unrecognised flag, no deprecated name). Blocks that need a GPU cluster, the whole demo or files
  the README does not create are checked this way rather than run.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}


def _blocks(lang: str, start: str | None = None, end: str | None = None) -> list[str]:
    text = README.read_text(encoding="utf-8")
    if start is not None:
        text = text[text.index(start): text.index(end) if end else None]
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_python_quickstart_runs_verbatim(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = _blocks("python", "## Quickstart (Python)", "## Quickstart (CLI)")
    assert len(blocks) == 4
    env: dict = {}
    for block in blocks:
        exec(compile(block, "README quickstart", "exec"), env)  # noqa: S102 - the README, verbatim
    assert env["rewards"].shape == env["mask"].shape and env["rewards"].shape[0] == 2
    assert env["keep"].dtype.is_floating_point is False and env["token_r"].shape == (2, 5)
    assert (tmp_path / "runs" / "rm" / "config.json").exists()
    assert env["args"].bf16 in (False, True)  # chosen from the hardware, never an error


@pytest.mark.slow
def test_cli_quickstart_runs_verbatim(tmp_path):
    (block,) = _blocks("bash", "## Quickstart (CLI)", "## What is implemented")
    env = {**ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{ENV.get('PATH', '')}"}
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    work = tmp_path / "segrl-examples"
    assert (work / "runs" / "rm_segment" / "config.json").is_file()
    assert (work / "runs" / "dpo_asr_segment_rm" / "model.safetensors").is_file()
    assert (work / "runs" / "ppo_segment" / "metrics.jsonl").is_file()
    assert (work / "runs" / "eval").is_dir()


def _segrl_imports(block: str):
    for node in ast.walk(ast.parse(block)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "segrl":
            for alias in node.names:
                yield node.module, alias.name


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_every_python_block_compiles_and_its_segrl_names_exist(index):
    block = textwrap.dedent(_blocks("python")[index])  # blocks inside list items are indented
    compile(block, f"README python block {index}", "exec")
    for module, name in _segrl_imports(block):
        assert hasattr(importlib.import_module(module), name), f"README imports {module}.{name}, which is gone"


# commands whose options are dataclasses parsed by segrl.commands._common
CHECKED = {"dpo", "rs", "ppo", "grpo", "train-rm", "fit-norm", "eval-rm", "make-tiny", "init"}


def _command_lines() -> list[str]:
    lines = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            for part in line.split("&&"):
                words = shlex.split(part.strip()) if part.strip() else []
                if len(words) >= 2 and words[0] == "segrl" and words[1] in CHECKED and "..." not in part:
                    lines.append(part.strip())
    return lines


@pytest.mark.parametrize("line", _command_lines())
def test_every_segrl_command_line_parses(line, capsys, monkeypatch):
    from segrl.cli import COMMANDS
    from segrl.commands._common import parse_args

    monkeypatch.chdir(ROOT)
    for var in ("SEGRL_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)  # --num_threads in a line must not leak into later tests
    words = shlex.split(line)
    command, args = words[1], words[2:]
    args = [a.replace("configs/", "examples/configs/", 1) if a.startswith("configs/") else a for a in args]
    if command == "init":
        return  # positional directory: run by test_cli_basics
    module = importlib.import_module(COMMANDS[command][0])
    parse_args(module.make_parser(), args, f"segrl {command}")
    err = capsys.readouterr().err
    assert "deprecated" not in err and "unrecognised" not in err, err
