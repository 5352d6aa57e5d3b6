"""The README's Python quickstart, run as written on tiny offline models (keeps the README true)."""

from __future__ import annotations

import re
from pathlib import Path


README = Path(__file__).resolve().parents[1] / "README.md"
FAST = dict(bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none", max_steps=2,
            save_strategy="no", per_device_train_batch_size=4)


def quickstart_blocks() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Quickstart (Python)"): text.index("## Quickstart (CLI)")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_quickstart_runs(tmp_path, monkeypatch):
    from datasets import Dataset

    from segrl.models import load_tiny_prefs, make_tiny_model_dir

    monkeypatch.chdir(tmp_path)
    make_tiny_model_dir("runs/sft")
    rows = load_tiny_prefs()[:8]
    env = {
        "prefs": Dataset.from_list(rows),
        "prompts": [r["prompt"] for r in rows[:2]],
        "responses": [r["chosen"] for r in rows[:2]],
    }
    blocks = quickstart_blocks()
    assert len(blocks) == 3
    for block in blocks:
        # the examples' configs, plus the flags that keep a CPU test to a few seconds
        code = re.sub(r"(Config\()", r"\1**FAST, ", block)
        code = code.replace("n_pairs=1000", "n_pairs=4")
        exec(compile(code, "README quickstart", "exec"), {"FAST": FAST, **env}, env)
    assert env["rewards"].shape == env["mask"].shape
    assert env["keep"].dtype.is_floating_point is False and env["token_r"].shape == (2, 5)
    assert (tmp_path / "runs" / "rm" / "config.json").exists()
