"""Launch :mod:`dp_cases` as 1 or N processes and compare the results (used by tests/test_distributed.py
and scripts/check_distributed.sh).

    python tests/distributed/launch.py --work W --cases rm,dpo_trap [--deepspeed zero2] [--launcher accelerate]

prints one line per case and exits non-zero when a required match fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SCRIPT = HERE / "dp_cases.py"
DEEPSPEED_CONFIGS = {"zero2": ROOT / "examples" / "deepspeed" / "zero2.json",
                     "zero3": ROOT / "examples" / "deepspeed" / "zero3.json"}

# Per-step losses: fp32, the gradient all-reduce only changes the summation order.
LOSS_RTOL, LOSS_ATOL = 1e-4, 1e-5
# Parameters after a few AdamW steps: Adam divides every coordinate by its own gradient scale, so a
# coordinate whose gradient is at round-off level can move by a visible fraction of the learning
# rate (seen: one entry of 1024 off by 3e-5 at lr 5e-3). The per-step losses and the logged global
# gradient norms (before clipping) are the tight checks; this one catches gross divergence.
PARAM_RTOL, PARAM_ATOL = 1e-4, 1e-4


def venv_bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        env[key] = "1"
    env.update(TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", TRL_EXPERIMENTAL_SILENCE="1",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    # A stale pytest / launcher environment must not leak a rank or a world size into a child.
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_CONFIG_DS_FIELDS"):
        env.pop(key, None)
    return env


def command(nproc: int, launcher: str, args: list[str]) -> list[str]:
    """The command line of one run. ``launcher``: 'python' (1 process only), 'accelerate' or 'torchrun'."""
    if launcher == "python":
        if nproc != 1:
            raise ValueError("the plain-python launcher runs one process")
        return [sys.executable, str(SCRIPT), *args]
    if launcher == "accelerate":
        # --multi_gpu + use_cpu=True in the training arguments = MULTI_CPU over gloo with N processes;
        # `--cpu --num_processes N` would silently run ONE process (see docs / research notes).
        return [venv_bin("accelerate"), "launch", "--multi_gpu", "--num_processes", str(nproc), "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
                str(SCRIPT), *args]
    if launcher == "torchrun":
        return [venv_bin("torchrun"), "--standalone", "--nproc_per_node", str(nproc), str(SCRIPT), *args]
    raise ValueError(f"unknown launcher {launcher!r}")


@dataclass
class Run:
    out: Path
    seconds: float
    returncode: int
    log: str


def run(work: Path, out: Path, cases: list[str], *, nproc: int, launcher: str, prepare: bool = False,
        deepspeed: str | None = None, timeout: float = 600) -> Run:
    args = ["--work", str(work), "--out", str(out), "--cases", ",".join(cases)]
    if prepare:
        args.append("--prepare")
    if deepspeed:
        args += ["--deepspeed", str(DEEPSPEED_CONFIGS.get(deepspeed, deepspeed))]
    cmd = command(nproc, launcher, args)
    t0 = time.perf_counter()
    # Own session: on a timeout the launcher AND its worker processes are killed (a deadlocked rank
    # would otherwise outlive the launcher and wait in a collective for gloo's 30-minute timeout).
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
        returncode = proc.returncode
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            time.sleep(2)
        log, _ = proc.communicate()
        log += f"\n[launch] TIMEOUT after {timeout} s: killed the process group\n"
        returncode = 124
    seconds = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    (out / "launch.log").write_text(" ".join(cmd) + "\n\n" + log)
    return Run(out, seconds, returncode, log)


# ----------------------------------------------------------------------------------------------------------------------
# comparison
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    case: str
    world: tuple[int, int]
    loss_max_abs: float
    loss_max_rel: float
    losses_match: bool
    param_max_abs: float | None
    params_match: bool | None
    batches_match: bool | None
    metric_max_abs: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    reference_losses: list[float] = field(default_factory=list)
    other_losses: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.losses_match and self.params_match is not False and self.batches_match is not False

    def line(self) -> str:
        p = "n/a" if self.param_max_abs is None else f"{self.param_max_abs:.2e}"
        return (f"{'MATCH' if self.ok else 'DIFFER'} {self.case:24s} world {self.world[0]} vs {self.world[1]}: "
                f"loss max|d| {self.loss_max_abs:.2e} (rel {self.loss_max_rel:.2e}), params max|d| {p}, "
                f"batches {'same' if self.batches_match else 'n/a' if self.batches_match is None else 'DIFFERENT'}"
                + (f" [{'; '.join(self.notes)}]" if self.notes else ""))


def load(out: Path, case: str) -> tuple[dict, dict | None]:
    import torch

    result = json.loads((out / f"{case}.json").read_text())
    pt = out / f"{case}.pt"
    state = torch.load(pt, map_location="cpu") if pt.exists() else None
    return result, state


def compare(case: str, ref_out: Path, other_out: Path, *, other_case: str | None = None, loss_rtol=LOSS_RTOL,
            loss_atol=LOSS_ATOL, param_rtol=PARAM_RTOL, param_atol=PARAM_ATOL) -> Comparison:
    """``case`` in ``ref_out`` against ``other_case`` (default: the same case) in ``other_out``."""
    import torch

    a, sa = load(ref_out, case)
    b, sb = load(other_out, other_case or case)
    if other_case:
        case = f"{case}~{other_case}"
    la, lb = a["losses"], b["losses"]
    notes = []
    if len(la) != len(lb) or not la:
        return Comparison(case, (a["world"], b["world"]), math.inf, math.inf, False, None, None, None,
                          notes=[f"{len(la)} vs {len(lb)} losses"], reference_losses=la, other_losses=lb)
    diffs = [abs(x - y) for x, y in zip(la, lb)]
    rels = [d / max(abs(x), 1e-12) for d, x in zip(diffs, la)]
    losses_match = all(d <= loss_atol + loss_rtol * abs(x) for d, x in zip(diffs, la))
    param_max, params_match = None, None
    if sa is not None and sb is not None:
        if sa.keys() != sb.keys():
            only = sorted(sa.keys() ^ sb.keys())
            # a DeepSpeed save may add the tied lm_head explicitly; compare the common tensors
            notes.append(f"keys differ: {only[:3]}")
        common = sorted(sa.keys() & sb.keys())
        param_max = max(float((sa[k] - sb[k]).abs().max()) for k in common)
        params_match = all(torch.allclose(sa[k], sb[k], rtol=param_rtol, atol=param_atol) for k in common)
    batches_match = None
    if a.get("batches") is not None and b.get("batches") is not None:
        batches_match = a["batches"] == b["batches"]
        if not batches_match and all(sorted(x) == sorted(y) for x, y in zip(a["batches"], b["batches"])):
            notes.append("same rows per step, different order")
            batches_match = True
    strict_ok = True
    for name, va in (a.get("strict") or {}).items():
        vb = (b.get("strict") or {}).get(name)
        if vb is None or len(va) != len(vb) or not va:
            notes.append(f"{name}: {len(va)} vs {0 if vb is None else len(vb)} values")
            strict_ok = False
            continue
        bad = [i for i, (x, y) in enumerate(zip(va, vb)) if abs(x - y) > loss_atol + loss_rtol * abs(x)]
        worst = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(va, vb))
        notes.append(f"{name} rel {worst:.1e}")
        if bad:
            notes.append(f"{name} DIFFERS at steps {bad}")
            strict_ok = False
    losses_match = losses_match and strict_ok
    metric_max = {}
    for name, va in (a.get("metrics") or {}).items():
        vb = (b.get("metrics") or {}).get(name)
        if vb and len(va) == len(vb):
            metric_max[name] = max(abs(x - y) for x, y in zip(va, vb))
    return Comparison(case, (a["world"], b["world"]), max(diffs), max(rels), losses_match, param_max, params_match,
                      batches_match, metric_max, notes, la, lb)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--cases", required=True)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--launcher", default="accelerate", choices=["accelerate", "torchrun"])
    parser.add_argument("--deepspeed", default=None, help="zero2 | zero3 | a JSON path: run the N-process side with it")
    parser.add_argument("--deepspeed-nprocs", default=None, help="with --deepspeed: e.g. '1,2' (default: --nproc)")
    parser.add_argument("--expect-differ", default="", help="cases expected NOT to match (reported, not failed)")
    parser.add_argument("--tag", default="", help="suffix of this launch's output directory")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per launch (the process group is killed)")
    opts = parser.parse_args(argv)
    work = Path(opts.work)
    cases = [c for c in opts.cases.split(",") if c]
    expect_differ = {c for c in opts.expect_differ.split(",") if c}
    ref = work / "p1"
    missing = [c for c in cases if not (ref / f"{c}.json").exists()]
    if missing:
        r = run(work, ref, missing, nproc=1, launcher="python", prepare=True, timeout=opts.timeout)
        print(f"[launch] 1 process (plain python): rc={r.returncode} {r.seconds:.1f} s", flush=True)
        if r.returncode:
            print(r.log[-6000:])
            return 1
    status = 0
    nprocs = [int(n) for n in (opts.deepspeed_nprocs or str(opts.nproc)).split(",")]
    for n in nprocs:
        tag = (f"p{n}-{opts.launcher}" + (f"-{Path(opts.deepspeed).stem}" if opts.deepspeed else "")
               + (f"-{opts.tag}" if opts.tag else ""))
        launcher = opts.launcher
        r = run(work, work / tag, cases, nproc=n, launcher=launcher, deepspeed=opts.deepspeed, timeout=opts.timeout)
        print(f"[launch] {n} processes ({launcher}{', ' + opts.deepspeed if opts.deepspeed else ''}): "
              f"rc={r.returncode} {r.seconds:.1f} s", flush=True)
        if r.returncode:
            print(f"[launch] the {n}-process run failed (log: {work / tag / 'launch.log'}); its error lines:")
            print("\n".join(line for line in r.log.splitlines()[-400:] if "Error" in line)[-3000:])
            if not set(cases) & expect_differ:
                status = 1
        for c in cases:
            expected = c in expect_differ
            if not (work / tag / f"{c}.json").exists():
                print(("(expected to differ) " if expected else "") + f"FAILED {c:24s} no result from the {n}-process run")
                status = status if expected else 1
                continue
            cmp = compare(c, ref, work / tag)
            print(("(expected to differ) " if expected else "") + cmp.line(), flush=True)
            print(f"    losses 1p: {[round(x, 7) for x in cmp.reference_losses]}", flush=True)
            print(f"    losses {n}p: {[round(x, 7) for x in cmp.other_losses]}", flush=True)
            res = json.loads((work / tag / f"{c}.json").read_text())
            if res.get("world") != n:
                print(f"    WORLD SIZE {res.get('world')} != {n}: the launcher did not start {n} processes")
                status = 1
            if not cmp.ok and not expected:
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
