"""Token heat-maps (segrl.viz) and the `segrl viz` command."""

from __future__ import annotations

import json
import math
import pathlib
import re
import subprocess
import sys

import pytest
import torch
from browser_check import load_check_script, needs_chromium

from segrl.viz import (
    render_html,
    render_png,
    reward_color,
    robust_scale,
    rows_from_jsonl,
    rows_from_tensors,
    validate_rows,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
TOKEN_SPAN = re.compile(r'<span class="(tok[^"]*)" data-i="(\d+)"')


def _row(**over):
    row = {
        "title": "r0",
        "tokens": ["The", " cat", " sat", "\n", "<script>", "&", "<|eos|>"],
        "rewards": [0.5, 0.4, -0.3, -0.2, 0.9, -1.0, 0.0],
        "segment_ids": [0, 0, 1, 1, 2, 2, -1],
        "kept": [True, True, False, False, True, False, False],
    }
    row.update(over)
    return row


def _spans(doc: str) -> list[tuple[set[str], int]]:
    """(classes, token index) of every token span, in document order."""
    return [(set(cls.split()), int(i)) for cls, i in TOKEN_SPAN.findall(doc)]


# ------------------------------------------------------------------------------------------
# HTML
# ------------------------------------------------------------------------------------------


def test_html_one_span_per_token():
    rows = [_row(), _row(title="r1", tokens=["a", "b"], rewards=[1.0, -1.0], segment_ids=None, kept=None)]
    doc = render_html(rows)
    assert doc.count("<span") == 7 + 2  # decorations use other elements, so spans == tokens
    spans = _spans(doc)
    assert [i for _, i in spans] == list(range(7)) + [0, 1]
    assert doc.startswith("<!DOCTYPE html>") and doc.rstrip().endswith("</html>")


def test_html_is_self_contained():
    doc = render_html([_row()])
    assert "<script" not in doc.lower().replace("&lt;script", "")  # no script tags of its own
    assert not re.search(r"(src|href)\s*=", doc)  # nothing external: no CDN, no stylesheet links
    assert "<style>" in doc


def test_html_escapes_tokens_titles_and_prompts():
    row = _row(title='<b>"t"</b>', prompt="x < y && z", tokens=["<script>", "&", '"q"', "a"],
               rewards=[0.1, 0.2, 0.3, 0.4], segment_ids=None, kept=None)
    doc = render_html([row], title="<T&>")
    assert "<script>" not in doc
    assert "&lt;script&gt;" in doc and "&amp;" in doc
    assert "<b>\"t\"</b>" not in doc and "&lt;b&gt;&quot;t&quot;&lt;/b&gt;" in doc
    assert "x &lt; y &amp;&amp; z" in doc
    assert "<title>&lt;T&amp;&gt;</title>" in doc
    # Tooltips carry the exact values and stay inside their attribute.
    titles = re.findall(r'title="([^"]*)"', doc)
    assert any("reward: +0.3000" in t and "token: &#x27;&quot;q&quot;&#x27;" in t for t in titles)


def test_html_dims_dropped_tokens():
    doc = render_html([_row()])
    dropped = {i for cls, i in _spans(doc) if "drop" in cls}
    assert dropped == {2, 3, 5, 6}
    assert re.search(r"\.tok\.drop \{[^}]*opacity: 0\.\d+[^}]*line-through", doc)


def test_html_marks_segment_starts():
    doc = render_html([_row()])
    starts = [i for cls, i in _spans(doc) if "seg-start" in cls]
    gaps = [i for cls, i in _spans(doc) if "gap-start" in cls]
    noseg = [i for cls, i in _spans(doc) if "noseg" in cls]
    assert starts == [0, 2, 4] and gaps == [6] and noseg == [6]
    # Each visible bar (with its index) sits right before the token it marks.
    bars = re.findall(r'<b class="segbar" data-seg="(\d+)"><sup>\d+</sup></b><span class="[^"]*" data-i="(\d+)"', doc)
    assert bars == [("0", "0"), ("1", "2"), ("2", "4")]


def test_html_leading_gap_is_not_a_segment_start():
    doc = render_html([_row(segment_ids=[-1, 0, 0, 1, 1, 1, -1])])
    assert [i for cls, i in _spans(doc) if "seg-start" in cls] == [1, 3]
    assert [i for cls, i in _spans(doc) if "gap-start" in cls] == [6]


def test_html_shows_whitespace():
    doc = render_html([{"tokens": [" a", "b\n", "\tc", ""], "rewards": [0, 0, 0, 0]}])
    assert '<i class="ws">·</i>a' in doc
    assert '<i class="ws">↵</i></span><br>' in doc
    assert '<i class="ws">⇥</i>c' in doc
    assert '<i class="ws">∅</i>' in doc  # an empty token still gets a visible cell


def test_html_summary_and_legend():
    doc = render_html([_row(side="rejected", fallback=True)])
    assert "<b>7</b> tokens" in doc
    assert "kept <b>43%</b> (3/7)" in doc
    assert "<b>3</b> segments" in doc
    assert "rejected (σ=−1)" in doc
    assert "fallback: full mask" in doc
    assert 'class="legend"' in doc and "linear-gradient" in doc


def test_html_draws_oracle_labels_under_labelled_tokens():
    labels = [1, 0, -1, 0, True, False, 0]
    doc = render_html([_row(labels=labels), _row(title="unlabelled")])
    spans = _spans(doc)
    # row 0: one lab-pos / lab-neg class per labelled token (bools accepted); row 1 has none
    assert [("lab-pos" in c) - ("lab-neg" in c) for c, _ in spans[:7]] == [1, 0, -1, 0, 1, -1, 0]
    assert not any({"lab-pos", "lab-neg"} & c for c, _ in spans[7:])
    assert doc.count('data-label="-1"') == 2 and "label: wrong" in doc
    assert "labels <b>2</b> ✓ / <b>2</b> ✗" in doc and "oracle label: correct / wrong" in doc
    assert "oracle label" not in render_html([_row()])  # legend entry only when some row has labels
    # the mark is drawn by CSS under the token (a pseudo-element: still one span per token)
    assert '.tok.lab-neg::after { content: "✗"' in doc and doc.count("<span") == 14


def test_html_columns_put_rows_side_by_side():
    doc = render_html([_row(side="chosen"), _row(side="rejected")], columns=2, intro="<p id='x'>pair</p>")
    assert 'class="grid" style="grid-template-columns:repeat(2, minmax(0, 1fr))"' in doc and "<p id='x'>" in doc
    assert 'class="grid"' not in render_html([_row()])
    with pytest.raises(ValueError, match="columns"):
        render_html([_row()], columns=0)


def test_aliases_match_canonical_keys():
    canon = _row()
    alias = {k: v for k, v in canon.items() if k not in ("rewards", "kept")}
    alias.update(token_rewards=canon["rewards"], mask=canon["kept"])
    assert render_html([alias]) == render_html([canon])


def test_render_html_writes_file(tmp_path):
    path = tmp_path / "m.html"
    doc = render_html([_row()], path)
    assert path.read_text(encoding="utf-8") == doc


@pytest.mark.parametrize(
    "row, words",
    [
        ({"rewards": [1.0]}, ["row 1", "'tokens'"]),
        ({"tokens": ["a", "b"]}, ["row 1", "'rewards'"]),
        ({"tokens": ["a", "b"], "rewards": [1.0]}, ["row 1", "'rewards'", "length 1", "2"]),
        ({"tokens": ["a", "b"], "rewards": [1.0, float("nan")]}, ["row 1", "'rewards'[1]", "nan"]),
        ({"tokens": ["a"], "rewards": [float("inf")]}, ["row 1", "'rewards'[0]"]),
        ({"tokens": ["a"], "rewards": ["x"]}, ["row 1", "'rewards'[0]"]),
        ({"tokens": ["a", "b"], "rewards": [1, 2], "segment_ids": [0]}, ["row 1", "'segment_ids'"]),
        ({"tokens": ["a"], "rewards": [1], "segment_ids": [-2]}, ["row 1", "'segment_ids'[0]"]),
        ({"tokens": ["a", "b"], "rewards": [1, 2], "kept": [True]}, ["row 1", "'kept'"]),
        ({"tokens": ["a"], "rewards": [1], "mask": ["yes"]}, ["row 1", "'kept'[0]"]),
        ({"tokens": "ab", "rewards": [1, 2]}, ["row 1", "'tokens'", "list"]),
        ({"tokens": [1], "rewards": [1]}, ["row 1", "'tokens'[0]"]),
        ({"tokens": ["a", "b"], "rewards": [1, 2], "labels": [1]}, ["row 1", "'labels'", "length 1"]),
        ({"tokens": ["a"], "rewards": [1], "labels": [2]}, ["row 1", "'labels'[0]"]),
    ],
)
def test_bad_rows_raise_naming_field(row, words):
    good = {"tokens": ["ok"], "rewards": [0.0]}
    for render in (lambda rows: render_html(rows), validate_rows):
        with pytest.raises(ValueError) as err:
            render([good, row])
        for word in words:
            assert word in str(err.value), (word, str(err.value))


def test_bad_containers_raise():
    with pytest.raises(ValueError, match="empty"):
        render_html([])
    with pytest.raises(ValueError, match="row 0"):
        render_html(["not a dict"])
    with pytest.raises(ValueError, match="scale"):
        render_html([_row()], scale=0.0)


# ------------------------------------------------------------------------------------------
# Colour scale, loaders
# ------------------------------------------------------------------------------------------


def test_reward_color_is_diverging_and_centred():
    assert reward_color(0.3, 0.3, 1.0) == (0xF7, 0xF7, 0xF7)
    r, _, b = reward_color(-1.0, 0.0, 1.0)
    assert r > b  # red below the centre
    r, _, b = reward_color(2.0, 0.0, 1.0)
    assert b > r and reward_color(2.0, 0.0, 1.0) == reward_color(1.0, 0.0, 1.0)  # clipped


def test_robust_scale_ignores_outliers():
    rows = validate_rows([{"tokens": ["a"] * 100, "rewards": [0.1] * 99 + [100.0]}])
    assert robust_scale(rows) == pytest.approx(0.1)
    assert robust_scale(validate_rows([{"tokens": ["a"], "rewards": [0.0]}])) == 1.0


def test_rows_from_tensors_slices_padding():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    seg = torch.tensor([[0, 0, 1], [0, -1, -1]])
    kept = torch.tensor([[True, False, True], [True, False, False]])
    rows = rows_from_tensors([["a", "b", "c"], ["d"]], rewards, mask, seg, kept, titles=["x", "y"])
    assert rows[1] == {"title": "y", "tokens": ["d"], "rewards": [4.0], "segment_ids": [0], "kept": [True]}
    assert rows[0]["segment_ids"] == [0, 0, 1] and rows[0]["kept"] == [True, False, True]
    plain = rows_from_tensors([["a", "b", "c", "pad"], ["d", "pad", "pad", "pad"]], rewards, mask)
    assert plain[1]["tokens"] == ["d"] and plain[1]["segment_ids"] is None and plain[0]["title"] == "row 0"
    with pytest.raises(ValueError, match=r"tokens\[1\]"):
        rows_from_tensors([["a", "b", "c"], []], rewards, mask)


def test_rows_from_jsonl(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(_row()) + "\n\n" + json.dumps(_row(title="r1")) + "\n")
    rows = rows_from_jsonl(path)
    assert [r["title"] for r in rows] == ["r0", "r1"]
    path.write_text(json.dumps(_row()) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"rows\.jsonl:2"):
        rows_from_jsonl(path)


def test_render_html_does_not_import_matplotlib():
    code = ("import sys, segrl.viz as v; v.render_html([{'tokens': ['a'], 'rewards': [1.0]}]); "
            "assert 'matplotlib' not in sys.modules and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ------------------------------------------------------------------------------------------
# PNG
# ------------------------------------------------------------------------------------------


def _png_size(path: pathlib.Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_png_is_written_valid_and_deterministic(tmp_path):
    rows = [_row(), _row(title="r1", segment_ids=None, kept=None)]
    a = render_png(rows, tmp_path / "a.png")
    b = render_png(rows, tmp_path / "b.png")
    assert a == tmp_path / "a.png" and a.stat().st_size > 5_000
    width, height = _png_size(a)
    assert 1000 < width < 2500 and 300 < height < 2000
    assert a.read_bytes() == b.read_bytes()
    import matplotlib.image as mpimg

    img = mpimg.imread(str(a))
    assert img.shape[:2] == (height, width) and img[..., :3].std() > 0.05  # not blank


def test_png_makes_room_for_labels(tmp_path):
    plain = render_png([_row()], tmp_path / "a.png", dpi=50)
    labelled = render_png([_row(labels=[1, 0, -1, 0, 1, -1, 0])], tmp_path / "b.png", dpi=50)
    (w0, h0), (w1, h1) = _png_size(plain), _png_size(labelled)
    assert w0 == w1 and h1 > h0  # one extra band under the single token line


def test_png_wraps_long_rows_and_limits_rows(tmp_path):
    short = render_png([{"tokens": ["ab"] * 5, "rewards": [0.1] * 5}], tmp_path / "s.png")
    long_ = render_png([{"tokens": ["ab"] * 200, "rewards": [0.1] * 200}], tmp_path / "l.png")
    assert _png_size(long_)[1] > _png_size(short)[1] + 200  # wrapped over many lines
    rows = [{"tokens": ["x"], "rewards": [float(i)]} for i in range(30)]
    few = render_png(rows, tmp_path / "few.png", max_rows=3)
    assert _png_size(few)[1] < _png_size(render_png(rows, tmp_path / "all.png", max_rows=30))[1]
    with pytest.raises(ValueError, match="max_rows"):
        render_png(rows, tmp_path / "x.png", max_rows=0)


# ------------------------------------------------------------------------------------------
# `segrl viz`
# ------------------------------------------------------------------------------------------


def _write_jsonl(path: pathlib.Path, rows: list[dict]) -> pathlib.Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cli_rows():
    return [
        {"title": "c", "side": "chosen", "tokens": list("abcdef"), "rewards": [0.5, 0.4, -0.3, -0.2, 0.6, 0.1]},
        {"title": "r", "seq_sign": -1, "tokens": list("abcd"), "token_rewards": [0.2, -0.5, -0.6, 0.3]},
    ]


def test_cli_viz_token_rewards_file(tmp_path, capsys):
    from segrl.cli import main

    src = _write_jsonl(tmp_path / "rows.jsonl", _cli_rows())
    html_path, png_path = tmp_path / "out.html", tmp_path / "out.png"
    rc = main(["viz", "--token_rewards_file", str(src), "--output_html", str(html_path),
               "--output_png", str(png_path), "--baseline", "zero"])
    assert rc == 0
    out = capsys.readouterr().out
    assert str(html_path) in out and str(png_path) in out
    doc = html_path.read_text(encoding="utf-8")
    spans = _spans(doc)
    assert len(spans) == 10
    # baseline 0, delta 0: chosen keeps r > 0, rejected keeps r < 0; segments are sign runs.
    first, second = spans[:6], spans[6:]
    assert [i for cls, i in first if "drop" in cls] == [2, 3]
    assert [i for cls, i in second if "drop" in cls] == [0, 3]
    assert [i for cls, i in first if "seg-start" in cls] == [0, 2, 4]
    assert [i for cls, i in second if "seg-start" in cls] == [0, 1, 3]
    assert _png_size(png_path)[0] > 500


def test_cli_viz_keeps_given_segments_and_asr_off(tmp_path):
    from segrl.cli import main

    given = _row()
    src = _write_jsonl(tmp_path / "rows.jsonl", [given, {"tokens": ["a", "b"], "rewards": [1.0, -1.0]}])
    html_path = tmp_path / "out.html"
    assert main(["viz", "--token_rewards_file", str(src), "--output_html", str(html_path)]) == 0
    spans = _spans(html_path.read_text(encoding="utf-8"))
    assert [i for cls, i in spans[:7] if "drop" in cls] == [2, 3, 5, 6]  # the row's own mask wins
    assert main(["viz", "--token_rewards_file", str(src), "--output_html", str(html_path), "--asr", "false"]) == 0
    spans = _spans(html_path.read_text(encoding="utf-8"))
    assert not any("drop" in cls or "seg-start" in cls for cls, _ in spans[7:])


def test_cli_viz_yaml_config(tmp_path):
    from segrl.cli import main

    src = _write_jsonl(tmp_path / "rows.jsonl", _cli_rows())
    cfg = tmp_path / "viz.yaml"
    cfg.write_text(f"token_rewards_file: {src}\noutput_html: {tmp_path / 'y.html'}\ndelta: 0.25\n"
                   "title: from yaml\n")
    assert main(["viz", "--config", str(cfg)]) == 0
    doc = (tmp_path / "y.html").read_text(encoding="utf-8")
    assert "<title>from yaml</title>" in doc


def test_cli_viz_errors(tmp_path, capsys):
    from segrl.cli import main

    assert main(["viz", "--output_html", str(tmp_path / "x.html")]) == 2
    assert "no input" in capsys.readouterr().err
    src = _write_jsonl(tmp_path / "bad.jsonl", [{"tokens": ["a"], "rewards": [math.nan]}])
    assert main(["viz", "--token_rewards_file", str(src), "--output_html", str(tmp_path / "x.html")]) == 2
    assert "'rewards'[0]" in capsys.readouterr().err
    assert main(["viz", "--policy", "p", "--output_html", str(tmp_path / "x.html")]) == 2
    assert "--ref_model" in capsys.readouterr().err
    src = _write_jsonl(tmp_path / "side.jsonl", [{"tokens": ["a"], "rewards": [1.0], "side": "left"}])
    assert main(["viz", "--token_rewards_file", str(src), "--output_html", str(tmp_path / "x.html")]) == 2
    assert "'side'" in capsys.readouterr().err


def test_cli_viz_model_rewards(tmp_path, monkeypatch):
    """Implicit rewards from two (untrained) tiny models on the built-in preference data."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from segrl.cli import main
    from segrl.models import build_tiny_tokenizer, make_tiny_model_dir

    tok = build_tiny_tokenizer()
    policy = make_tiny_model_dir(tmp_path / "policy", seed=0, tokenizer=tok)
    ref = make_tiny_model_dir(tmp_path / "ref", seed=1, tokenizer=tok)
    data = _write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": "2+5=", "chosen": "2+5=7;=7", "rejected": "2+5=8;=8"},
        {"prompt": [{"role": "user", "content": "1+1="}], "chosen": [{"role": "assistant", "content": "1+1=2;=2"}],
         "rejected": [{"role": "assistant", "content": "1+1=3;=3"}]},
    ])
    out = tmp_path / "m.html"
    rc = main(["viz", "--policy", str(policy), "--ref_model", str(ref), "--dataset", str(data),
               "--beta", "0.5", "--delta", "0.01", "--output_html", str(out), "--output_png", str(tmp_path / "m.png")])
    assert rc == 0
    doc = out.read_text(encoding="utf-8")
    assert doc.count('<section class="row"') == 4
    assert "chosen (σ=+1)" in doc and "rejected (σ=−1)" in doc
    assert len(_spans(doc)) > 8 and "seg-start" in doc
    assert (tmp_path / "m.png").stat().st_size > 5_000


# ------------------------------------------------------------------------------------------
# Real browser
# ------------------------------------------------------------------------------------------


@pytest.mark.browser
@needs_chromium
def test_browser_render(tmp_path):
    """Open the heat-map in headless Chromium: DOM token count, computed dimming, non-blank pixels."""
    check = load_check_script()
    rows = check.example_rows()
    norm = validate_rows(rows)
    page = tmp_path / "heatmap.html"
    render_html(rows, page)
    n_tokens = sum(len(r["tokens"]) for r in norm)
    n_drop = sum(1 for r in norm if r["kept"] for k in r["kept"] if not k)
    result = check.check(page, tmp_path / "browser", n_tokens=n_tokens, n_drop=n_drop)
    assert result["n_tokens"] == n_tokens and n_drop > 0
    assert result["drop_max_opacity"] < result["kept_min_opacity"] == 1
    assert result["n_seg_start"] == sum(1 for r in norm for cls in [r["segment_ids"] or []]
                                        for t, s in enumerate(cls) if s >= 0 and (t == 0 or cls[t - 1] != s))
    assert result["distinct_colours"] > 50
