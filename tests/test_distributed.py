"""Data-parallel invariance: every trainer, 1 process vs 2 processes (gloo on CPU), same GLOBAL batch.

The cases live in ``tests/distributed/dp_cases.py`` and run in subprocesses (a plain ``python`` run
for 1 process, ``accelerate launch --multi_gpu --num_processes 2 ... `` with ``use_cpu=True`` for 2;
``torchrun`` for DeepSpeed); ``tests/distributed/launch.py`` compares them. What must match: the
per-step training loss and the logged global gradient norm (rtol 1e-4), the final parameters
(atol 1e-4: AdamW), and the rows every step trained on.

Also: the resolved ``asr_delta="auto"`` and the keep masks are the same for 1 and 2 processes and
with gradient accumulation / mini-batches (DPO, PPO, GRPO).

Cost: each launch is mostly start-up (imports ~7 s per process on 2 cores). The default run keeps one
cheap pair (segment RM + ASR-DPO with a batch-mean trap, ~25-40 s); everything else is ``slow``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent / "distributed"
sys.path.insert(0, str(HERE))

import launch

pytestmark = pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None,
                                reason="the venv has no `accelerate` launcher")

FAST_CASES = ["rm", "dpo_trap"]
SLOW_CASES = ["rm_ga2", "dpo_seqmean_precompute", "dpo_segment_rm", "rs", "ppo", "grpo_zero", "grpo", "dpo_auto",
              "dpo_auto_ga2", "ppo_ga2", "ppo_mb2", "grpo_ga2"]
DS_CASES = ["dpo_zero", "rm", "dpo_segment_rm", "ppo", "ppo_ga2"]
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


class Runs:
    """Launches, cached for the module: ``get(cases, nproc, launcher, deepspeed, env)`` runs once."""

    def __init__(self, work: Path):
        self.work = work
        self._done: dict[tuple, launch.Run] = {}

    def reference(self, cases: list[str]) -> Path:
        out = self.work / "p1"
        todo = [c for c in cases if not (out / f"{c}.json").exists()]
        if todo:
            r = launch.run(self.work, out, todo, nproc=1, launcher="python", prepare=True)
            assert r.returncode == 0, f"1-process run failed:\n{r.log[-5000:]}"
        return out

    def get(self, cases: list[str], nproc: int, launcher: str = "accelerate", deepspeed: str | None = None,
            tag: str = "") -> launch.Run:
        key = (tuple(cases), nproc, launcher, deepspeed, tag)
        if key not in self._done:
            out = self.work / f"p{nproc}-{launcher}-{deepspeed or 'ddp'}-{tag or '-'.join(cases)}"[:200]
            self._done[key] = launch.run(self.work, out, cases, nproc=nproc, launcher=launcher, deepspeed=deepspeed)
        return self._done[key]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Runs(tmp_path_factory.mktemp("dp"))


def _check(runs: Runs, case: str, run: launch.Run, nproc: int, other_case: str | None = None) -> launch.Comparison:
    ref = runs.reference([case])
    result = run.out / f"{other_case or case}.json"
    assert result.exists(), f"{nproc}-process run wrote no result for {case} (rc={run.returncode}):\n{run.log[-5000:]}"
    assert json.loads(result.read_text())["world"] == nproc, "the launcher did not start the requested processes"
    return launch.compare(case, ref, run.out, other_case=other_case)


def _assert_match(cmp: launch.Comparison) -> None:
    assert cmp.batches_match is not False, f"different rows per step: {cmp.line()}"
    assert cmp.losses_match, (f"{cmp.line()}\n1 process: {cmp.reference_losses}\n"
                              f"2 processes: {cmp.other_losses}")
    assert cmp.params_match is not False, cmp.line()


# ----------------------------------------------------------------------------------------------------------------------
# default run: segment RM + ASR-DPO (batch-mean trap), one 2-process launch
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", FAST_CASES)
def test_two_processes_match_one(runs, case):
    runs.reference(FAST_CASES)
    cmp = _check(runs, case, runs.get(FAST_CASES, 2), 2)
    _assert_match(cmp)
    if case == "dpo_trap":
        # the case is armed: a per-rank baseline would keep other tokens than the global one
        extra = json.loads((runs.work / "p1" / "dpo_trap.json").read_text())["extra"]
        assert min(extra["trap_tokens_differing_per_step"]) > 0


# ----------------------------------------------------------------------------------------------------------------------
# slow: the other trainers, gradient accumulation, the harness itself, DeepSpeed
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("case", [
    "rm_ga2", "dpo_seqmean_precompute", "dpo_segment_rm", "rs", "ppo", "grpo_zero",
    "grpo", "dpo_auto", "dpo_auto_ga2", "ppo_ga2", "grpo_ga2",
])
def test_two_processes_match_one_slow(runs, case):
    runs.reference(SLOW_CASES)
    cmp = _check(runs, case, runs.get(SLOW_CASES, 2), 2)
    _assert_match(cmp)
    extra = json.loads((runs.work / "p1" / f"{case}.json").read_text()).get("extra") or {}
    if case in ("ppo", "grpo"):
        assert extra["armed"]["mask_tokens_differing"] > 0  # the global and per-half ASR masks differ
    if case == "rs":
        two = json.loads((runs.get(SLOW_CASES, 2).out / "rs.json").read_text())["extra"]
        # sampling is sharded by rank (its own seed per rank) and gathered: both ranks hold the same records
        assert two["sampled_fingerprints_per_rank"][0] == two["sampled_fingerprints_per_rank"][1]
        assert all(a != b for a, b in extra["kept_tokens_per_half_per_step"])  # the ranks' token counts differ


@pytest.mark.slow
def test_gradient_accumulation_is_the_same_global_batch(runs):
    """1 process x 4 rows == 1 process x 2 rows x 2 accumulation steps (== 2 processes, above)."""
    runs.reference(["rm", "rm_ga2"])
    cmp = launch.compare("rm", runs.work / "p1", runs.work / "p1", other_case="rm_ga2")
    _assert_match(cmp)


@pytest.mark.slow
def test_auto_delta_and_masks_ignore_processes_and_accumulation(runs):
    """asr_delta="auto" is resolved over the whole batch (DPO: the training set; PPO / GRPO: the rollout
    of every rank), never per micro-batch: the resolved delta, the keep masks and the losses are the
    same for 1 and 2 processes and with gradient accumulation (DPO, PPO, GRPO) or mini-batches (PPO)."""
    runs.reference(SLOW_CASES)
    one, two = runs.work / "p1", runs.get(SLOW_CASES, 2).out

    def extra(out, case):
        return json.loads((out / f"{case}.json").read_text())["extra"]

    # gradient accumulation: the same global batch in 2 micro-steps (1 process; 1 vs 2 processes is above)
    for base, variant in (("dpo_auto", "dpo_auto_ga2"), ("ppo", "ppo_ga2"), ("grpo", "grpo_ga2")):
        _assert_match(launch.compare(base, one, one, other_case=variant))
    delta = extra(one, "dpo_auto")["asr_delta"]
    assert delta > 0 and all(extra(out, c)["asr_delta"] == delta for out in (one, two)
                             for c in ("dpo_auto", "dpo_auto_ga2"))
    # PPO / GRPO: per rollout, the same delta and the same mask of every row, whatever the launch
    for base, variants in (("ppo", ("ppo_ga2", "ppo_mb2")), ("grpo", ("grpo_ga2",))):
        ref = extra(one, base)
        assert min(ref["asr_delta"]) > 0
        for out in (one, two):
            for case in (base, *variants):
                got = extra(out, case)
                assert got["asr_delta"] == pytest.approx(ref["asr_delta"], rel=1e-9), (out, case)
                assert got["masks"] == ref["masks"], (out, case)
        # armed: a delta resolved on one rank's half of the rollout would differ
        armed = ref["armed"]
        assert all(abs(d - armed["delta"]) > 1e-3 for d in armed["delta_per_half"]), armed


@pytest.mark.slow
def test_harness_detects_a_per_rank_auto_delta(runs, monkeypatch):
    """Re-create a per-rank "auto" delta in PPO: the 1 vs 2 process comparison must fail."""
    runs.reference(["ppo"])
    monkeypatch.setenv("SEGRL_DP_MUTATE", "local_auto_delta")
    cmp = _check(runs, "ppo", runs.get(["ppo"], 2, tag="mutated-delta"), 2)
    assert not cmp.losses_match and any("asr_delta DIFFERS" in n for n in cmp.notes), cmp.line()


@pytest.mark.slow
def test_harness_detects_a_per_rank_baseline(runs, monkeypatch):
    """Re-create ASR-DPO's old per-rank batch_mean baseline: the comparison must fail."""
    runs.reference(["dpo_trap"])
    monkeypatch.setenv("SEGRL_DP_MUTATE", "dpo_local_baseline")
    run = runs.get(["dpo_trap"], 2, tag="mutated")
    cmp = _check(runs, "dpo_trap", run, 2)
    assert not cmp.losses_match and cmp.loss_max_rel > 0.1, cmp.line()


