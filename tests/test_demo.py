"""``segrl demo`` end to end, on a copy of the session's tiny model pair."""

from __future__ import annotations

import json
import shutil

import pytest

from segrl.cli import main
from segrl.models import load_tiny_prefs, step_correctness


@pytest.fixture
def demo_dir(tmp_path, tiny_pair_dir):
    # The session pair was built with make_tiny_pair's defaults, which are the demo's defaults, so
    # the demo reuses it instead of training again (the build itself is tested in test_tiny_models).
    out = tmp_path / "demo"
    shutil.copytree(tiny_pair_dir.sft.parent, out / "models")
    return out


def _rows(out):
    return [json.loads(line) for line in (out / "token_rewards.jsonl").read_text().splitlines()]


def test_demo_end_to_end(demo_dir, capsys):
    assert main(["demo", "--output_dir", str(demo_dir)]) == 0
    printed = capsys.readouterr().out
    assert "(reused)" in printed
    for name in ("heatmap.html", "heatmap.png", "token_rewards.jsonl"):
        assert str(demo_dir / name) in printed.replace("\n", "")
    assert "kept %" in printed and "rejected" in printed

    prefs = load_tiny_prefs()
    rows = _rows(demo_dir)
    assert len(rows) == 2 * len(prefs)
    for i, p in enumerate(prefs):
        for row, side, sign in ((rows[2 * i], "chosen", 1), (rows[2 * i + 1], "rejected", -1)):
            assert (row["side"], row["seq_sign"], row["prompt"], row["response"]) == (side, sign, p["prompt"], p[side])
            n = len(row["tokens"])
            assert n >= 2 and len(row["rewards"]) == len(row["segment_ids"]) == len(row["kept"]) == n
            assert "".join(row["tokens"]) == p[side] + "<|eos|>"
            assert all(isinstance(k, bool) for k in row["kept"]) and any(row["kept"])
            seg = row["segment_ids"]
            assert seg[0] == 0 and all(b - a in (0, 1) for a, b in zip(seg, seg[1:]))  # 0..K-1 in order
            ok = step_correctness(p["prompt"], p[side])
            assert ("wrong step" in row["title"]) == (not all(ok[:-1]))
            assert ("wrong answer" in row["title"]) == (not ok[-1]) == (side == "rejected")

    # The default baseline is the mean over chosen *and* rejected tokens together (SPEC §1), and
    # delta = 0: a kept chosen token is >= that mean, a kept rejected token <= it (ties inherit),
    # except in fallback rows, which keep everything.
    flat = [r for row in rows for r in row["rewards"]]
    b = sum(flat) / len(flat)
    for row in rows:
        if all(row["kept"]):
            continue
        for r, k in zip(row["rewards"], row["kept"]):
            if k:
                assert r * row["seq_sign"] >= b * row["seq_sign"] - 1e-6
    # The policy prefers chosen: more chosen than rejected tokens are kept.
    kept_c = sum(sum(r["kept"]) for r in rows if r["seq_sign"] == 1)
    kept_r = sum(sum(r["kept"]) for r in rows if r["seq_sign"] == -1)
    assert kept_c > kept_r

    html = (demo_dir / "heatmap.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and len(html) > 20_000
    assert html.count('class="tok') >= sum(len(r["tokens"]) for r in rows)
    assert "&lt;|eos|&gt;" in html
    png = (demo_dir / "heatmap.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000

    # `segrl viz` re-renders the JSONL.
    assert main(["viz", "--token_rewards_file", str(demo_dir / "token_rewards.jsonl"),
                 "--output_html", str(demo_dir / "again.html")]) == 0
    assert (demo_dir / "again.html").stat().st_size > 20_000


def test_demo_config_file_and_options(demo_dir, capsys):
    cfg = demo_dir.parent / "demo.yaml"
    cfg.write_text(f"output_dir: {demo_dir}\nbaseline: zero\ndelta: 0.05\nbeta: 0.2\npng_pairs: 2\n")
    assert main(["demo", "--config", str(cfg)]) == 0
    printed = capsys.readouterr().out
    assert "delta=0.05" in printed and "beta=0.2" in printed
    rows = _rows(demo_dir)
    # With baseline 0 and delta 0.05 (Schmitt trigger), a kept token's last reward outside the band
    # [-0.05, 0.05], at or before it, lies on its own side. Fallback rows keep everything.
    checked = 0
    for row in rows:
        if all(row["kept"]):
            continue
        s = row["seq_sign"]
        for t, k in enumerate(row["kept"]):
            if k:
                checked += 1
                assert any(r * s > 0.05 for r in row["rewards"][: t + 1])
                last_exit = [r * s for r in row["rewards"][: t + 1] if abs(r) > 0.05][-1]
                assert last_exit > 0.05
    assert checked > 50
    # Flags override the YAML.
    assert main(["demo", "--config", str(cfg), "--delta", "0.0"]) == 0
    assert "delta=0," in capsys.readouterr().out


def test_demo_rejects_bad_options(tmp_path, capsys):
    assert main(["demo", "--output_dir", str(tmp_path), "--baseline", "median"]) == 2
    assert "baseline" in capsys.readouterr().err
    assert main(["demo", "--output_dir", str(tmp_path), "--delta", "-1"]) == 2
    assert not (tmp_path / "models").exists()  # validated before anything is built
