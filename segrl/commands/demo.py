"""``segrl demo``: the whole segrl pipeline on the embedded tiny model and the built-in task.

1. **SFT** — a tiny Llama (263k parameters) on ``segrl.tasks.make_sft_data`` (running sums with
   systematic carry errors). The packaged checkpoint built by ``scripts/make_sft_checkpoint.py`` with
   exactly these settings is reused unless ``--train_sft`` (about 4 minutes more on one core).
2. **Preference pairs** — 4 samples per training prompt from the SFT model; chosen = fewest wrong
   parts, rejected = most (about half the pairs carry the credit-assignment conflict).
3. **Reward model** — ``segrl.rm``: the segment RM (entropy threshold ``--segment_threshold``) trained
   on the pairs, location normaliser fitted, pairwise accuracy on held-out pairs, and how well its
   token rewards match the oracle's step verdicts (credit AUC). Methods that need the token or bandit
   RM train those too.
4. **Policies** — DPO, ASR-DPO (token rewards from the segment RM; sequence-mean baseline, hysteresis
   0.05) and segment-reward PPO, each evaluated on held-out dev prompts during training
   (``--methods`` picks others, see ``segrl experiment``).
5. **Report** — the evaluation table (printed), learning curves, the comparison chart and token
   heat-maps of held-out responses with the RM's segments and the ASR mask, all in one HTML file:
   ``OUTPUT_DIR/report.html``.

Every stage is cached in ``--output_dir``: a second run only redoes what changed (``--rebuild``
redoes everything). ``--quick`` shrinks every stage to a smoke test (about 15 seconds).

Examples::

    segrl demo --output_dir runs/demo
    segrl demo --quick --output_dir /tmp/demo
    segrl demo --methods dpo asr_dpo_oracle --dpo_steps 60
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from segrl.pipeline.options import PipelineOptions

DEMO_METHODS = ["dpo", "asr_dpo_segrm", "ppo_segment"]

#: What ``--quick`` changes (every stage a few steps; the numbers are then meaningless).
QUICK = dict(
    pair_prompts=96, rm_epochs=1.0, rm_batch_size=16, dpo_steps=6, dpo_batch_size=8, ppo_iterations=3,
    ppo_rollout_batch_size=8, ppo_mini_batch_size=8, rs_prompts=16, rs_steps=4, eval_dev=24, eval_test=48,
    eval_checkpoints=2, heatmap_prompts=2,
)


@dataclass
class DemoConfig(PipelineOptions):
    """Options of ``segrl demo`` (flags, or keys of the ``--config`` YAML file)."""

    output_dir: str = field(default="runs/demo", metadata={"help": "Where every stage, the results and report.html go."})
    quick: bool = field(default=False, metadata={"help": "A smoke test: every stage a few steps (about 15 s; meaningless numbers)."})
    seed: int = field(default=0, metadata={"help": "Seed of the pairs, the RMs and the policy runs."})
    methods: list[str] = field(default_factory=lambda: list(DEMO_METHODS),
                               metadata={"help": "Methods compared with SFT (segrl.pipeline.settings.METHODS)."})
    heatmap_prompts: int = field(default=6, metadata={"help": "Held-out prompts shown in the token heat-maps."})
    rebuild: bool = field(default=False, metadata={"help": "Ignore cached stages in OUTPUT_DIR and redo everything."})
    num_threads: int = field(default=0, metadata={"help": "torch intra-op threads; 0 (the demo's default): torch's own "
                                                            "choice, every core of the machine (5 min 25 s on 2 quiet "
                                                            "cores vs 7 min 56 s with 1 thread). `segrl --num_threads N` "
                                                            "sets it too."})
    title: str = field(default="segrl demo: SFT -> pairs -> segment RM -> DPO / ASR-DPO / segment PPO",
                       metadata={"help": "Report title."})

    @property
    def seeds(self) -> list[int]:
        return [self.seed]

    @property
    def share_sft(self) -> bool:
        return True


def parse_config(argv: list[str]) -> DemoConfig:
    """Parse flags (and ``--config x.yaml``) into a :class:`DemoConfig`; ``--quick`` applies :data:`QUICK`
    to every option not given explicitly."""
    from trl import TrlParser

    (cfg,) = TrlParser((DemoConfig,), prog="segrl demo").parse_args_and_config(args=argv)
    if cfg.quick:
        given = {a.split("=", 1)[0].lstrip("-") for a in argv if a.startswith("--")} | _yaml_keys(argv)
        names = {f.name for f in fields(DemoConfig)}
        for key, value in QUICK.items():
            if key in names and key not in given:
                setattr(cfg, key, value)
    return cfg


def _yaml_keys(argv: list[str]) -> set[str]:
    """Keys set by the ``--config`` YAML file, if any (they win over ``--quick`` like flags do)."""
    import yaml

    for i, arg in enumerate(argv):
        path = arg.split("=", 1)[1] if arg.startswith("--config=") else (
            argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None)
        if path:
            with open(path) as fh:
                return set((yaml.safe_load(fh) or {}).keys())
    return set()


def validate(cfg: DemoConfig) -> None:
    from segrl.pipeline.settings import METHODS

    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown or not cfg.methods:
        raise ValueError(f"`methods` must name methods of {sorted(METHODS)}, got {cfg.methods}")
    if cfg.heatmap_prompts < 1:
        raise ValueError(f"`heatmap_prompts` must be >= 1, got {cfg.heatmap_prompts}")
    if cfg.heatmap_prompts > cfg.eval_test:
        raise ValueError(f"`heatmap_prompts` ({cfg.heatmap_prompts}) must be <= `eval_test` ({cfg.eval_test})")
    cfg.stage_settings()  # validates every stage's options


def _heatmap(cfg: DemoConfig, pipeline, results: list[dict], out: Path, console) -> tuple[str | None, dict]:
    """Held-out responses of SFT and of the first ASR method (or the last method), scored by the RM
    the ASR method uses (the segment RM by default). Writes heatmap.html / .png / token_rewards.jsonl."""
    from segrl.pipeline.report import heldout_heatmap_rows
    from segrl.pipeline.cache import read_jsonl as _read_jsonl
    from segrl.rm import SegmentRewardModel
    from segrl.viz import render_html, render_png

    asr = [r for r in results if r["mask"] == "asr" and r.get("rm_arm")]
    shown = asr[0] if asr else results[-1]
    arm = shown.get("rm_arm") or ("segment" if pipeline.rm_dir(cfg.seed, "segment").is_dir() else None)
    if arm is None or not (pipeline.rm_dir(cfg.seed, arm) / "config.json").is_file():
        pipeline.reward_model(cfg.seed, "segment")
        arm = "segment"
    rm = SegmentRewardModel.from_pretrained(pipeline.rm_dir(cfg.seed, arm))
    n = cfg.heatmap_prompts
    prompts = pipeline.test_prompts[:n]
    sft = [r["response"] for r in _read_jsonl(pipeline.sft_dir(cfg.seed) / "test_samples.jsonl")[:n]]
    policy = [r["response"] for r in _read_jsonl(pipeline.run_dir(cfg.seed, shown["method"]) / "test_samples.jsonl")[:n]]
    short = shown["label"].split(" (")[0]  # "ASR-DPO (segment RM)" -> "ASR-DPO": the row's side label
    rows = heldout_heatmap_rows(rm, prompts, {"SFT": sft, short: policy},
                                baseline=pipeline.dpo_settings.asr_baseline, delta=pipeline.dpo_settings.asr_delta)
    # Interleave: the SFT response and the trained policy's response to the same prompt next to each other.
    rows = [row for pair in zip(rows[:n], rows[n:]) for row in pair]
    paths = {"heatmap_html": out / "heatmap.html", "heatmap_png": out / "heatmap.png",
             "token_rewards": out / "token_rewards.jsonl"}
    title = f"{arm} RM token rewards, segments and ASR mask on held-out responses (seed {cfg.seed})"
    doc = render_html(rows, paths["heatmap_html"], title=title)
    render_png(rows, paths["heatmap_png"], max_rows=min(len(rows), 8))
    with open(paths["token_rewards"], "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return doc, paths


def _print_table(summary: dict, console) -> None:
    from rich.table import Table

    from segrl.pipeline.report import TABLE_COLUMNS, table_rows

    rows = table_rows(summary)
    keep = [0, 1, 2, 3, 4, 5, 8]  # method, seeds, final / best-on-dev step acc + exact, kept tokens
    table = Table(title="held-out evaluation (greedy; final = last weights on test, best = best-on-dev checkpoint on "
                        "test)")
    for i in keep:
        table.add_column(rows[0][i], justify="left" if i == 0 else "right")
    for r in rows[1:]:
        table.add_row(*[r[i] for i in keep])
    assert len(TABLE_COLUMNS) + 2 == len(rows[0])
    console.print(table)


def run(cfg: DemoConfig, console=None, command: str | None = None) -> dict:
    """Run the demo; returns ``{"summary", "paths"}`` (paths: report, results json / md, plots, heat-maps)."""
    from rich.console import Console

    from segrl.commands.experiment import _ordered, write_outputs
    from segrl.pipeline.report import report_extras
    from segrl.pipeline.progress import Reporter

    validate(cfg)
    console = console or Console()
    command = command or "segrl demo"
    reporter = Reporter(console)
    pipeline = cfg.build(reporter, save_models=False, force=cfg.rebuild)
    t0 = time.perf_counter()
    sft = pipeline.sft(cfg.seed)
    results = [pipeline.run_method(cfg.seed, m) for m in _ordered(cfg.methods)]
    results = [r for r in results if r["method"] in cfg.methods]
    reporter.stage("report")
    out = Path(cfg.output_dir)
    heatmap_doc, heat_paths = _heatmap(cfg, pipeline, results, out, console)
    intro = (
        "<p>The whole segrl pipeline on the built-in credit-assignment task (running sums with systematic carry "
        "errors, <code>segrl.tasks</code>) and a tiny Llama trained from scratch: SFT → preference pairs sampled "
        "from the SFT model → segment / token reward models (<code>segrl.rm</code>: train-rm, fit-norm, eval-rm) → "
        "DPO, ASR-DPO (<code>segrl.dpo</code>) and segment-reward PPO (<code>segrl.ppo</code>) → held-out "
        "evaluation. One seed: the differences below are not significant by themselves; "
        "<code>segrl experiment</code> runs every method over several seeds.</p>")
    # The DPO run's implicit-reward credit and two training pairs with their ASR-DPO masks (training_pairs.html).
    extra = {**report_extras(pipeline, [cfg.seed], results, out), "wall_seconds": time.perf_counter() - t0}
    if "training_pairs_html" in extra:
        heat_paths["training_pairs_html"] = out / "training_pairs.html"
    outputs = write_outputs(cfg, pipeline, results, [sft], command, heatmap_html=heatmap_doc, intro_html=intro,
                            report_extra=extra)
    outputs["paths"].update(heat_paths)
    elapsed = time.perf_counter() - t0
    (out / "timing.json").write_text(json.dumps({"seconds": elapsed, "stages": pipeline.timings}, indent=2) + "\n")
    console.rule(f"[bold]done in {elapsed:.0f}s")
    _print_table(outputs["summary"], console)
    for name in ("markdown", "json", "heatmap_html", "token_rewards"):
        console.print(f"{name}: {outputs['paths'][name]}")
    console.print(f"[bold green]open the report:[/] [bold]{outputs['paths']['report']}[/]")
    return outputs


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``segrl demo``. Returns 0 on success, 2 on invalid options."""
    from segrl.commands._common import pipeline_command_main

    return pipeline_command_main("segrl demo", argv, parse_config, validate, run)


if __name__ == "__main__":
    raise SystemExit(main())
