#!/usr/bin/env python
"""Train the packaged SFT checkpoint of the pipeline (``segrl/data/sft_arith/``).

The tiny Llama (hidden 64, 4 layers, ~263k parameters) trained for 1,000 AdamW steps on
``segrl.tasks.make_sft_data`` (systematic carry-drop noise) with ``segrl.pipeline.sft.PACKAGED_SFT``,
single-threaded (about 4 minutes on one CPU core), then saved in float16 (~0.5 MB) with its settings
key, so ``segrl demo`` can skip the SFT stage. The tokenizer is not stored: it is rebuilt
deterministically by ``segrl.models.build_tiny_tokenizer``.

    python scripts/make_sft_checkpoint.py [--out segrl/data/sft_arith]

Prints the held-out metrics of the saved (float16-rounded) weights.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(key, "1")

import torch


def main() -> int:
    from segrl.models.tiny import build_tiny_tokenizer
    from segrl.pipeline.evaluation import ArithEvaluator, heldout_split
    from segrl.pipeline.sft import (
        PACKAGED_SFT,
        build_model,
        packaged_sft_dir,
        save_sft,
        train_sft,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(packaged_sft_dir()))
    args = parser.parse_args()
    torch.set_num_threads(1)
    tok = build_tiny_tokenizer()
    model = build_model(tok, PACKAGED_SFT)
    t0 = time.time()
    last = [0.0]

    def progress(step, total, loss):
        if step % 100 == 0 or step == total:
            print(f"step {step}/{total} loss {loss:.4f} ({time.time() - t0:.0f}s)", flush=True)
        last[0] = loss

    log = train_sft(model, tok, PACKAGED_SFT, progress=progress)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    save_sft(model, tok, out, PACKAGED_SFT, dtype=torch.float16,
             extra={"source": "scripts/make_sft_checkpoint.py", "final_loss": last[0], "loss_log": log[-5:]})
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (out / name).unlink(missing_ok=True)  # rebuilt by build_tiny_tokenizer
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    _, test = heldout_split(200, 500)
    metrics = ArithEvaluator(tok, test)(saved)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"saved {out} ({size / 1e6:.2f} MB): held-out step accuracy {metrics['step_accuracy']:.3f}, "
          f"exact match {metrics['exact_match']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
