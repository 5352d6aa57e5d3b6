"""Run untrusted Python (model-written code) in a child process with time, memory and process limits.

Process layout (Linux)::

    evaluator (this process, threaded)
      └─ supervisor: `python -I -B`, its own session, single-threaded, child subreaper
           └─ program: `python -I -B`, its own session / process group (setsid), the limits below

The **supervisor** is a small separate interpreter that starts the program, enforces the wall-clock
limit, counts the program's processes and, when the program ends, kills every process the program
started and reports the exit status to the evaluator over a private pipe. It is a *child
subreaper* (``PR_SET_CHILD_SUBREAPER``), so a detached grandchild (``fork`` + ``setsid``) is
re-parented to it rather than to init and is found and killed too. The evaluator's pid is never the
program's parent: ``os.kill(os.getppid(), 9)`` reaches the supervisor at most, and the evaluator then
does the clean-up itself.

A program **passes** only if it ran to its last statement: the program's bootstrap reads a per-run
random token from a pipe (the token is not in the program's source, argv or environment) and prints
it after the program's code returns; the evaluator checks for it. ``raise SystemExit(0)``,
``sys.exit(0)``, ``os._exit(0)`` or a killed program exit without it and fail, whatever their exit
status. For HumanEval the last statement is ``check(entry_point)``, so the token means the checks ran.

Limits of the program:

- **memory**: ``RLIMIT_AS`` (address space) of ``memory_mb``; an allocation beyond it raises
  ``MemoryError`` in the program (or kills it), and the run counts as failed;
- **CPU time**: ``RLIMIT_CPU`` of ``ceil(timeout_s)`` seconds (a busy loop gets ``SIGXCPU``/``SIGKILL``);
- **wall clock**: ``timeout_s``; after it every process of the program is killed with ``SIGKILL``
  (this also catches programs that sleep or block, which use no CPU);
- **processes**: at most ``max_processes`` at once. ``RLIMIT_NPROC`` enforces it for an unprivileged
  user (counting threads too, over the user's processes at the start plus ``max_processes``); it
  does not bind root (the kernel exempts uid 0), so the supervisor also counts
  the program's processes every few milliseconds and kills them all once there are more (a fork
  bomb then fails with "too many processes" within milliseconds instead of filling the process table);
- **user**: when the evaluator runs as root, the program runs as ``nobody`` (no supplementary groups)
  if the interpreter is usable by that user (probed once; an interpreter under ``/root`` is not).
  It then cannot signal the supervisor or the evaluator, owns only its working directory, and
  ``RLIMIT_NPROC`` binds. Otherwise it stays root, with the process count above;
- **output**: ``RLIMIT_FSIZE`` caps each output file, so a print loop cannot fill the disk;
- **core dumps**: off (``SIGXCPU`` would otherwise write one into the working directory).

Clean-up never raises and leaves no process behind: the program's process group is killed, then
``/proc`` is scanned (repeatedly, until nothing is left) for processes that descend from the
supervisor, share the program's session id, or carry the run's id in their environment, and those
are killed. The temporary directory is removed after that. A run that cannot even start (e.g. the
system is out of processes) is reported as a failed run, never as an exception.

Contained: early exits with status 0, killing the parent, detached children (including ones writing
into the working directory after the program ends), fork bombs, busy loops, sleeps, runaway
allocation and output. Not contained: this is not a security boundary. The program runs as the
evaluator's user (or ``nobody``, see above), with network and file-system access outside its working
directory; a program written to defeat the sandbox can read the token out of its own interpreter's
memory, clear its environment and ``setsid`` away after killing the supervisor, or signal other
processes of the same user (when it is not ``nobody``: the evaluator too). Run code from unknown
sources inside a container or VM. POSIX only; the subreaper, ``/proc`` scans and the memory limit
are Linux features (elsewhere clean-up is by process group only).

Why the limits are set by a bootstrap inside the program's interpreter rather than before ``exec``:
``RLIMIT_AS`` would otherwise count the interpreter's start-up; the bootstrap runs
``resource.setrlimit`` as its first statement, before the program's code is even read.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SandboxResult", "run_python"]

# The program interpreter's bootstrap; argv: memory bytes, cpu seconds, output bytes, token fd, program.
_BOOTSTRAP = """\
import os, resource, runpy, sys
def _limit(kind, soft, hard=None):
    hard = soft if hard is None else hard
    cap = resource.getrlimit(kind)[1]
    if cap != resource.RLIM_INFINITY:
        soft, hard = min(soft, cap), min(hard, cap)
    resource.setrlimit(kind, (soft, hard))
