"""Token heat-maps: token rewards, segments and ASR keep-masks as HTML or PNG.

A *row* is one response, given as a dict::

    {"title": str, "tokens": list[str], "rewards": list[float],
     "segment_ids": list[int] | None, "kept": list[bool] | None, "prompt": str (optional)}

``"token_rewards"`` is accepted as an alias of ``"rewards"`` and ``"mask"`` as an alias of
``"kept"``. An optional ``"labels"`` list (+1 correct / -1 wrong / 0 unlabelled per token, e.g. the
built-in task's oracle; bools accepted) draws a ✓ / ✗ under each labelled token, so a reader sees
where the reward's credit lands against the truth (docs/method.md#token-credit). Optional extra
keys shown in a row's summary: ``"side"`` (chosen / rejected),
``"seq_sign"`` (+1 / -1) and ``"fallback"`` (True when the ASR mask fell back to the full
response). ``segment_ids`` follow docs/method.md#tensor-conventions (``0..K-1`` in order, ``-1`` outside every segment);
``kept`` is the ASR keep-mask (False = the token is dropped from the loss).

Colours are a diverging red/blue scale (ColorBrewer RdBu, colour-blind safe) centred at ``center``
and scaled by a robust maximum of ``|r - center|`` over *all* rows, so rows of one map are
comparable. The HTML is a single self-contained file (inline CSS, no scripts, works offline); the
PNG is a matplotlib figure for papers. matplotlib is imported only inside :func:`render_png`, so
``render_html`` costs nothing beyond the standard library.
"""

from __future__ import annotations

import html
import json
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "render_html",
    "render_png",
    "rows_from_jsonl",
    "rows_from_tensors",
    "validate_rows",
    "robust_scale",
    "reward_color",
]

# ColorBrewer RdBu (7 classes), evenly spaced over [-1, 1]: red = below center, blue = above.
# Shared by the HTML and the PNG so both outputs read the same.
_STOPS: tuple[str, ...] = ("#b2182b", "#ef8a62", "#fddbc7", "#f7f7f7", "#d1e5f0", "#67a9cf", "#2166ac")

# The quantile of |r - center| that maps to full colour. Not the max: one outlier token would
# otherwise wash every other token out to near-white.
_ROBUST_Q = 0.95

# Visible stand-ins for whitespace, so spacing and line structure are part of the picture.
_WS_GLYPHS = {" ": "·", "\t": "⇥", "\r": "␍", "\n": "↵"}


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _pick(row: Mapping[str, Any], key: str, alias: str) -> Any:
    """Return ``row[key]``, falling back to ``row[alias]`` (``None`` when neither is set)."""
    value = row.get(key)
    return row.get(alias) if value is None else value


def _as_list(value: Any, field: str, i: int) -> list:
    """Turn a list / tuple / tensor / array into a plain list, or raise naming the field."""
    if hasattr(value, "tolist"):  # torch tensors and numpy arrays
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"row {i}: field {field!r} must be a list, got {type(value).__name__}")
    return list(value)


def _check_tokens(row: Mapping[str, Any], i: int) -> list[str]:
    tokens = row.get("tokens")
    if tokens is None:
        raise ValueError(f"row {i}: missing field 'tokens'")
    tokens = _as_list(tokens, "tokens", i)
    for t, tok in enumerate(tokens):
        if not isinstance(tok, str):
            raise ValueError(f"row {i}: field 'tokens'[{t}] must be a str, got {type(tok).__name__}")
    return tokens


def _check_rewards(row: Mapping[str, Any], i: int, n: int) -> list[float]:
    rewards = _pick(row, "rewards", "token_rewards")
    if rewards is None:
        raise ValueError(f"row {i}: missing field 'rewards' (or its alias 'token_rewards')")
    rewards = _as_list(rewards, "rewards", i)
    if len(rewards) != n:
        raise ValueError(f"row {i}: field 'rewards' has length {len(rewards)} but 'tokens' has {n}")
    out = []
    for t, r in enumerate(rewards):
        try:
            r = float(r)
        except (TypeError, ValueError):
            raise ValueError(f"row {i}: field 'rewards'[{t}] is not a number: {r!r}") from None
        if not math.isfinite(r):
            raise ValueError(f"row {i}: field 'rewards'[{t}] is {r} (NaN/inf rewards are not allowed)")
        out.append(r)
    return out