@pytest.mark.slow
def test_dpo_precompute_in_memory_dataset(runs):
    runs.reference(["dpo_precompute_inmemory"])
    _assert_match(_check(runs, "dpo_precompute_inmemory", runs.get(["dpo_precompute_inmemory"], 2), 2))


@pytest.mark.slow
@pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed is not installed (DS_BUILD_OPS=0 pip install deepspeed)")
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
@pytest.mark.parametrize("nproc", [1, 2])
@pytest.mark.parametrize("case", DS_CASES)
def test_deepspeed_matches_plain_single_process(runs, stage, nproc, case):
    """ASR-DPO, the segment RM and PPO (policy + critic engines; ppo_ga2 with accumulation) under ZeRO-2 / ZeRO-3
    (examples/deepspeed/*.json), 1 and 2 processes,
    against the plain single-process run: same losses, gradient norms and (gathered) final weights."""
    if not launch.DEEPSPEED_CONFIGS[stage].exists():
        pytest.skip(f"{launch.DEEPSPEED_CONFIGS[stage]} is missing")
    runs.reference(DS_CASES)
    # ZeRO-2 runs both cases in one launch; ZeRO-3 one launch per case, so that a failing case cannot
    # take the other down with it.
    cases = DS_CASES if stage == "zero2" else [case]
    run = runs.get(cases, nproc, launcher="torchrun", deepspeed=stage)
    result = run.out / f"{case}.json"
    assert result.exists(), f"rc={run.returncode}:\n{run.log[-5000:]}"
    assert json.loads(result.read_text())["deepspeed"] is True
    _assert_match(_check(runs, case, run, nproc))
