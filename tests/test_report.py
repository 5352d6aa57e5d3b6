"""The pipeline report (segrl.pipeline.report): axis ranges, integer steps, error bars only with 2+ seeds,
the one-chart view of every method, the credit table, the provenance block, training pairs with their
masks, and the whole page in headless Chromium."""

from __future__ import annotations

import base64
import re

import pytest
import torch
from browser_check import load_check_script, needs_chromium
from rm_fixtures import rm_env  # noqa: F401  (fixture)

from segrl.pipeline.report import (
    aggregate,
    comparison_png,
    curves_figure,
    render_report,
    training_pair_rows,
    y_limits,
)

SFT = [{"test": {"step_accuracy": 0.5, "exact_match": 0.02, "parse_rate": 1.0},
        "dev": {"step_accuracy": 0.5, "exact_match": 0.02}}]


def _run(method, seed, family, curve, label=None):
    point = {"step_accuracy": curve[-1], "exact_match": 0.05, "answer_accuracy": 0.0, "parse_rate": 1.0}
    return {"method": method, "label": label or method.upper(), "family": family, "seed": seed, "mask": "none",
            "rewards": "-", "rm_arm": None, "final": point, "best": {**point, "step": len(curve)},
            "mean_over_checkpoints": point, "kept_token_fraction": 1.0,
            "curve": [{"step": i, "step_accuracy": v, "exact_match": 0.02} for i, v in enumerate(curve)]}


def test_y_limits_never_zoom_into_noise():
    # a curve moving by thousandths around 0.55, SFT at 0.5: the axis still spans MIN_Y_SPAN (0.2) and holds SFT
    lo, hi = y_limits([0.551, 0.553, 0.552], 0.5)
    assert lo <= 0.5 and hi >= 0.553 and hi - lo == pytest.approx(0.22)  # 0.2 * 1.1 padding
    assert y_limits([0.3, 0.9], 0.5) == pytest.approx((0.27, 0.93))  # wide data: its range plus 5% on each side
    assert y_limits([0.0, 0.01], 0.0) == pytest.approx((0.0, 0.22))  # shifted up, never below 0
    assert y_limits([0.99, 1.0]) == pytest.approx((0.78, 1.0))  # shifted down, never above 1
    assert y_limits([]) == (0.0, 1.0)


def test_curves_integer_steps_sft_in_range_and_bands_only_with_two_seeds():
    import matplotlib.pyplot as plt

    one_seed = [_run("dpo", 0, "dpo", [0.5, 0.551, 0.552]), _run("ppo", 0, "ppo", [0.5, 0.52, 0.53, 0.54])]
    fig = curves_figure(one_seed, SFT)
    panels = [ax for ax in fig.axes if ax.get_ylabel().startswith("dev ")]
    assert len(panels) == 5  # step acc + exact for two families, and the one-chart panel
    for ax in [a for a in panels if "fraction" not in a.get_xlabel()]:
        lo, hi = ax.get_ylim()
        assert hi - lo >= 0.2 - 1e-9 and lo <= (0.5 if "step" in ax.get_ylabel() else 0.02) <= hi
        assert ax.xaxis.get_major_locator()._integer  # PPO iterations / DPO steps are whole numbers
        assert not ax.collections  # one seed: no ± std band
    bottom = [a for a in fig.axes if "fraction" in a.get_xlabel()][0]
    assert "every method" in bottom.get_title()
    assert {line.get_label() for line in bottom.get_lines()} >= {"DPO", "PPO", "SFT"}
    assert max(max(line.get_xdata()) for line in bottom.get_lines() if line.get_label() != "SFT") == 1.0
    plt.close(fig)

    two_seeds = one_seed + [_run("dpo", 1, "dpo", [0.5, 0.6, 0.7])]
    fig = curves_figure(two_seeds, SFT)
    dpo_step = [a for a in fig.axes if a.get_ylabel() == "dev step accuracy" and "DPO" in a.get_title()][0]
    assert len(dpo_step.collections) == 1  # the band of the method with 2 seeds
    plt.close(fig)