def _check_segment_ids(row: Mapping[str, Any], i: int, n: int) -> list[int] | None:
    seg = row.get("segment_ids")
    if seg is None:
        return None
    seg = _as_list(seg, "segment_ids", i)
    if len(seg) != n:
        raise ValueError(f"row {i}: field 'segment_ids' has length {len(seg)} but 'tokens' has {n}")
    out = []
    for t, s in enumerate(seg):
        if isinstance(s, bool) or not float(s).is_integer() or s < -1:
            raise ValueError(f"row {i}: field 'segment_ids'[{t}] must be an int >= -1, got {s!r}")
        out.append(int(s))
    return out


def _check_kept(row: Mapping[str, Any], i: int, n: int) -> list[bool] | None:
    kept = _pick(row, "kept", "mask")
    if kept is None:
        return None
    kept = _as_list(kept, "kept", i)
    if len(kept) != n:
        raise ValueError(f"row {i}: field 'kept' has length {len(kept)} but 'tokens' has {n}")
    out = []
    for t, k in enumerate(kept):
        if k not in (0, 1):  # True/False and 0/1 (also 0.0/1.0 from JSON) are all fine
            raise ValueError(f"row {i}: field 'kept'[{t}] must be a bool, got {k!r}")
        out.append(bool(k))
    return out


def _check_labels(row: Mapping[str, Any], i: int, n: int) -> list[int] | None:
    labels = row.get("labels")
    if labels is None:
        return None
    labels = _as_list(labels, "labels", i)
    if len(labels) != n:
        raise ValueError(f"row {i}: field 'labels' has length {len(labels)} but 'tokens' has {n}")
    out = []
    for t, v in enumerate(labels):
        if isinstance(v, bool):
            out.append(1 if v else -1)
        elif isinstance(v, (int, float)) and v in (-1, 0, 1):
            out.append(int(v))
        else:
            raise ValueError(f"row {i}: field 'labels'[{t}] must be +1, -1, 0 or a bool, got {v!r}")
    return out


def validate_rows(rows: Any) -> list[dict]:
    """Check ``rows`` and return normalised copies.

    Every returned row has ``title``, ``tokens``, ``rewards`` (floats), ``segment_ids``
    (ints or None), ``kept`` (bools or None), ``labels`` (+1 / -1 / 0 or None), ``prompt`` (str or
    None) and ``extra`` (the other
    keys of the input row, e.g. ``side`` / ``seq_sign``). Raises ``ValueError`` naming the row
    index and field on any problem.
    """
    if isinstance(rows, Mapping):
        rows = [rows]  # one row is a common slip; accept it
    if not isinstance(rows, Sequence) or isinstance(rows, (str, bytes)):
        raise ValueError(f"rows must be a list of dicts, got {type(rows).__name__}")
    if len(rows) == 0:
        raise ValueError("rows is empty: nothing to render")
    known = {"title", "tokens", "rewards", "token_rewards", "segment_ids", "kept", "mask", "prompt", "labels"}
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"row {i}: must be a dict, got {type(row).__name__}")
        tokens = _check_tokens(row, i)
        n = len(tokens)
        prompt = row.get("prompt")
        out.append(
            {
                "title": str(row.get("title") or f"row {i}"),
                "tokens": tokens,
                "rewards": _check_rewards(row, i, n),
                "segment_ids": _check_segment_ids(row, i, n),
                "kept": _check_kept(row, i, n),
                "labels": _check_labels(row, i, n),
                "prompt": None if prompt is None else str(prompt),
                "extra": {k: v for k, v in row.items() if k not in known},
            }
        )
    return out


# --------------------------------------------------------------------------------------------
# Colour scale and per-token layout facts shared by both renderers
# --------------------------------------------------------------------------------------------


def robust_scale(rows: Sequence[Mapping[str, Any]], center: float = 0.0) -> float:
    """The ``|r - center|`` that maps to full colour: the 95th percentile over all tokens.

    Falls back to the max, then to 1.0, so an all-equal map still renders (all neutral).
    """
    devs = sorted(abs(r - center) for row in rows for r in row["rewards"])
    if not devs:
        return 1.0
    pos = _ROBUST_Q * (len(devs) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(devs) - 1)
    q = devs[lo] + (devs[hi] - devs[lo]) * (pos - lo)
    return q if q > 0 else (devs[-1] if devs[-1] > 0 else 1.0)


def _hex_to_rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def reward_color(reward: float, center: float, scale: float) -> tuple[int, int, int]:
    """RGB (0-255) of ``reward`` on the diverging scale: linear between the RdBu stops."""
    v = max(-1.0, min(1.0, (reward - center) / scale))
    pos = (v + 1.0) / 2.0 * (len(_STOPS) - 1)
    lo = min(int(pos), len(_STOPS) - 2)
    frac = pos - lo
    a, b = _hex_to_rgb(_STOPS[lo]), _hex_to_rgb(_STOPS[lo + 1])
    return tuple(round(x + (y - x) * frac) for x, y in zip(a, b))  # type: ignore[return-value]


