"""Run untrusted Python (model-written code) in a child process with time and memory limits.

Every program runs in a fresh interpreter (``python -I -B``: isolated mode, no user site, no
``PYTHON*`` variables, no bytecode files) in a new session / process group, with its own temporary
working directory, a minimal environment, stdin closed and stdout / stderr going to size-limited
files. Limits:

- **memory**: ``RLIMIT_AS`` (address space) of ``memory_mb``; an allocation beyond it raises
  ``MemoryError`` in the program (or kills it), and the run counts as failed;
- **CPU time**: ``RLIMIT_CPU`` of ``ceil(timeout_s)`` seconds (a busy loop gets ``SIGXCPU``/``SIGKILL``);
- **wall clock**: ``timeout_s``; after it the whole process group is killed with ``SIGKILL``
  (this also catches programs that sleep or block, which use no CPU);
- **output**: ``RLIMIT_FSIZE`` caps each output file, so a print loop cannot fill the disk;
- **core dumps**: off (``SIGXCPU`` would otherwise write one into the working directory).

Why the limits are set by a bootstrap inside the child rather than in ``preexec_fn``: Python
documents ``preexec_fn`` as unsafe when the parent has threads (the child may deadlock between
``fork`` and ``exec``), and an evaluation process always has them (torch's thread pools, the
progress bar's refresh thread). The bootstrap runs ``resource.setrlimit`` as the child
interpreter's first statement, before the program's code is even read, so the effect is the same.

After the program ends (or is killed), the process group is killed as well, so a program that
forks helpers leaves nothing behind. This is a guard against *accidents* (infinite loops, runaway
allocation, stray children), not a security boundary: a program that deliberately calls
``setsid`` escapes the group, and nothing stops network or file-system access outside the working
directory. Run untrusted code from unknown sources inside a container or VM. POSIX only; the
memory limit is enforced on Linux (macOS ignores ``RLIMIT_AS``).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SandboxResult", "run_python"]

# The bootstrap the child interpreter runs first; argv: memory bytes, cpu seconds, output bytes, program.
_BOOTSTRAP = """\
import resource, runpy, sys
def _limit(kind, soft, hard=None):
    hard = soft if hard is None else hard
    cap = resource.getrlimit(kind)[1]
    if cap != resource.RLIM_INFINITY:
        soft, hard = min(soft, cap), min(hard, cap)
    resource.setrlimit(kind, (soft, hard))
_mem, _cpu, _out, _path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
_limit(resource.RLIMIT_CORE, 0)
_limit(resource.RLIMIT_FSIZE, _out)
_limit(resource.RLIMIT_CPU, _cpu, _cpu + 1)  # SIGXCPU at the soft limit, SIGKILL a second later
_limit(resource.RLIMIT_AS, _mem)
sys.argv = [_path]
del _limit, _mem, _cpu, _out, _path, resource
runpy.run_path(sys.argv[0], run_name="__main__")
"""

_TAIL = 4000  # characters of stdout / stderr kept in the result


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one :func:`run_python` call.

    Attributes:
        status: ``"passed"`` (exit code 0 within the limits), ``"failed"`` (non-zero exit or an
            exception), ``"timeout"`` (wall-clock or CPU limit) or ``"memory"`` (``MemoryError``).
        returncode: the exit code, negative for a signal (as :mod:`subprocess` reports it).
        stdout, stderr: the last few thousand characters of each.
        wall_s: seconds from start to the end of the process.
    """

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left in the group


def _wait_unreaped(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait until ``proc`` exits *without reaping it*; False on timeout.

    While the leader is an unreaped zombie its pid, and so the group id, cannot be reused by an
    unrelated process, which makes the ``killpg`` that follows safe. Without ``os.waitid`` (macOS
    before Python 3.13) it falls back to an ordinary wait, leaving a tiny pid-reuse window.
    """
    if not hasattr(os, "waitid"):
        try:
            proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout_s
    delay = 0.002
    while True:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None and info.si_pid == proc.pid:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4 * _TAIL))
            return f.read().decode("utf-8", errors="replace")[-_TAIL:]
    except OSError:
        return ""


def run_python(program: str, *, timeout_s: float = 10.0, memory_mb: int = 1024, max_output_mb: int = 8,
               python: str | None = None) -> SandboxResult:
    """Run ``program`` (Python source) in a limited child process; see the module docstring.

    Args:
        program: the source to run as ``__main__``.
        timeout_s: wall-clock limit in seconds (the CPU limit is its ceiling).
        memory_mb: address-space limit in MiB. The interpreter itself needs some (about 30 MiB).
        max_output_mb: size limit of each of stdout / stderr.
        python: interpreter to use (default: this one).
    """
    if os.name != "posix":
        raise OSError("segrl's sandbox needs a POSIX system (process groups and resource limits)")
    if not isinstance(program, str):
        raise ValueError(f"`program` must be a str, got {type(program).__name__}")
    if not timeout_s > 0:
        raise ValueError(f"`timeout_s` must be > 0, got {timeout_s}")
    if memory_mb < 32:
        raise ValueError(f"`memory_mb` must be >= 32 (the interpreter needs that much), got {memory_mb}")
    if max_output_mb < 1:
        raise ValueError(f"`max_output_mb` must be >= 1, got {max_output_mb}")
    with tempfile.TemporaryDirectory(prefix="segrl-sandbox-") as root:
        root_path = Path(root)
        work = root_path / "work"
        work.mkdir()
        prog_path = root_path / "program.py"  # outside the working directory: the program cannot edit it
        prog_path.write_text(program, encoding="utf-8")
        out_path, err_path = root_path / "stdout.txt", root_path / "stderr.txt"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "TMPDIR": str(work),
               "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
        cmd = [python or sys.executable, "-I", "-B", "-c", _BOOTSTRAP, str(memory_mb * 2**20),
               str(math.ceil(timeout_s)), str(max_output_mb * 2**20), str(prog_path)]
        start = time.monotonic()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True, close_fds=True)
        try:
            finished = _wait_unreaped(proc, timeout_s)
        finally:
            # Kill helpers the program forked (and the program itself on timeout) before reaping
            # the leader; also runs on KeyboardInterrupt so nothing outlives the evaluation.
            _kill_group(proc.pid)
            proc.wait()
        wall = time.monotonic() - start
        stdout, stderr = _tail(out_path), _tail(err_path)
    code = proc.returncode
    if not finished or code == -signal.SIGXCPU:
        status = "timeout"
    elif code == 0:
        status = "passed"
    elif "MemoryError" in stderr:
        status = "memory"
    else:
        status = "failed"
    return SandboxResult(status, code, stdout, stderr, wall)