_mem, _cpu, _out, _fd = (int(a) for a in sys.argv[1:5])
_path = sys.argv[5]
_token = os.read(_fd, 256)
os.close(_fd)
_limit(resource.RLIMIT_CORE, 0)
_limit(resource.RLIMIT_FSIZE, _out)
_limit(resource.RLIMIT_CPU, _cpu, _cpu + 1)  # SIGXCPU at the soft limit, SIGKILL a second later
_limit(resource.RLIMIT_AS, _mem)
sys.argv = [_path]
del _limit, _mem, _cpu, _out, _fd, _path, resource
runpy.run_path(sys.argv[0], run_name="__main__")
# Reached only when the program's last statement returned (no exit, no exception, not killed).
sys.stdout.flush()
sys.stderr.flush()
os.write(1, b"\\n" + _token + b"\\n")
os._exit(0)
"""

# The supervisor; reads its configuration (JSON) from stdin, reports over the status fd.
_SUPERVISOR = r"""
import json, os, resource, signal, subprocess, sys, time
cfg = json.loads(sys.stdin.read())
status_fd = cfg["status_fd"]
os.set_inheritable(status_fd, False)
me = os.getpid()

def report(**kw):
    try:
        os.write(status_fd, (json.dumps(kw) + "\n").encode())
    except OSError:
        pass

try:  # orphaned descendants (double fork + setsid) become our children, not init's
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
except Exception:
    pass