def _ink_for(rgb: tuple[int, int, int]) -> str:
    """Black or white text, whichever reads better on ``rgb`` (relative luminance test)."""
    lum = (0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]) / 255.0
    return "#ffffff" if lum < 0.5 else "#111111"


def _segment_starts(seg: list[int] | None, n: int) -> list[str | None]:
    """Per token: ``"seg"`` where a segment starts, ``"gap"`` where a run of ``-1`` starts after
    a segment, else None. A change of id is a start, so unordered ids still render sensibly."""
    if seg is None:
        return [None] * n
    marks: list[str | None] = []
    prev = None
    for t, s in enumerate(seg):
        if s != prev and s >= 0:
            marks.append("seg")
        elif s != prev and s == -1 and t > 0:
            marks.append("gap")
        else:
            marks.append(None)
        prev = s
    return marks


def _row_stats(row: Mapping[str, Any]) -> dict:
    """Summary numbers for a row: token count, kept count/fraction, segment count, mean reward."""
    n = len(row["tokens"])
    kept = row["kept"]
    n_kept = n if kept is None else sum(kept)
    seg = row["segment_ids"]
    return {
        "n": n,
        "n_kept": n_kept,
        "kept_frac": (n_kept / n) if n else 0.0,
        "n_segments": None if seg is None else len({s for s in seg if s >= 0}),
        "mean_reward": (sum(row["rewards"]) / n) if n else 0.0,
    }


def _side_label(extra: Mapping[str, Any]) -> str | None:
    """``"chosen (σ=+1)"``-style label from a row's ``side`` / ``seq_sign`` keys, if any."""
    side, sign = extra.get("side"), extra.get("seq_sign")
    if sign is None and side in ("chosen", "rejected"):
        sign = 1 if side == "chosen" else -1
    if side is None and sign is None:
        return None
    sign_txt = "" if sign is None else f"σ={'+' if float(sign) > 0 else '−'}1"
    if side is None:
        return sign_txt
    return f"{side} ({sign_txt})" if sign_txt else str(side)


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

_CSS = """
:root { --ink: #1b1f24; --muted: #5f6b76; --rule: #d0d7de; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--ink); margin: 18px 24px; background: #ffffff; }
h1 { font-size: 19px; margin: 0 0 8px; }
h2 { font-size: 15px; margin: 0; display: inline-block; }
.legend { display: flex; flex-wrap: wrap; align-items: center; gap: 8px 20px; padding: 8px 12px;
          border: 1px solid var(--rule); border-radius: 6px; background: #f6f8fa; margin-bottom: 14px;
          font-size: 12.5px; }
.legend .bar { display: inline-block; width: 220px; height: 12px; border-radius: 2px;
               border: 1px solid #999; vertical-align: middle; }
.legend .scale { display: inline-flex; flex-direction: column; }
.legend .ticks { display: flex; justify-content: space-between; width: 220px; color: var(--muted);
                 font-size: 11px; font-variant-numeric: tabular-nums; }
.legend .item { display: inline-flex; align-items: center; gap: 6px; }
.row { border: 1px solid var(--rule); border-radius: 6px; padding: 8px 12px 10px; margin: 0 0 12px; }
.row-head { display: flex; flex-wrap: wrap; align-items: baseline; gap: 4px 14px; margin-bottom: 4px; }
.summary { color: var(--muted); font-size: 12.5px; font-variant-numeric: tabular-nums; }
.summary b { color: var(--ink); font-weight: 600; }
.summary b.fallback { color: #9a6700; background: #fff8c5; border: 1px solid #d4a72c; border-radius: 3px;
                      padding: 0 4px; }
.prompt { color: var(--muted); font: 12px/1.4 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
          white-space: pre-wrap; border-left: 3px solid var(--rule); padding: 2px 8px; margin: 4px 0 6px;
          max-height: 6.2em; overflow: auto; }
.tokens { font: 13.5px/1 ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace;
          line-height: 2.15; }
.tok { display: inline-block; padding: 1px 2px; margin: 0 1px 0 0; border-radius: 2px;
       white-space: pre; line-height: 1.35; box-shadow: inset 0 -1px 0 rgba(0, 0, 0, .22); }
.tok:hover { outline: 2px solid #000; }
/* Segment start: a thick dark bar with the segment index above it. The bar is its own element
   (not part of the token span) so it stays fully visible when the token itself is dimmed. */
.glue { white-space: nowrap; font-weight: normal; }
.segbar, .gapbar { display: inline-block; position: relative; width: 0; height: 1.55em;
                   vertical-align: middle; margin: 0 3px 0 6px; }
.segbar { border-left: 3px solid #1b1f24; }
.gapbar { border-left: 3px dashed #8c959f; }
.segbar sup, .gapbar sup { position: absolute; top: -1.05em; left: -4px; font: 700 10px/1 system-ui, sans-serif; }
.segbar sup { color: #1b1f24; }
.gapbar sup { color: #6e7781; }
/* Outside every segment (id -1): dotted outline, italic. */
.tok.noseg { outline: 1px dotted #57606a; outline-offset: -1px; font-style: italic; }
/* Dropped by the keep-mask: faded, struck through, and a hatched grey wash over the colour. */
.tok.drop { opacity: 0.4; text-decoration: line-through; text-decoration-thickness: 1.5px;
            background-image: repeating-linear-gradient(135deg, rgba(60,60,60,.25) 0 2px, transparent 2px 5px); }
.ws { color: inherit; opacity: 0.55; font-style: normal; }
/* Oracle label under a token: a check (correct) or a cross (wrong) with a coloured rule. */
.tok.lab-pos, .tok.lab-neg { position: relative; }
.tok.lab-pos::after, .tok.lab-neg::after { position: absolute; left: 0; right: 0; top: 100%; margin-top: 1px;
  font: 700 10px/1 system-ui, sans-serif; text-align: center; padding-top: 1px; }
.tok.lab-pos::after { content: "✓"; color: #1a7f37; border-top: 2px solid #1a7f37; }
.tok.lab-neg::after { content: "✗"; color: #cf222e; border-top: 2px solid #cf222e; }
.tokens.labelled { line-height: 2.6; }
.grid { display: grid; gap: 12px; align-items: start; }
.grid .row { margin: 0; }
.note { color: var(--muted); font-size: 12px; margin-top: 10px; }
"""


