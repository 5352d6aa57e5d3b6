"""Render an example token heat-map and check it in real headless Chromium (or check a report.html).

    python scripts/check_heatmap_browser.py [--out-dir DIR] [--png] [--window-size 1200,800]
                                            [--docs docs/heatmap_example.png]
    python scripts/check_heatmap_browser.py --report runs/demo/report.html [--out-dir DIR]

The README image is made with ``--window-size 1200,600 --docs docs/heatmap_example.png``.

Checks (exit status 1 on failure): the page loads offline, the rendered DOM has one token
``<span>`` per token, tokens dropped by the keep-mask have a lower *computed* opacity than kept
ones, and the screenshot is not blank. ``--docs`` also copies the screenshot for the README.
The test ``tests/test_viz.py::test_browser_render`` imports this file and calls :func:`check`.

``--report`` checks a pipeline report (``segrl demo`` / ``segrl experiment``) instead, with
:func:`check_report`: every inline image decodes, every heat-map iframe renders its token spans (and
the oracle marks under labelled tokens), the credit table and the provenance block are there, and a
full-page screenshot is not blank.
"""

from __future__ import annotations

import argparse
import html
import json
import pathlib
import random
import re
import shutil
import subprocess
import sys
import tempfile

CHROMIUM = "/usr/bin/chromium"

# Flags for a hermetic run: no network, no GPU, no profile, no first-run UI.
_CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]

# Injected only into the copy of the page that the check loads: measures computed opacity after
# layout and writes the result into the DOM, where --dump-dom can read it back.
_CHECK_SCRIPT = """<script>
(function () {
  var toks = document.querySelectorAll('span.tok');
  var kept = [], drop = [];
  toks.forEach(function (t) {
    var o = parseFloat(getComputedStyle(t).opacity);
    (t.classList.contains('drop') ? drop : kept).push(o);
  });
  var out = document.createElement('pre');
  out.id = 'segrl-check';
  out.style.display = 'none';
  out.textContent = JSON.stringify({
    n_tokens: toks.length, n_drop: drop.length,
    kept_min_opacity: kept.length ? Math.min.apply(null, kept) : null,
    drop_max_opacity: drop.length ? Math.max.apply(null, drop) : null,
    n_seg_start: document.querySelectorAll('span.tok.seg-start').length
  });
  document.body.appendChild(out);
})();
</script>"""


# ------------------------------------------------------------------------------------------
# Example data (illustrative numbers; the library computes segments/masks with segrl.ops)
# ------------------------------------------------------------------------------------------

_PROMPT = "Q: What is 17 × 24? Show the steps."
_STEPS = [" 17", " ×", " 24", " =", " 17", " ×", " 20", " +", " 17", " ×", " 4", " =", " 340", " +"]
_CHOSEN = _STEPS + [" 68", " =", " 408", ".", "\n", "So", " the", " answer", " is", " 408", ".", "<|endoftext|>"]
_REJECTED = _STEPS + [" 48", " =", " 388", ".", "\n", "So", " the", " answer", " is", " 388", ".", "<|endoftext|>"]
# Per-token "true" signal before noise: chosen is good throughout with a lukewarm filler phrase;
# the rejected answer is fine until the arithmetic slip (" 48") and bad from there on.
_CHOSEN_BASE = [0.3, 0.2, 0.3, 0.1, 0.5, 0.4, 0.6, 0.3, 0.4, 0.2, 0.5, 0.2, 0.7, 0.3, 0.9, 0.4, 1.0, 0.2, 0.1,
                -0.2, -0.3, -0.1, 0.1, 0.9, 0.3, 0.0]
_REJECTED_BASE = [0.3, 0.2, 0.3, 0.1, 0.5, 0.4, 0.6, 0.3, 0.4, 0.2, 0.5, 0.2, 0.6, 0.2, -1.1, -0.4, -1.2, -0.3,
                  -0.1, 0.2, 0.1, -0.2, -0.3, -1.0, -0.4, 0.0]


def _states(rewards: list[float], delta: float) -> list[int]:
    """Schmitt-trigger states with baseline 0 (docs/method.md#asr-mask), in plain Python for the example."""
    out, s = [], 0
    for r in rewards:
        s = 1 if r > delta else (-1 if r < -delta else s)
        out.append(s)
    return out


def _segments(states: list[int]) -> list[int]:
    """Segment ids: runs of equal state; the last token (EOS) is outside every segment."""
    ids, k = [], -1
    for t, s in enumerate(states[:-1]):
        k += t == 0 or s != states[t - 1]
        ids.append(k)
    return ids + [-1]