def test_comparison_error_bars_only_with_two_seeds(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    calls = []
    original = Axes.errorbar
    monkeypatch.setattr(Axes, "errorbar", lambda self, x, y, **kw: calls.append(len(x)) or original(self, x, y, **kw))
    comparison_png(aggregate([_run("dpo", 0, "dpo", [0.5, 0.6])], SFT), tmp_path / "one.png")
    assert calls == []  # a single seed has no spread to show
    comparison_png(aggregate([_run("dpo", 0, "dpo", [0.5, 0.6]), _run("dpo", 1, "dpo", [0.5, 0.7]),
                              _run("ppo", 0, "ppo", [0.5, 0.6])], SFT), tmp_path / "two.png")
    assert calls and all(n == 1 for n in calls)  # only DPO's bars (2 seeds), one per kind and metric
    assert (tmp_path / "two.png").read_bytes()[:4] == b"\x89PNG"


CREDIT = {"auc_within_response": 0.612, "auc_within_response_chosen": 0.7, "auc_within_response_rejected": 0.5,
          "auc": 0.8, "first_error_hit_rate": 0.25, "first_error_n": 12, "first_error_chance": 0.2,
          "n_correct": 77, "n_wrong": 66}
RM_RECORD = {"seed": 0, "arm": "segment", "threshold": "0.2", "seconds": 3.0, "credit": CREDIT,
             "eval": {"accuracy": 0.9, "segments_per_response": 4.0, "mean_segment_length": 5.0}}


def _png(path):
    # the smallest valid PNG (1x1 white pixel)
    path.write_bytes(base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4//8/AAX+Av4N70a4AAAAAElFTkSuQmCC"))
    return path


def _report(tmp_path, **kw):
    from segrl.viz import render_html

    heat = render_html([{"title": "r", "tokens": ["1", "2"], "rewards": [0.5, -0.5], "labels": [1, -1]}])
    args = dict(title="t", summary=aggregate([_run("dpo", 0, "dpo", [0.5, 0.6])], SFT), intro_html="<p>i</p>",
                curves=_png(tmp_path / "c.png"), comparison=_png(tmp_path / "d.png"), rm_records=[RM_RECORD],
                pair_stats=[], heatmap_html=heat, timings={"sft": 2.0, "dpo": 5.0},
                settings={"seeds": [0, 1], "dpo_steps": 7}, command="segrl experiment --seeds 0 1",
                credit_rows=[{"seed": 0, "source": "implicit reward of the DPO run", "credit": CREDIT}],
                training_pairs_html=heat, wall_seconds=42.0)
    args.update(kw)
    return render_report(tmp_path / "report.html", **args).read_text()


def test_report_credit_table_provenance_and_training_pairs(tmp_path):
    import torch as torch_module
    import transformers
    import trl

    page = _report(tmp_path)
    # the credit table follows the results table, before the curves
    assert page.index("Held-out evaluation") < page.index("id='credit'") < page.index("Learning curves")
    table = page[page.index("id='credit-table'"):page.index("</table>", page.index("id='credit-table'"))]
    assert table.count("<tr>") == 3 and "segment RM (c = 0.2)" in table and "implicit reward of the DPO run" in table
    assert "<b>0.612</b>" in table and "0.250 (12 resp.)" in table and "77 / 66" in table
    # provenance: command, seeds, wall time, versions, resolved config
    prov = page[page.index("id='provenance'"):]
    for text in ("segrl experiment --seeds 0 1", "[0, 1]", "42 s", f"trl {trl.__version__}",
                 f"transformers {transformers.__version__}", f"torch {torch_module.__version__}", "segrl ",
                 "&quot;dpo_steps&quot;: 7"):
        assert text in prov, text
    assert "What the mask did in training" in page and page.count("<iframe") == 2
    assert "lab-neg" in page  # the heat-maps' oracle marks survive the srcdoc escaping
    assert not re.search(r'(src|href)="https?://', page)
    bare = _report(tmp_path, credit_rows=None, training_pairs_html=None, rm_records=[])
    assert "id='credit'" not in bare and "What the mask did" not in bare and "id='provenance'" in bare


def test_training_pair_rows_show_the_training_mask(rm_env):
    from segrl import ops
    from segrl.ops import LocationNormalizerCoef
    from segrl.rm import SegmentRewardModel
    from segrl.tasks import is_conflict_pair, make_preference_pairs
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(rm_env.init_dir, num_labels=1).eval()
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)
    rm = SegmentRewardModel(model, rm_env.tokenizer, threshold=2.0, reference_model=rm_env.ref_dir,
                            normalizer=LocationNormalizerCoef(a_mu=0.0, b_mu=0.0, a_sigma=0.0, b_sigma=1.0))
    pairs = make_preference_pairs(10, seed=3, tokenizer=rm_env.tokenizer)
    rows, delta = training_pair_rows(rm, pairs, baseline="sequence_mean", delta="auto", delta_quantile=0.3)
    assert [r["side"] for r in rows] == ["chosen", "rejected", "chosen", "rejected"]
    assert [r["seq_sign"] for r in rows] == [1, -1, 1, -1] and rows[0]["prompt"] == rows[1]["prompt"]
    first = next(p for p in pairs if p["prompt"] == rows[0]["prompt"])
    assert is_conflict_pair(first["prompt"], first["chosen"], first["rejected"])  # conflict pairs first
    # "auto" is resolved over the whole sample (10 pairs), as training resolves it over the training set
    r, m = rm.score_tokens([p["prompt"] for p in pairs] * 2,
                           [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs])
    assert delta == pytest.approx(ops.resolve_delta(r, m, "sequence_mean", "auto", 0.3)) and delta > 0
    for row in rows:
        n = len(row["tokens"])
        expected = ops.asr_mask(torch.tensor([row["rewards"]]), torch.ones(1, n, dtype=torch.bool),
                                torch.tensor([row["seq_sign"]]), baseline="sequence_mean", delta=delta)
        assert row["kept"] == expected[0].tolist()
        side = row["side"]
        pair = next(p for p in pairs if p["prompt"] == row["prompt"] and p[side].startswith(row["tokens"][0]))
        assert row["labels"] == [(v > 0) - (v < 0) for v in pair[f"{side}_token_rewards"]]


@pytest.mark.browser
@needs_chromium
def test_report_in_browser(tmp_path):
    """The report opens offline in Chromium: images decode, both heat-maps render tokens with oracle marks."""
    import matplotlib.pyplot as plt

    fig = curves_figure([_run("dpo", 0, "dpo", [0.5, 0.55, 0.6])], SFT)
    fig.savefig(tmp_path / "curves.png", dpi=60)
    plt.close(fig)
    _report(tmp_path, curves=tmp_path / "curves.png")
    result = load_check_script().check_report(tmp_path / "report.html", tmp_path / "browser")
    assert result["n_images_decoded"] == result["n_images"] == 2
    assert [f["tokens"] for f in result["frames"]] == [2, 2] and all(f["labelled"] == 2 for f in result["frames"])
    assert "Provenance" in result["sections"] and "Token credit of the reward sources" in result["sections"]