def _visible_text(token: str) -> tuple[str, bool]:
    """Escaped HTML for a token with whitespace made visible; also whether it ends a line.

    Whitespace glyphs are wrapped in ``<i class="ws">`` (not ``<span>``) so that the document
    has exactly one ``<span>`` per token.
    """
    if token == "":
        return '<i class="ws">∅</i>', False
    parts = []
    for ch in token:
        glyph = _WS_GLYPHS.get(ch)
        parts.append(f'<i class="ws">{glyph}</i>' if glyph else html.escape(ch))
    return "".join(parts), token.endswith("\n")


def _tooltip(token: str, reward: float, seg: int | None, kept: bool | None, label: int | None = None) -> str:
    """Tooltip text (escaped for a ``title`` attribute; ``&#10;`` gives line breaks)."""
    lines = [
        f"token: {token!r}",
        f"reward: {reward:+.4f}",
        f"segment: {'—' if seg is None else ('none (-1)' if seg < 0 else seg)}",
        f"kept: {'—' if kept is None else ('yes' if kept else 'no (dropped)')}",
    ]
    if label:
        lines.append(f"label: {'correct' if label > 0 else 'wrong'}")
    return "&#10;".join(html.escape(line, quote=True) for line in lines)


def _marker(mark: str | None, seg: int | None) -> str:
    """The boundary bar placed before a token: ``<b class="segbar">`` with the segment index at a
    segment start, ``<b class="gapbar">`` where a run of id ``-1`` begins, else nothing."""
    if mark == "seg":
        return f'<b class="segbar" data-seg="{seg}"><sup>{seg}</sup></b>'
    if mark == "gap":
        return '<b class="gapbar" data-seg="-1"><sup>∅</sup></b>'
    return ""


