"""The HumanEval sandbox against hostile programs: each is contained and scored as a failure.

Every test also checks that no process of the run is left (by pid, or by the run marker in
``/proc/*/environ``) and that the sandbox's temporary directory is gone.
"""

import glob
import os
import sys
import tempfile
import time

import pytest

from segrl.evals.sandbox import run_python

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox's guarantees are Linux's")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _sandbox_processes() -> list[int]:
    """Live processes carrying any sandbox run marker."""
    found = []
    for path in glob.glob("/proc/[0-9]*/environ"):
        try:
            with open(path, "rb") as f:
                if b"SEGRL_SANDBOX_RUN=" in f.read():
                    pid = int(path.split("/")[2])
                    if _alive(pid):
                        found.append(pid)
        except OSError:
            pass
    return found


def _sandbox_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "segrl-sandbox-*")))


@pytest.fixture(autouse=True)
def nothing_left_behind():
    before = _sandbox_dirs()
    yield
    assert _sandbox_processes() == [], "a sandboxed process outlived run_python"
    assert _sandbox_dirs() - before == set(), "a sandbox directory was not removed"


def test_correct_solution_passes():
    r = run_python("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\nprint('ok')")
    assert r.status == "passed" and r.passed and r.returncode == 0
    assert r.stdout == "ok\n"  # the completion token is checked and removed from the output


def test_wrong_solution_fails():
    r = run_python("def add(a, b):\n    return a - b\nassert add(2, 3) == 5")
    assert r.status == "failed" and r.returncode == 1 and "AssertionError" in r.stderr


@pytest.mark.parametrize("exit_call", ["raise SystemExit(0)", "import sys; sys.exit(0)", "import os; os._exit(0)",
                                       "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
def test_early_exit_with_status_zero_fails(exit_call):
    # exit status 0 before the failing check: only running to the end counts
    r = run_python(f"{exit_call}\nassert 1 == 2, 'the check would fail'\n")
    assert r.status == "failed" and not r.passed
    if "SIGKILL" not in exit_call:
        assert r.returncode == 0 and "exited before its end" in r.stderr


def test_a_program_cannot_print_the_token_from_its_source():
    # the token is not in the program file: printing the file does not forge a pass
    r = run_python("import os, sys\nprint(open(sys.argv[0]).read())\nprint(os.environ)\nos._exit(0)\n")
    assert r.status == "failed"


def test_killing_the_parent_does_not_reach_the_evaluator():
    me = os.getpid()
    r = run_python("import os, time\nos.kill(os.getppid(), 9)\ntime.sleep(0.3)\n", timeout_s=5)
    assert os.getpid() == me  # still here (the test process is the evaluator)
    assert r.status == "failed" and not r.passed
    # and the sandbox still works afterwards
    assert run_python("print(1)").passed


def test_detached_child_writing_into_cwd_is_killed_and_cleanup_succeeds():
    program = ("import os, time\n"
               "if os.fork() == 0:\n"
               "    os.setsid()\n"
               "    if os.fork() == 0:\n"
               "        print(os.getpid(), os.getcwd(), flush=True)\n"
               "        time.sleep(1.0)\n"
               "        open('late.txt', 'w').write('x')\n"
               "        os._exit(0)\n"
               "    os._exit(0)\n"
               "time.sleep(0.3)\n")
    r = run_python(program, timeout_s=5)  # does not raise `OSError: Directory not empty`
    pid, cwd = r.stdout.split()
    assert not _alive(int(pid)), "the detached grandchild survived"
    time.sleep(1.2)  # past the moment it would have written
    assert not os.path.exists(cwd)


def test_fork_bomb_is_bounded_and_fails():
    start = time.monotonic()
    r = run_python("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                   timeout_s=3, max_processes=16)
    assert r.status in ("failed", "timeout") and not r.passed
    if os.geteuid() == 0:  # RLIMIT_NPROC does not bind root: the supervisor's count stopped it
        assert r.status == "failed" and "too many processes" in r.stderr
    assert time.monotonic() - start < 15
    assert run_python("print(1)").passed  # the system still forks


def test_processes_within_the_limit_are_allowed():
    program = ("import subprocess, sys\n"
               "ps = [subprocess.Popen([sys.executable, '-c', 'pass']) for _ in range(3)]\n"
               "assert all(p.wait() == 0 for p in ps)\n")
    assert run_python(program, max_processes=8).passed


def test_one_crash_is_that_problems_failure_not_the_suites():
    from segrl.evals.humaneval import evaluate_humaneval, load_problems

    problems = load_problems(limit=3)
    hostile = {problems[0]["prompt"]: "    import os\n    os.kill(os.getppid(), 9)\n",
               problems[1]["prompt"]: "    raise SystemExit(0)\n",
               problems[2]["prompt"]: problems[2]["canonical_solution"]}

    def generate(prompts, **_):
        return [hostile[p] for p in prompts]

    generate.progress = False
    metrics, samples = evaluate_humaneval(generate, limit=3, timeout_s=5)
    assert [s["passed"] for s in samples] == [False, False, True]
    assert metrics["n"] == 3 and metrics["pass@1"] == pytest.approx(1 / 3)


def test_rejects_bad_max_processes_and_interpreter():
    with pytest.raises(ValueError, match="max_processes"):
        run_python("pass", max_processes=0)
    with pytest.raises(ValueError, match="`python` must be an executable interpreter, got '/nonexistent/python'"):
        run_python("pass", python="/nonexistent/python")


SYSTEM_PYTHON = "/usr/bin/python3"


def _unprivileged_python():
    from segrl.evals.sandbox import _unprivileged_user

    if os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON) or _unprivileged_user(SYSTEM_PYTHON) is None:
        pytest.skip("needs root and an interpreter the `nobody` user can run")
    return SYSTEM_PYTHON


def test_as_root_the_program_runs_as_nobody_and_cannot_signal_its_parent():
    python = _unprivileged_python()
    program = "import os\nprint(os.getuid(), os.getgid(), os.getgroups())\nopen('mine.txt', 'w').write('x')\n"
    r = run_python(program, python=python)
    assert r.passed and r.stdout.split()[:2] == ["65534", "65534"] and r.stdout.split()[2] == "[]"
    r = run_python("import os\nos.kill(os.getppid(), 9)\n", python=python)
    assert r.status == "failed" and "PermissionError" in r.stderr  # the supervisor (root) is out of reach
    assert r.returncode == 1  # reported by the supervisor, which survived


def test_as_nobody_rlimit_nproc_bounds_a_fork_bomb():
    python = _unprivileged_python()
    program = ("import os, time\nn = 0\nfor _ in range(50):\n    try:\n        if os.fork() == 0:\n"
               "            time.sleep(30)\n            os._exit(0)\n        n += 1\n"
               "    except OSError:\n        break\nprint(n, flush=True)\n")
    r = run_python(program, python=python, max_processes=8, timeout_s=5)
    assert r.passed and int(r.stdout) < 8  # forks beyond the limit failed with EAGAIN
