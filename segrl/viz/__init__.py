"""Token heat-maps of rewards, segments and ASR keep-masks (HTML and PNG).

``render_html`` needs only the standard library; ``render_png`` imports matplotlib when called.
"""

from segrl.viz.heatmap import (
    render_html,
    render_png,
    reward_color,
    robust_scale,
    rows_from_jsonl,
    rows_from_tensors,
    validate_rows,
)

__all__ = [
    "render_html",
    "render_png",
    "reward_color",
    "robust_scale",
    "rows_from_jsonl",
    "rows_from_tensors",
    "validate_rows",
]