def _token_span(row: Mapping[str, Any], t: int, mark: str | None, center: float, scale: float) -> str:
    """One ``<span class="tok ...">`` for token ``t`` of ``row``, preceded by its boundary bar
    (glued so a line never breaks between bar and token) and followed by ``<br>`` after a newline."""
    token, reward = row["tokens"][t], row["rewards"][t]
    seg = None if row["segment_ids"] is None else row["segment_ids"][t]
    kept = None if row["kept"] is None else row["kept"][t]
    label = None if row.get("labels") is None else row["labels"][t]
    rgb = reward_color(reward, center, scale)
    classes = ["tok"]
    if label:
        classes.append("lab-pos" if label > 0 else "lab-neg")
    if mark == "seg":
        classes.append("seg-start")
    elif mark == "gap":
        classes.append("gap-start")
    if seg is not None and seg < 0:
        classes.append("noseg")
    if kept is False:
        classes.append("drop")
    text, newline = _visible_text(token)
    attrs = (
        f'class="{" ".join(classes)}" data-i="{t}" data-r="{reward:.6g}"'
        f' data-seg="{"" if seg is None else seg}" data-kept="{"" if kept is None else int(kept)}"'
        + (f' data-label="{label}"' if label is not None else "")
        + f' style="background-color:rgb{rgb};color:{_ink_for(rgb)}"'
        + f' title="{_tooltip(token, reward, seg, kept, label)}"'
    )
    span = f"<span {attrs}>{text}</span>"
    if mark is not None:
        span = f'<b class="glue">{_marker(mark, seg)}{span}</b>'
    return span + ("<br>" if newline else "")


def _row_html(i: int, row: Mapping[str, Any], center: float, scale: float) -> str:
    """A ``<section>`` for one row: heading, summary, optional prompt, then the tokens."""
    st = _row_stats(row)
    bits = [f"<b>{st['n']}</b> tokens"]
    if row["kept"] is not None:
        bits.append(f"kept <b>{st['kept_frac']:.0%}</b> ({st['n_kept']}/{st['n']})")
    if st["n_segments"] is not None:
        bits.append(f"<b>{st['n_segments']}</b> segments")
    bits.append(f"mean r = <b>{st['mean_reward']:+.3f}</b>")
    if row.get("labels") is not None:
        n_pos, n_neg = sum(v > 0 for v in row["labels"]), sum(v < 0 for v in row["labels"])
        bits.append(f"labels <b>{n_pos}</b> ✓ / <b>{n_neg}</b> ✗")
    side = _side_label(row["extra"])
    if side:
        bits.insert(0, html.escape(side))
    if row["extra"].get("fallback"):
        bits.append('<b class="fallback" title="no segment agreed with the sequence sign: the row keeps its '
                    'full response mask (ASR empty=&quot;full&quot;)">⚠ fallback: full mask</b>')
    marks = _segment_starts(row["segment_ids"], st["n"])
    spans = "".join(_token_span(row, t, marks[t], center, scale) for t in range(st["n"]))
    prompt = ""
    if row["prompt"]:
        prompt = f'<div class="prompt" title="prompt">{html.escape(row["prompt"])}</div>'
    return (
        f'<section class="row" id="row-{i}" data-row="{i}">'
        f'<div class="row-head"><h2>{html.escape(row["title"])}</h2>'
        f'<div class="summary">{" · ".join(bits)}</div></div>'
        f'{prompt}<div class="tokens{" labelled" if row.get("labels") is not None else ""}">{spans}</div></section>'
    )


def _legend_html(center: float, scale: float, labels: bool = False) -> str:
    """Colour bar with tick labels plus samples of the marker styles.

    Only ``<div>`` / ``<code>`` here, never ``<span>``: the page has exactly one span per token.
    """
    gradient = ", ".join(_STOPS)
    mid = reward_color(center, center, scale)
    lo, hi = reward_color(center - scale, center, scale), reward_color(center + scale, center, scale)
    return (
        '<div class="legend">'
        '<div class="item"><div class="scale">'
        f'<i class="bar" style="background:linear-gradient(to right, {gradient})"></i>'
        f'<div class="ticks"><em>≤{center - scale:+.3g}</em><em>{center:+.3g}</em><em>≥{center + scale:+.3g}</em></div>'
        f"</div>reward: red &lt; {center:+.3g} &lt; blue</div>"
        f'<div class="item"><b class="glue">{_marker("seg", 3)}<code class="tok" style="background:rgb{hi};'
        f'color:{_ink_for(hi)}">tok</code></b> segment start (index)</div>'
        f'<div class="item"><b class="glue">{_marker("gap", -1)}<code class="tok noseg" style="background:rgb{mid}">'
        "tok</code></b> no segment (id −1)</div>"
        f'<div class="item"><code class="tok drop" style="background:rgb{lo};color:{_ink_for(lo)}">tok</code>'
        " dropped by the mask</div>"
        '<div class="item"><code class="tok" style="background:#f7f7f7"><i class="ws">·</i>a<i class="ws">↵</i></code>'
        " space / newline</div>"
        + ('<div class="item"><code class="tok lab-pos" style="background:#f7f7f7">3</code>'
           '<code class="tok lab-neg" style="background:#f7f7f7">7</code>&nbsp;oracle label: correct / wrong</div>'
           if labels else "")
        + "</div>"
    )