def example_rows(seed: int = 0) -> list[dict]:
    """Three illustrative rows: a chosen and a rejected response with ASR-style segments and
    keep-masks, and a code answer with raw rewards only (exercises HTML escaping)."""
    rng = random.Random(seed)
    rows = []
    for title, side, sign, tokens, base in (
        ("pair 0", "chosen", 1, _CHOSEN, _CHOSEN_BASE),
        ("pair 0", "rejected", -1, _REJECTED, _REJECTED_BASE),
    ):
        rewards = [round(b + rng.gauss(0, 0.08), 3) for b in base]
        states = _states(rewards, delta=0.05)
        segs = _segments(states)
        kept = [s == sign and g >= 0 for s, g in zip(states, segs)]
        rows.append({"title": title, "side": side, "prompt": _PROMPT, "tokens": tokens, "rewards": rewards,
                     "segment_ids": segs, "kept": kept})
    code = ["<script>", "if", " (", "a", " &&", " b", ")", " {", "\n", "\t", "alert", "(\"", "hi", "\");",
            "\n", "}", "</script>"]
    rows.append({"title": "raw token rewards (no segments / mask)", "prompt": "Write a guarded alert.",
                 "tokens": code, "token_rewards": [round(rng.uniform(-0.8, 0.8), 3) for _ in code]})
    return rows


# ------------------------------------------------------------------------------------------
# Chromium
# ------------------------------------------------------------------------------------------


