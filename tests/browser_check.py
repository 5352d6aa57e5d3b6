"""The headless-Chromium check script (scripts/check_heatmap_browser.py), loaded for the browser tests."""

from __future__ import annotations

import importlib.util
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"

#: Marks a test that opens a page in headless Chromium (skipped, with the reason, where it is missing).
needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                    reason=f"headless browser test needs {CHROMIUM} (apt install chromium)")


def load_check_script():
    """``scripts/check_heatmap_browser.py`` as a module (it is a script, not part of the package)."""
    path = REPO / "scripts" / "check_heatmap_browser.py"
    spec = importlib.util.spec_from_file_location("check_heatmap_browser", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