def render_html(
    rows: Any,
    path: str | pathlib.Path | None = None,
    *,
    title: str = "segrl token heat-map",
    center: float = 0.0,
    scale: float | None = None,
    columns: int = 1,
    intro: str = "",
) -> str:
    """Render ``rows`` as one self-contained HTML page and return it (also written to ``path``).

    Each token is one ``<span class="tok">`` coloured by its reward; hover shows token, reward,
    segment id, kept flag and label. ``scale`` (default: robust max ``|r - center|`` over all rows) is the
    distance from ``center`` that gets full colour; pass it to make several maps comparable.
    ``columns`` lays the rows out side by side (e.g. 2: a pair's chosen and rejected responses);
    ``intro`` is HTML put under the title.
    """
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise ValueError(f"columns must be an int >= 1, got {columns!r}")
    norm = validate_rows(rows)
    if scale is None:
        scale = robust_scale(norm, center)
    elif not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    body = "".join(_row_html(i, row, center, scale) for i, row in enumerate(norm))
    if columns > 1:
        body = f'<div class="grid" style="grid-template-columns:repeat({columns}, minmax(0, 1fr))">{body}</div>'
    has_labels = any(row["labels"] is not None for row in norm)
    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>"
        f"<h1>{html.escape(title)}</h1>{intro}{_legend_html(center, scale, has_labels)}{body}"
        '<p class="note">Hover a token for its exact reward, segment id, kept flag and label. '
        f"Colour saturates at |r − {center:g}| ≥ {scale:.3g} (95th percentile over all tokens).</p>"
        "</body></html>\n"
    )
    if path is not None:
        pathlib.Path(path).write_text(doc, encoding="utf-8")
    return doc


# --------------------------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------------------------

_PNG_LINE_CHARS = 112  # wrap width in character cells
_PNG_MAX_TOKEN_CHARS = 14  # longer tokens are shortened with "…" in the figure
_PNG_FONT_PT = 8.0
_PNG_IN_PER_CHAR = 0.6 * _PNG_FONT_PT / 72 + 0.002  # DejaVu Sans Mono advance is 0.6 em
_PNG_PAD_CHARS = 1.0  # extra cell width per token, room for the boundary bar
_PNG_LEFT_IN = 0.06  # keeps a bar at x = 0 inside the axes
_PNG_LINE_IN = 0.31  # inches per wrapped token line (cell + room for the segment index)
_PNG_CELL_IN = 0.21  # cell height
_PNG_TITLE_IN = 0.34  # inches for a row title line
_PNG_LABEL_IN = 0.13  # extra inches per line for the oracle marks under labelled tokens


def _line_in(row: Mapping[str, Any]) -> float:
    """Inches per wrapped token line of ``row`` (more when its tokens carry labels)."""
    return _PNG_LINE_IN + (_PNG_LABEL_IN if row.get("labels") is not None else 0.0)


def _png_label(token: str) -> str:
    """Token text for the figure: whitespace made visible, long tokens shortened."""
    text = "".join(_WS_GLYPHS.get(ch, ch) for ch in token) or "∅"
    if len(text) > _PNG_MAX_TOKEN_CHARS:
        text = text[: _PNG_MAX_TOKEN_CHARS - 1] + "…"
    return text


def _wrap_tokens(row: Mapping[str, Any]) -> list[list[tuple[int, float, str]]]:
    """Lay a row's tokens out as lines of ``(t, x, label)``; breaks at width and after newlines.

    A cell is ``len(label) + _PNG_PAD_CHARS`` characters wide (padding for the boundary bar).
    """
    lines: list[list[tuple[int, float, str]]] = [[]]
    x = 0.0
    for t, token in enumerate(row["tokens"]):
        label = _png_label(token)
        width = len(label) + _PNG_PAD_CHARS
        if lines[-1] and x + width > _PNG_LINE_CHARS:
            lines.append([])
            x = 0.0
        lines[-1].append((t, x, label))
        x += width
        if token.endswith("\n"):
            lines.append([])
            x = 0.0
    if len(lines) > 1 and not lines[-1]:
        lines.pop()
    return lines