def _chromium(args: list[str], profile: pathlib.Path, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, *_CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def screenshot(html_path: pathlib.Path, png_path: pathlib.Path, size: str = "1200,800") -> pathlib.Path:
    """Screenshot ``html_path`` (a file on disk) into ``png_path`` with headless Chromium."""
    with tempfile.TemporaryDirectory() as profile:
        proc = _chromium([f"--screenshot={png_path}", f"--window-size={size}", html_path.resolve().as_uri()],
                         pathlib.Path(profile))
    if not png_path.exists():
        raise RuntimeError(f"chromium wrote no screenshot (rc={proc.returncode}):\n{proc.stderr[-2000:]}")
    return png_path


def dump_dom(html_path: pathlib.Path) -> str:
    """The DOM after scripts ran, serialised by headless Chromium."""
    with tempfile.TemporaryDirectory() as profile:
        proc = _chromium(["--dump-dom", html_path.resolve().as_uri()], pathlib.Path(profile))
    if "<body" not in proc.stdout:
        raise RuntimeError(f"chromium --dump-dom returned no document (rc={proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc.stdout


def distinct_colours(png_path: pathlib.Path) -> int:
    """Number of distinct RGB colours in a PNG (a blank page has one or two)."""
    import matplotlib.image as mpimg
    import numpy as np

    img = mpimg.imread(str(png_path))  # float in [0, 1], (H, W, 3 or 4)
    rgb = (img[..., :3] * 255).round().astype(np.uint8).reshape(-1, 3)
    return len(np.unique(rgb, axis=0))


def check(html_path: pathlib.Path, work_dir: pathlib.Path, *, n_tokens: int, n_drop: int,
          size: str = "1200,800") -> dict:
    """Load ``html_path`` in Chromium; return measurements, raise AssertionError on failure."""
    work_dir.mkdir(parents=True, exist_ok=True)
    probe = work_dir / "probe.html"
    probe.write_text(html_path.read_text(encoding="utf-8").replace("</body>", _CHECK_SCRIPT + "</body>"),
                     encoding="utf-8")
    dom = dump_dom(probe)
    found = re.search(r'<pre id="segrl-check"[^>]*>(.*?)</pre>', dom, re.S)
    assert found, "the check script did not run (no #segrl-check element in the dumped DOM)"
    result = json.loads(html.unescape(found.group(1)))
    assert result["n_tokens"] == n_tokens, f"DOM has {result['n_tokens']} token spans, expected {n_tokens}"
    assert result["n_drop"] == n_drop, f"DOM has {result['n_drop']} dropped tokens, expected {n_drop}"
    if n_drop:
        assert result["drop_max_opacity"] < result["kept_min_opacity"], f"dropped tokens not dimmed: {result}"
    png = screenshot(html_path, work_dir / "screenshot.png", size)
    result["screenshot"] = str(png)
    result["screenshot_bytes"] = png.stat().st_size
    result["distinct_colours"] = distinct_colours(png)
    assert result["distinct_colours"] > 50, f"screenshot looks blank: {result['distinct_colours']} colours"
    return result


# Injected into a copy of a report: after load, measures images, iframes and sections.
_REPORT_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.querySelectorAll('img'));
  var frames = Array.prototype.slice.call(document.querySelectorAll('iframe')).map(function (f) {
    var d = f.contentDocument;
    return d ? {tokens: d.querySelectorAll('span.tok').length,
                labelled: d.querySelectorAll('span.tok.lab-pos, span.tok.lab-neg').length,
                height: d.documentElement.scrollHeight} : null;
  });
  var out = document.createElement('pre');
  out.id = 'segrl-report-check';
  out.style.display = 'none';
  out.textContent = JSON.stringify({
    n_images: imgs.length,
    n_images_decoded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
    frames: frames,
    sections: Array.prototype.slice.call(document.querySelectorAll('h2')).map(function (h) { return h.textContent; }),
    has_credit: !!document.getElementById('credit'),
    has_provenance: !!document.getElementById('provenance'),
    page_height: document.documentElement.scrollHeight
  });
  document.body.appendChild(out);
});
</script>"""


def check_report(report_path: pathlib.Path, work_dir: pathlib.Path, *, width: int = 1300) -> dict:
    """Load a pipeline ``report.html`` in Chromium; return measurements, raise AssertionError on failure.

    The screenshot (``work_dir/report.png``) covers the whole page height.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    probe = work_dir / "report_probe.html"
    probe.write_text(report_path.read_text(encoding="utf-8").replace("</body>", _REPORT_SCRIPT + "</body>"),
                     encoding="utf-8")
    dom = dump_dom(probe)
    found = re.search(r'<pre id="segrl-report-check"[^>]*>(.*?)</pre>', dom, re.S)
    assert found, "the report check script did not run (no #segrl-report-check element in the dumped DOM)"
    result = json.loads(html.unescape(found.group(1)))
    assert result["n_images"] >= 2 and result["n_images_decoded"] == result["n_images"], f"broken images: {result}"
    assert result["frames"] and all(f and f["tokens"] > 0 for f in result["frames"]), f"empty heat-map: {result}"
    assert result["has_credit"] and result["has_provenance"], f"missing credit table or provenance: {result}"
    png = screenshot(report_path, work_dir / "report.png", f"{width},{min(result['page_height'] + 40, 16000)}")
    result["screenshot"] = str(png)
    result["distinct_colours"] = distinct_colours(png)
    assert result["distinct_colours"] > 50, f"screenshot looks blank: {result['distinct_colours']} colours"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=None, help="keep outputs here (default: a temp dir)")
    parser.add_argument("--docs", default=None, help="also copy the screenshot here (e.g. docs/heatmap_example.png)")
    parser.add_argument("--png", action="store_true", help="also write the matplotlib PNG (heatmap_mpl.png)")
    parser.add_argument("--window-size", default="1200,800", help="browser window WIDTH,HEIGHT for the screenshot")
    parser.add_argument("--report", default=None, help="check this pipeline report.html instead of the example")
    args = parser.parse_args(argv)
    if not pathlib.Path(CHROMIUM).exists():
        print(f"skip: {CHROMIUM} not found", file=sys.stderr)
        return 2
    if args.report:
        out = pathlib.Path(args.out_dir or tempfile.mkdtemp(prefix="segrl-report-"))
        print(json.dumps(check_report(pathlib.Path(args.report), out), indent=2))
        return 0

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout
    from segrl.viz import render_html, render_png, validate_rows

    out = pathlib.Path(args.out_dir or tempfile.mkdtemp(prefix="segrl-heatmap-"))
    out.mkdir(parents=True, exist_ok=True)
    rows = example_rows()
    norm = validate_rows(rows)
    page = out / "heatmap.html"
    render_html(rows, page, title="segrl token heat-map — example")
    n_tokens = sum(len(r["tokens"]) for r in norm)
    n_drop = sum(1 for r in norm if r["kept"] for k in r["kept"] if not k)
    result = check(page, out, n_tokens=n_tokens, n_drop=n_drop, size=args.window_size)
    if args.png:
        result["matplotlib_png"] = str(render_png(rows, out / "heatmap_mpl.png"))
    if args.docs:
        shutil.copyfile(result["screenshot"], args.docs)
        result["docs"] = args.docs
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
