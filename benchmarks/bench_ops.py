#!/usr/bin/env python
"""Throughput and memory of the vectorised core ops against the plain-loop reference.

Run as ``python benchmarks/bench_ops.py`` (``make bench``); ``--quick`` for a smaller run.

What is measured, on float32 CPU tensors of shape (B, T) = (64, 2048) with random response lengths
(uniform in 1..T, right-padded):

* ``segrl.ops.asr_mask`` (defaults: batch-mean baseline, delta 0, neutral drop, empty full),
  ``segrl.ops.entropy_segment_ids`` (threshold 2.0 nats on Exp(1) entropies, about one cut in
  seven tokens) and ``segrl.ops.spread_segment_rewards`` (mode "even" on those segments).
* Vectorised time: ``torch.set_num_threads(os.cpu_count())`` (override with ``--threads``),
  warm-up calls, then the median (and min) of repeated calls. Throughput counts all B*T
  positions. Multi-threaded torch ops slow down many times when another process competes for the
  cores, so the run first waits (``--wait-idle``, default 60 s) for the CPUs to be >= 90% idle,
  reports how idle they were, and also gives the 1-thread throughput.
* Loop time: the plain-Python reference in ``tests/loop_reference.py`` is far too slow for the
  whole batch, so it runs on ``--loop-rows`` rows (picked at evenly spaced length quantiles) as a
  batch of its own, and its time is
  scaled per position to B*T (the output says so, and shows the subset's mean length next to the
  batch's, since the loop's cost grows with the number of valid tokens).
* Memory, two ways, both counting the op's output and every intermediate, not its inputs:
  (1) allocator peak: ``torch.profiler`` with ``profile_memory=True`` records every tensor
      allocation and free of one call; the running sum of bytes allocated minus freed gives the
      peak, and the largest single allocation shows whether any intermediate is bigger than
      O(B*T). (2) resident-set peak in a fresh subprocess: after warm-up calls, Linux's
      ``/proc/self/clear_refs`` (``5``) resets VmHWM, one call runs, and VmHWM - VmRSS-before is
      the extra resident memory; glibc is told to serve every allocation >= 4 KiB with mmap
      (``MALLOC_MMAP_THRESHOLD_``) so freed buffers cannot hide in a reused heap. Both are
      also given as a multiple of B*T*4 bytes (one float32 (B, T) tensor).

Results: a markdown table on stdout, and ``bench_results/bench_ops.md`` + ``bench_ops.json``.
Goals from the issue: asr_mask >= 50 M tokens/s on 2 cores, >= 100x the loop, no intermediate
larger than O(B*T).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

import loop_reference as ref  # noqa: E402
from segrl import ops  # noqa: E402

THRESHOLD = 2.0
OPS = ("asr_mask", "entropy_segment_ids", "spread_segment_rewards")
GOAL_ASR_MTOKS = 50.0
GOAL_SPEEDUP = 100.0


# --------------------------------------------------------------------------------------------
# inputs and the ops under test
# --------------------------------------------------------------------------------------------


def make_inputs(B: int, T: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    rewards = torch.randn(B, T, generator=g).masked_fill(~mask, 0.0)
    entropy = torch.empty(B, T).exponential_(1.0, generator=g).masked_fill(~mask, 0.0)
    seq_sign = torch.where(torch.rand(B, generator=g) < 0.5, -1, 1).long()
    segment_ids = ops.entropy_segment_ids(entropy, mask, THRESHOLD)
    K = int(segment_ids.max().item()) + 1 if segment_ids.numel() else 0
    seg_rewards = torch.randn(B, max(K, 0), generator=g)
    return {
        "mask": mask,
        "rewards": rewards,
        "entropy": entropy,
        "seq_sign": seq_sign,
        "segment_ids": segment_ids,
        "seg_rewards": seg_rewards,
    }


def subset_rows(mask: torch.Tensor, rows: int) -> torch.Tensor:
    """``rows`` row indices at evenly spaced quantiles of the response length, so the subset's
    mean length is close to the batch's (the loop's cost grows with the number of valid tokens)."""
    order = torch.argsort(mask.sum(1), stable=True)
    B = mask.shape[0]
    picks = [order[min(B - 1, int((i + 0.5) * B / rows))].item() for i in range(rows)]
    return torch.tensor(sorted(picks), dtype=torch.long)


def subset(inp: dict, rows: int) -> dict:
    idx = subset_rows(inp["mask"], rows)
    out = {k: v[idx] for k, v in inp.items()}
    ids = out["segment_ids"]
    K = int(ids.max().item()) + 1 if ids.numel() and ids.max() >= 0 else 0
    out["seg_rewards"] = out["seg_rewards"][:, :K].contiguous()
    return {k: v.contiguous() for k, v in out.items()}


def runner(impl, name: str, inp: dict):
    if name == "asr_mask":
        return lambda: impl.asr_mask(inp["rewards"], inp["mask"], inp["seq_sign"])
    if name == "entropy_segment_ids":
        return lambda: impl.entropy_segment_ids(inp["entropy"], inp["mask"], THRESHOLD)
    if name == "spread_segment_rewards":
        return lambda: impl.spread_segment_rewards(inp["seg_rewards"], inp["segment_ids"], mode="even")
    raise KeyError(name)


def timings(fn, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median_time(fn, warmup: int, repeats: int) -> float:
    return statistics.median(timings(fn, warmup, repeats))


# --------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------


class _quiet_stderr:
    """Silence fd 2 (the profiler's C++ start/stop chatter) for the duration of a block."""

    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        return False


def allocator_peak(fn) -> dict:
    """Peak of (bytes allocated - bytes freed) during one call, from torch.profiler's memory
    timeline, and the largest single allocation. Tensors alive before the call are not counted."""
    try:
        from torch.profiler import ProfilerActivity, profile
        from torch.profiler._memory_profiler import Action

        fn()
        with _quiet_stderr(), profile(
            activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
        ) as prof:
            out = fn()
        del out
        timeline = sorted(prof._memory_profile().timeline, key=lambda x: x[0])
        live = peak = largest = 0
        for _, action, _, size in timeline:
            if action == Action.CREATE:
                live += size
                largest = max(largest, size)
            elif action == Action.DESTROY:
                live -= size
            peak = max(peak, live)
        return {"peak_bytes": peak, "largest_alloc_bytes": largest, "method": "torch.profiler memory timeline"}
    except Exception as exc:  # private profiler API: report, don't crash the benchmark
        return {"peak_bytes": None, "largest_alloc_bytes": None, "method": f"unavailable ({type(exc).__name__}: {exc})"}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def _mem_child(name: str, B: int, T: int, threads: int) -> None:
    torch.set_num_threads(threads)
    inp = make_inputs(B, T)
    fn = runner(ops, name, inp)
    for _ in range(3):
        fn()
    gc.collect()
    before = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        method = "VmHWM after clear_refs=5, fresh subprocess, MALLOC_MMAP_THRESHOLD_=4096"
    except OSError as exc:
        method = f"VmHWM without reset ({exc}); includes warm-up, upper bound"
    out = fn()
    hwm = _status_kib("VmHWM")
    del out
    print(json.dumps({"rss_peak_extra_bytes": max(hwm - before, 0) * 1024, "method": method}))


def rss_peak(name: str, B: int, T: int, threads: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="4096", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_mem-child", name, "--B", str(B), "--T", str(T), "--threads", str(threads)]
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=True)
        return json.loads(res.stdout.strip().splitlines()[-1])
    except Exception as exc:
        return {"rss_peak_extra_bytes": None, "method": f"unavailable ({type(exc).__name__})"}


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def cpu_idle_percent(seconds: float = 1.0) -> float | None:
    """Share of all CPUs idle over ``seconds`` (from /proc/stat): other load skews the timings."""
    def sample():
        with open("/proc/stat") as fh:
            vals = [int(v) for v in fh.readline().split()[1:]]
        return vals[3] + vals[4], sum(vals)  # idle + iowait, total

    try:
        i1, t1 = sample()
        time.sleep(seconds)
        i2, t2 = sample()
        return 100.0 * (i2 - i1) / max(t2 - t1, 1)
    except OSError:
        return None


def fmt(x, spec=".1f", none="n/a"):
    return none if x is None else format(x, spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="B=16, T=512, fewer repeats")
    ap.add_argument("--B", type=int, default=None)
    ap.add_argument("--T", type=int, default=None)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--loop-rows", type=int, default=4)
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table per op")
    ap.add_argument(
        "--wait-idle", type=float, default=60.0,
        help="wait up to this many seconds for the CPUs to be >= 90%% idle before timing (0: don't wait)",
    )
    ap.add_argument("--out", default=str(ROOT / "bench_results"))
    ap.add_argument("--_mem-child", dest="mem_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    B = args.B or (16 if args.quick else 64)
    T = args.T or (512 if args.quick else 2048)
    if args.mem_child:
        _mem_child(args.mem_child, B, T, args.threads)
        return 0
    repeats = args.repeats or (7 if args.quick else 25)
    warmup = args.warmup or (2 if args.quick else 5)
    loop_rows = min(args.loop_rows, B)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    deadline = time.monotonic() + args.wait_idle
    idle = cpu_idle_percent()
    while idle is not None and idle < 90.0 and time.monotonic() < deadline:
        idle = cpu_idle_percent()
    inp = make_inputs(B, T)
    sub = subset(inp, loop_rows)
    positions = B * T
    valid = int(inp["mask"].sum())
    sub_valid = int(sub["mask"].sum())
    unit = B * T * 4

    # a trivial elementwise op over the same tensors: the floor any (B, T) op pays here
    floor_s = median_time(lambda: (inp["rewards"] > 0) & inp["mask"], warmup, repeats)

    rows = []
    for name in OPS:
        vec_fn = runner(ops, name, inp)
        vec_times = timings(vec_fn, warmup, repeats)
        vec_s, vec_min_s = statistics.median(vec_times), min(vec_times)
        torch.set_num_threads(1)
        vec1_s = median_time(vec_fn, warmup, repeats)
        torch.set_num_threads(args.threads)
        loop_fn = runner(ref, name, sub)
        loop_sub_s = median_time(loop_fn, 1, 3)
        loop_s = loop_sub_s * positions / (loop_rows * T)  # scaled per position
        alloc = allocator_peak(vec_fn)
        # O(B*T) check: the same op on twice as many positions must need at most ~twice the memory
        alloc2 = allocator_peak(runner(ops, name, make_inputs(B, 2 * T)))
        rss = rss_peak(name, B, T, args.threads)
        row = {
            "op": name,
            "vec_ms": vec_s * 1e3,
            "vec_min_ms": vec_min_s * 1e3,
            "vec_mtok_s": positions / vec_s / 1e6,
            "vec_1thread_mtok_s": positions / vec1_s / 1e6,
            "loop_subset_ms": loop_sub_s * 1e3,
            "loop_mtok_s": positions / loop_s / 1e6,
            "speedup": loop_s / vec_s,
            "alloc_peak_bytes": alloc["peak_bytes"],
            "alloc_peak_x_BT4": None if alloc["peak_bytes"] is None else alloc["peak_bytes"] / unit,
            "largest_alloc_bytes": alloc["largest_alloc_bytes"],
            "largest_alloc_x_BT4": None if alloc["largest_alloc_bytes"] is None else alloc["largest_alloc_bytes"] / unit,
            "alloc_method": alloc["method"],
            "alloc_peak_2T_bytes": alloc2["peak_bytes"],
            "alloc_growth_2T": None if not alloc["peak_bytes"] or alloc2["peak_bytes"] is None else alloc2["peak_bytes"] / alloc["peak_bytes"],
            "rss_peak_extra_bytes": rss["rss_peak_extra_bytes"],
            "rss_peak_x_BT4": None if rss["rss_peak_extra_bytes"] is None else rss["rss_peak_extra_bytes"] / unit,
            "rss_method": rss["method"],
        }
        rows.append(row)
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(5):
                    vec_fn()
            print(f"\n### profile: {name} (5 calls, {args.threads} threads)\n")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))

    asr = rows[0]
    goals = {
        "asr_mask >= 50 M tokens/s": asr["vec_mtok_s"] >= GOAL_ASR_MTOKS,
        "asr_mask >= 100x loop": asr["speedup"] >= GOAL_SPEEDUP,
        "no intermediate larger than O(B*T): every op's largest single allocation <= 2 x B*T*4 "
        "(one (B, T) int64) and its peak at (B, 2T) <= 2.2 x its peak at (B, T)": all(
            r["largest_alloc_x_BT4"] is not None
            and r["largest_alloc_x_BT4"] <= 2.0 + 1e-9
            and r["alloc_growth_2T"] is not None
            and r["alloc_growth_2T"] <= 2.2
            for r in rows
        ),
    }

    lines = [
        "# segrl.ops benchmark",
        "",
        f"B={B}, T={T} ({positions:,} positions, {valid:,} valid tokens, mean length {valid / B:.0f}), "
        f"float32, CPU, torch {torch.__version__}, {args.threads} torch threads (os.cpu_count()={os.cpu_count()}), "
        f"{platform.processor() or platform.machine()}, CPUs {fmt(idle, '.0f')}% idle in the second before the run.",
        f"Vectorised: median of {repeats} calls after {warmup} warm-up calls. Tokens/s count all B*T positions.",
        f"Loop: `tests/loop_reference.py` timed on {loop_rows} rows (picked at evenly spaced length quantiles) as a batch of their own "
        f"({loop_rows * T:,} positions, mean length {sub_valid / loop_rows:.0f} vs {valid / B:.0f} for the batch), "
        f"median of 3, scaled per position to B*T (an extrapolation, not a full-batch run).",
        f"Floor: `(rewards > 0) & mask` on the same tensors takes {floor_s * 1e3:.3f} ms "
        f"({positions / floor_s / 1e6:.0f} M positions/s).",
        "",
        "| op | vectorised ms (median / min) | vectorised M tok/s | same, 1 thread | loop M tok/s (scaled) | speed-up | "
        "alloc peak MiB (x B*T*4) | largest alloc (x B*T*4) | peak growth at 2T | RSS peak extra MiB (x B*T*4) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['op']}` | {r['vec_ms']:.3f} / {r['vec_min_ms']:.3f} | {r['vec_mtok_s']:.1f} | {r['vec_1thread_mtok_s']:.1f} | "
            f"{r['loop_mtok_s']:.3f} | {r['speedup']:.0f}x | "
            f"{fmt(None if r['alloc_peak_bytes'] is None else r['alloc_peak_bytes'] / 2**20, '.2f')} ({fmt(r['alloc_peak_x_BT4'])}) | "
            f"{fmt(r['largest_alloc_x_BT4'])} | {fmt(r['alloc_growth_2T'], '.2f')}x | "
            f"{fmt(None if r['rss_peak_extra_bytes'] is None else r['rss_peak_extra_bytes'] / 2**20, '.2f')} ({fmt(r['rss_peak_x_BT4'])}) |"
        )
    lines += [
        "",
        f"B*T*4 = {unit:,} bytes. Memory counts the op's output and intermediates, not its inputs.",
        f"- alloc peak / largest alloc: {rows[0]['alloc_method']}: running sum of bytes allocated minus freed "
        "during one call (after a warm-up call); largest = the biggest single tensor allocated.",
        f"- RSS peak extra: {rows[0]['rss_method']}: VmHWM minus VmRSS before the call, kB resolution; includes "
        "page granularity and only pages actually touched, and the kernel updates VmHWM lazily, so it is a rough "
        "cross-check of the allocator figure (meaningful at the full size, not with --quick).",
        "",
        "Goals (from the issue):",
        "",
    ]
    lines += [f"- {'PASS' if ok else 'MISS'}: {goal}" for goal, ok in goals.items()]
    lines += [
        "",
        f"The loop reference runs asr_mask at {asr['loop_mtok_s']:.2f} M positions/s "
        f"({1e3 / asr['loop_mtok_s']:.0f} ns per position, Python lists, no tensor indexing in the loop), "
        f"so 100x the loop means {GOAL_SPEEDUP * asr['loop_mtok_s']:.0f} M tokens/s for the vectorised op.",
    ]
    if idle is not None and idle < 90.0:
        lines += [
            "",
            f"Note: the machine was busy ({idle:.0f}% idle before the run). Multi-threaded torch ops are very "
            "sensitive to a competing process (threads wait on each other); compare the 1-thread column, or rerun.",
        ]
    text = "\n".join(lines)
    print(text)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "bench_ops_quick" if args.quick else "bench_ops"
    (out / f"{stem}.md").write_text(text + "\n")
    meta = {
        "B": B, "T": T, "threads": args.threads, "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "repeats": repeats, "warmup": warmup, "loop_rows": loop_rows, "valid_tokens": valid,
        "cpu_idle_percent_before": idle, "floor_ms": floor_s * 1e3, "goals": goals, "rows": rows,
    }
    (out / f"{stem}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"\nwrote {out / (stem + '.md')} and {out / (stem + '.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