def procs():
    # pid -> (ppid, sid) of every process in /proc
    out = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open("/proc/" + name + "/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            if fields[0] != b"Z":  # zombies are dead already (reaped below or by their parent)
                out[int(name)] = (int(fields[1]), int(fields[3]))
        except (OSError, IndexError, ValueError):
            pass
    return out

def sandboxed(sid):
    # our descendants and the program's session (never ourselves)
    table = procs()
    found = {p for p, (_, s) in table.items() if s == sid}
    children = {}
    for p, (pp, _) in table.items():
        children.setdefault(pp, []).append(p)
    stack = list(children.get(me, []))
    while stack:
        p = stack.pop()
        if p not in found:
            found.add(p)
        stack.extend(c for c in children.get(p, []) if c not in found)
    found.discard(me)
    return found

def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return

def kill_all(sid):
    for _ in range(200):
        try:
            os.killpg(sid, signal.SIGKILL)
        except OSError:
            pass
        left = sandboxed(sid)
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        reap()
        if not left:
            return
        time.sleep(0.005)

def user_tasks(uid):
    n = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/" + name + "/status") as f:
                    st = f.read()
                if int(st.split("\nUid:")[1].split()[0]) == uid:
                    n += int(st.split("\nThreads:")[1].split()[0])
            except (OSError, IndexError, ValueError):
                pass
    return n

limit, user = cfg["max_processes"], cfg["user"]  # user: [uid, gid] to run the program as, or None
uid = os.getuid() if user is None else user[0]
nproc = None
if uid != 0 and os.path.isdir("/proc"):  # RLIMIT_NPROC counts every task of the program's user
    nproc = user_tasks(uid) + limit

def setup():
    os.setsid()
    if user is not None:
        os.setgroups([])
        os.setgid(user[1])
        os.setuid(user[0])
    if nproc is not None:
        cap = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        n = nproc if cap == resource.RLIM_INFINITY else min(nproc, cap)
        resource.setrlimit(resource.RLIMIT_NPROC, (n, n))

tr, tw = os.pipe()
os.write(tw, cfg["token"].encode())
os.close(tw)
start = time.monotonic()
try:
    child = subprocess.Popen(cfg["cmd"], cwd=cfg["cwd"], env=cfg["env"], stdin=subprocess.DEVNULL,
                             pass_fds=(tr,), preexec_fn=setup, close_fds=True)
except (OSError, subprocess.SubprocessError) as err:
    report(error="could not start the program: %s" % err)
    sys.exit(0)
os.close(tr)
report(pid=child.pid)
sid, deadline, reason, delay = child.pid, start + cfg["timeout_s"], None, 0.002
count = nproc is None and os.path.isdir("/proc")  # RLIMIT_NPROC does not bind root: count ourselves
while True:
    try:
        child.wait(timeout=min(delay, max(deadline - time.monotonic(), 0.0)))
        break
    except subprocess.TimeoutExpired:
        pass
    delay = min(delay * 2, 0.02)
    if time.monotonic() >= deadline:
        reason = "timeout"
        break
    if count and len(sandboxed(sid)) > limit:
        reason = "processes"
        break
try:
    os.killpg(sid, signal.SIGKILL)
except OSError:
    pass
child.wait()
kill_all(sid)
report(returncode=child.returncode, reason=reason, wall_s=time.monotonic() - start)
"""

_TAIL = 4000  # characters of stdout / stderr kept in the result
_UNPRIVILEGED = "nobody"  # the user programs run as when the evaluator is root
_CAN_DROP: dict[str, tuple[int, int] | None] = {}  # interpreter -> (uid, gid) it runs as unprivileged, or None
_GRACE_S = 10.0  # how long the evaluator waits for the supervisor beyond the program's timeout
_RUN_ENV = "SEGRL_SANDBOX_RUN"


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one :func:`run_python` call.

    Attributes:
        status: ``"passed"`` (ran to its end, exit code 0, within the limits), ``"failed"`` (non-zero
            exit, an exception, an early exit, too many processes, or the run could not start),
            ``"timeout"`` (wall-clock or CPU limit) or ``"memory"`` (``MemoryError``).
        returncode: the program's exit code, negative for a signal (as :mod:`subprocess` reports it);
            None when it is unknown (the supervisor was killed, or the program never started).
        stdout, stderr: the last few thousand characters of each (without the completion token);
            the sandbox appends a ``segrl sandbox: ...`` line to stderr when it failed a run itself.
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


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4 * _TAIL))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _stat(pid: str) -> tuple[int, int] | None:
    """(parent pid, session id) of a live process; None for a zombie or a process gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return None if fields[0] == b"Z" else (int(fields[1]), int(fields[3]))
    except (OSError, IndexError, ValueError):
        return None


def _leftovers(run_id: str, sids: set[int], parent: int | None) -> list[int]:
    """Processes of this run still alive: in one of ``sids``, children of ``parent``, or marked by ``run_id``."""
    try:
        names = [n for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return []
    marker = f"{_RUN_ENV}={run_id}".encode()
    me, found = os.getpid(), []
    for name in names:
        pid = int(name)
        if pid == me:
            continue
        st = _stat(name)
        if st is None:
            continue
        hit = st[1] in sids or (parent is not None and st[0] == parent)
        if not hit:
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    hit = marker in f.read().split(b"\0")
            except OSError:
                pass
        if hit:
            found.append(pid)
    return found


def _kill_everything(run_id: str, sids: set[int], parent: int | None) -> None:
    """SIGKILL every process of the run until none is left; never raises."""
    for pgid in sids:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
    if not os.path.isdir("/proc"):
        return
    for _ in range(100):
        left = _leftovers(run_id, sids, parent)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)


def _remove_tree(path: str) -> None:
    def make_writable_and_retry(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    for _ in range(3):
        try:
            shutil.rmtree(path, onerror=make_writable_and_retry)
        except OSError:
            pass
        if not os.path.exists(path):
            return
        time.sleep(0.05)


def _unprivileged_user(python: str) -> tuple[int, int] | None:
    """``(uid, gid)`` of :data:`_UNPRIVILEGED` when this process is root and ``python`` runs as that user.

    Probed once per interpreter: an interpreter under a directory only root may enter (``/root``, a
    pyenv there) cannot run as ``nobody``; the program then stays root and the supervisor's process
    count replaces ``RLIMIT_NPROC``.
    """
    if os.geteuid() != 0 or not hasattr(os, "setuid"):
        return None
    if python not in _CAN_DROP:
        user = None
        try:
            import pwd

            entry = pwd.getpwnam(_UNPRIVILEGED)
            probe = subprocess.run([python, "-I", "-B", "-c", "pass"], user=entry.pw_uid, group=entry.pw_gid,
                                   extra_groups=[], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, cwd="/", env={"PATH": "/usr/bin:/bin"}, timeout=30)
            if probe.returncode == 0 and entry.pw_uid != 0:
                user = (entry.pw_uid, entry.pw_gid)
        except (KeyError, OSError, subprocess.SubprocessError):
            pass
        _CAN_DROP[python] = user
    return _CAN_DROP[python]


def _read_status(fd: int) -> dict:
    chunks = []
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:
        pass
    status = {}
    for line in b"".join(chunks).decode("utf-8", errors="replace").splitlines():
        try:
            status.update(json.loads(line))
        except ValueError:
            pass
    return status


def run_python(program: str, *, timeout_s: float = 10.0, memory_mb: int = 1024, max_output_mb: int = 8,
               max_processes: int = 64, python: str | None = None) -> SandboxResult:
    """Run ``program`` (Python source) in a limited child process; see the module docstring.

    Args:
        program: the source to run as ``__main__``; it passes only if it runs to its end.
        timeout_s: wall-clock limit in seconds (the CPU limit is its ceiling).
        memory_mb: address-space limit in MiB. The interpreter itself needs some (about 30 MiB).
        max_output_mb: size limit of each of stdout / stderr.
        max_processes: most processes (and threads) the program may have at once, itself included.
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
    if max_processes < 1:
        raise ValueError(f"`max_processes` must be >= 1, got {max_processes}")
    python = python or sys.executable
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise ValueError(f"`python` must be an executable interpreter, got {python!r}")
    token, run_id = secrets.token_hex(16), secrets.token_hex(8)
    root = tempfile.mkdtemp(prefix="segrl-sandbox-")
    try:
        return _run(program, root, token, run_id, timeout_s, memory_mb, max_output_mb, max_processes, python)
    finally:
        _remove_tree(root)


def _run(program, root, token, run_id, timeout_s, memory_mb, max_output_mb, max_processes, python) -> SandboxResult:
    root_path = Path(root)
    work = root_path / "work"
    work.mkdir()
    prog_path = root_path / "program.py"  # outside the working directory: the program cannot edit it
    prog_path.write_text(program, encoding="utf-8")
    user = _unprivileged_user(python)
    if user is not None:  # the program may enter the directory and read its source, but owns only `work`
        os.chmod(root_path, 0o711)
        os.chmod(prog_path, 0o644)
        os.chown(work, *user)
    out_path, err_path = root_path / "stdout.txt", root_path / "stderr.txt"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "TMPDIR": str(work),
           "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", _RUN_ENV: run_id}
    cmd = [python, "-I", "-B", "-c", _BOOTSTRAP, str(memory_mb * 2**20), str(math.ceil(timeout_s)),
           str(max_output_mb * 2**20), "3", str(prog_path)]
    status_r, status_w = os.pipe()
    config = {"cmd": cmd, "cwd": str(work), "env": env, "token": token, "timeout_s": timeout_s,
              "max_processes": max_processes, "status_fd": status_w, "user": user}
    start = time.monotonic()
    sup = None
    sids: set[int] = set()
    try:
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                sup = subprocess.Popen([python, "-I", "-B", "-c", _SUPERVISOR], stdin=subprocess.PIPE, stdout=out,
                                       stderr=err, env={"PATH": env["PATH"], "LANG": "C.UTF-8"},
                                       start_new_session=True, close_fds=True, pass_fds=(status_w,))
            except OSError as error:
                return SandboxResult("failed", None, "", f"segrl sandbox: could not start: {error}", 0.0)
            finally:
                os.close(status_w)
        sids.add(sup.pid)
        try:
            sup.stdin.write(json.dumps(config, ensure_ascii=True).encode())
            sup.stdin.close()
        except OSError:
            pass
        # Wait without reaping: while the supervisor is an unreaped zombie its pid (the parent of
        # orphans it adopted, and its group id) cannot be reused by an unrelated process.
        hung = not _wait_unreaped(sup, timeout_s + _GRACE_S)
        if hung:  # kill it so the status pipe reaches end of file
            try:
                os.killpg(sup.pid, signal.SIGKILL)
            except OSError:
                pass
            _wait_unreaped(sup, _GRACE_S)
        report = _read_status(status_r)
        if "pid" in report:
            sids.add(int(report["pid"]))
    finally:
        # Also on KeyboardInterrupt: nothing of the run outlives this call.
        _kill_everything(run_id, sids, sup.pid if sup is not None else None)
        if sup is not None:
            try:
                sup.kill()
            except OSError:
                pass
            sup.wait()
        os.close(status_r)
    wall = time.monotonic() - start
    stdout, stderr = _tail(out_path), _tail(err_path)
    return _judge(report, token, stdout, stderr, wall, sup.returncode, hung)


def _wait_unreaped(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait until ``proc`` exits *without reaping it*; False on timeout.

    Without ``os.waitid`` (macOS before Python 3.13) it falls back to an ordinary wait, leaving a
    tiny pid-reuse window.
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
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        if info is not None and info.si_pid == proc.pid:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)


def _judge(report: dict, token: str, stdout: str, stderr: str, wall: float, sup_code: int | None,
           hung: bool) -> SandboxResult:
    mark = f"\n{token}\n"
    completed = mark in stdout
    if completed:
        i = stdout.rindex(mark)
        stdout = stdout[:i] + stdout[i + len(mark):]
    stdout, stderr = stdout[-_TAIL:], stderr[-_TAIL:]
    code = report.get("returncode")
    reason = report.get("reason")

    def note(message):
        sep = "\n" if stderr and not stderr.endswith("\n") else ""
        return (stderr + sep + f"segrl sandbox: {message}\n")[-_TAIL:]

    if "error" in report:
        return SandboxResult("failed", None, stdout, note(report["error"]), wall)
    if "returncode" not in report:
        if hung:
            return SandboxResult("timeout", None, stdout, note("the supervisor did not finish in time"), wall)
        why = f"the supervisor ended without a report (exit status {sup_code}; was it killed by the program?)"
        return SandboxResult("failed", None, stdout, note(why), wall)
    if reason == "timeout" or code == -signal.SIGXCPU:
        return SandboxResult("timeout", code, stdout, stderr, wall)
    if reason == "processes":
        return SandboxResult("failed", code, stdout, note("too many processes; all were killed"), wall)
    if code == 0 and completed:
        return SandboxResult("passed", code, stdout, stderr, wall)
    if "MemoryError" in stderr:
        return SandboxResult("memory", code, stdout, stderr, wall)
    if code == 0:
        stderr = note("the program exited before its end (exit status 0 without running to its last statement)")
    return SandboxResult("failed", code, stdout, stderr, wall)