def _draw_row(ax, row: Mapping[str, Any], y0: float, center: float, scale: float) -> float:
    """Draw one row's title and token cells starting at ``y0`` (inches, downwards); return the
    y below it."""
    st = _row_stats(row)
    info = [f"{st['n']} tok"]
    if row["kept"] is not None:
        info.append(f"kept {st['kept_frac']:.0%}")
    if st["n_segments"] is not None:
        info.append(f"{st['n_segments']} seg")
    if row["extra"].get("fallback"):
        info.append("fallback: full mask")
    side = _side_label(row["extra"])
    head = f"{row['title']}" + (f"  [{side}]" if side else "")
    ax.text(_PNG_LEFT_IN, y0 + 0.22, head, fontsize=9, fontweight="bold", va="baseline", ha="left")
    ax.text(_PNG_LEFT_IN + _PNG_LINE_CHARS * _PNG_IN_PER_CHAR, y0 + 0.22, " · ".join(info), fontsize=8,
            va="baseline", ha="right", color="#57606a")
    y = y0 + _PNG_TITLE_IN
    marks = _segment_starts(row["segment_ids"], st["n"])
    line_in = _line_in(row)
    for line in _wrap_tokens(row):
        for t, x, label in line:
            x_in = _PNG_LEFT_IN + x * _PNG_IN_PER_CHAR
            _draw_cell(ax, row, t, x_in, y + _PNG_LINE_IN - _PNG_CELL_IN, label, marks[t], center, scale)
        y += line_in
    return y + 0.16


def _draw_cell(ax, row, t, x, y, label, mark, center, scale) -> None:
    """One token cell at ``(x, y)`` inches: coloured box (faded and hatched when dropped, dotted
    outline outside every segment), its text, and the boundary bar when ``mark`` is set."""
    from matplotlib.patches import Rectangle

    w = (len(label) + _PNG_PAD_CHARS) * _PNG_IN_PER_CHAR - 0.02
    h = _PNG_CELL_IN
    rgb = reward_color(row["rewards"][t], center, scale)
    face = tuple(c / 255 for c in rgb)
    dropped = row["kept"] is not None and not row["kept"][t]
    seg = None if row["segment_ids"] is None else row["segment_ids"][t]
    if dropped:
        # Blend toward white: "faded" without transparency, which some PDF pipelines mangle.
        face = tuple(0.35 * c + 0.65 for c in face)
    ax.add_patch(Rectangle((x, y), w, h, facecolor=face, edgecolor="none", linewidth=0))
    if dropped:
        ax.add_patch(Rectangle((x, y), w, h, facecolor="none", edgecolor="#a8a8a8", hatch="///", linewidth=0))
    if seg is not None and seg < 0:
        ax.add_patch(Rectangle((x, y), w, h, facecolor="none", edgecolor="#57606a", linestyle=":", linewidth=0.8))
    oracle = None if row.get("labels") is None else row["labels"][t]
    if oracle:
        color = "#1a7f37" if oracle > 0 else "#cf222e"
        ax.plot([x + 0.01, x + w - 0.01], [y + h + 0.02, y + h + 0.02], color=color, linewidth=1.2,
                solid_capstyle="butt")
        ax.text(x + w / 2, y + h + 0.115, "✓" if oracle > 0 else "✗", fontsize=6, fontweight="bold", color=color,
                ha="center", va="baseline", family="DejaVu Sans")
    ink = "#6e7781" if dropped else _ink_for(rgb)
    ax.text(x + 0.5 * _PNG_PAD_CHARS * _PNG_IN_PER_CHAR, y + h * 0.7, label, fontsize=_PNG_FONT_PT,
            family="DejaVu Sans Mono", color=ink, va="baseline", ha="left")
    if mark is not None:
        # Segment starts: thick black bar with the index above; a -1 gap start: dashed grey bar.
        bar_x = x - 0.012
        color, lw, style = ("#000000", 2.2, "-") if mark == "seg" else ("#6e7781", 1.5, (0, (2, 1)))
        ax.plot([bar_x, bar_x], [y - 0.025, y + h + 0.025], color=color, linewidth=lw,
                solid_capstyle="butt", linestyle=style)
        ax.text(bar_x, y - 0.035, str(seg) if mark == "seg" else "∅", fontsize=5.5, fontweight="bold",
                color=color, ha="center", va="baseline")


def render_png(
    rows: Any,
    path: str | pathlib.Path,
    *,
    max_rows: int = 12,
    dpi: int = 150,
    center: float = 0.0,
    scale: float | None = None,
) -> pathlib.Path:
    """Render (up to ``max_rows``) rows as a PNG figure for papers; returns the path written.

    Token cells are coloured by reward (same scale as the HTML), long rows wrap over several
    lines, segment starts are thick black bars, dropped tokens are faded and hatched, tokens
    outside every segment have a dotted outline. Uses the Agg backend and fixed metadata, so the
    same input gives the same bytes.
    """
    norm = validate_rows(rows)
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    if scale is None:
        scale = robust_scale(norm, center)  # over all rows, so the figure matches the HTML
    shown = norm[:max_rows]

    # Figure + FigureCanvasAgg directly: Agg rendering without switching pyplot's global backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LinearSegmentedColormap, Normalize
    from matplotlib.figure import Figure

    # Height in inches: each row is a title line plus its wrapped token lines.
    heights = [_PNG_TITLE_IN + _line_in(r) * len(_wrap_tokens(r)) + 0.16 for r in shown]
    width_in = _PNG_LEFT_IN + _PNG_LINE_CHARS * _PNG_IN_PER_CHAR + 0.02
    margin, cbar_in = 0.2, 0.7
    fig_w, fig_h = width_in + 2 * margin, sum(heights) + cbar_in + margin
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((margin / fig_w, cbar_in / fig_h, width_in / fig_w, sum(heights) / fig_h))
    ax.set_xlim(0, width_in)
    ax.set_ylim(sum(heights), 0)  # y grows downwards, in inches
    ax.axis("off")
    y = 0.0
    for row in shown:
        y = _draw_row(ax, row, y, center, scale)

    cmap = LinearSegmentedColormap.from_list("segrl_rdbu", list(_STOPS))
    cax = fig.add_axes((margin / fig_w + 0.25, 0.42 / fig_h, 0.5 - 0.5 * margin / fig_w, 0.12 / fig_h))
    sm = ScalarMappable(norm=Normalize(center - scale, center + scale), cmap=cmap)
    cb = fig.colorbar(sm, cax=cax, orientation="horizontal", extend="both")
    cb.set_label("token reward   ·   ┃ segment start   ·   hatched = dropped   ·   dotted = no segment"
                 + ("   ·   ✓ / ✗ = label correct / wrong" if any(r["labels"] is not None for r in shown) else ""),
                 fontsize=8)
    cb.ax.tick_params(labelsize=7)
    if len(norm) > len(shown):
        fig.text(1 - margin / fig_w, 0.1 / fig_h, f"showing {len(shown)} of {len(norm)} rows",
                 fontsize=7, ha="right", color="#57606a")

    path = pathlib.Path(path)
    # Fixed metadata: no version / date strings, so repeated renders are byte-identical.
    fig.savefig(path, dpi=dpi, format="png", metadata={"Software": None})
    return path


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def rows_from_jsonl(path: str | pathlib.Path) -> list[dict]:
    """Read one row dict per non-empty line of a JSONL file (not validated: see
    :func:`validate_rows`; the render functions validate)."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: each line must be a JSON object, got {type(row).__name__}")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def rows_from_tensors(
    tokens: Sequence[Sequence[str]],
    rewards: Any,
    mask: Any,
    segment_ids: Any = None,
    kept: Any = None,
    titles: Sequence[str] | None = None,
) -> list[dict]:
    """Build rows from batched ``(B, T)`` tensors (docs/method.md#tensor-conventions), one per batch row.

    Row ``b`` keeps its first ``n_b = mask[b].sum()`` positions (right padding is dropped).
    ``tokens[b]`` may be the ``n_b`` tokens of the row or padded to ``T``.
    """
    rewards_l = rewards.detach().float().cpu().tolist()
    n_valid = mask.detach().long().sum(-1).cpu().tolist()
    seg_l = None if segment_ids is None else segment_ids.detach().long().cpu().tolist()
    kept_l = None if kept is None else kept.detach().bool().cpu().tolist()
    if len(tokens) != len(rewards_l):
        raise ValueError(f"tokens has {len(tokens)} rows but rewards has {len(rewards_l)}")
    if titles is not None and len(titles) != len(rewards_l):
        raise ValueError(f"titles has {len(titles)} entries but rewards has {len(rewards_l)} rows")
    rows = []
    for b, n in enumerate(n_valid):
        if len(tokens[b]) < n:
            raise ValueError(f"tokens[{b}] has {len(tokens[b])} entries but mask[{b}] has {n} valid tokens")
        rows.append(
            {
                "title": titles[b] if titles is not None else f"row {b}",
                "tokens": list(tokens[b][:n]),
                "rewards": rewards_l[b][:n],
                "segment_ids": None if seg_l is None else seg_l[b][:n],
                "kept": None if kept_l is None else kept_l[b][:n],
            }
        )
    return rows
