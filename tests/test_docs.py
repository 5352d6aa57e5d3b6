"""docs/method.md is the maths reference the code cites: its anchors exist, and nothing cites a document
the repository does not contain (the old "SPEC" section numbers)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "method.md"
SCANNED = ("segrl", "tests", "docs", "examples", "experiments", "benchmarks", "scripts", "README.md")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".txt", ".cfg", ".json", ".jsonl", ".html"}
REQUIRED_ANCHORS = {
    "tensor-conventions", "asr-mask", "baselines-and-delta", "sequence-sign", "token-credit", "segment-rm",
    "reward-form", "location-normalizer", "spreading", "dpo", "ppo", "rejection-sampling", "ops-contract",
}
# Built from parts so that this file does not match itself.
OLD_REFERENCE = re.compile(r"\b" + "SP" + r"EC\b")
CITATION = re.compile(r"method\.md#([A-Za-z0-9_-]+)")


def _files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "--", *SCANNED], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.split("\n")
        paths = [ROOT / p for p in listed if p]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk the folders
        paths = [p for name in SCANNED for p in ((ROOT / name).rglob("*") if (ROOT / name).is_dir() else [ROOT / name])]
    return [p for p in paths if p.is_file() and (p.suffix in TEXT_SUFFIXES or p.name == "Makefile")
            and ".venv" not in p.parts]


def _anchors() -> set[str]:
    return set(re.findall(r'<a id="([^"]+)"></a>', METHOD.read_text(encoding="utf-8")))


def test_method_doc_has_the_stable_anchors():
    missing = REQUIRED_ANCHORS - _anchors()
    assert not missing, f"docs/method.md lacks the anchors {sorted(missing)}"


def test_every_cited_anchor_exists():
    anchors = _anchors()
    broken = []
    for path in _files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in CITATION.finditer(text):
            if match.group(1) not in anchors:
                line = text.count("\n", 0, match.start()) + 1
                broken.append(f"{path.relative_to(ROOT)}:{line}: method.md#{match.group(1)}")
    assert not broken, "citations of anchors that docs/method.md does not have:\n" + "\n".join(broken)


def test_in_page_links_of_method_doc_resolve():
    text = METHOD.read_text(encoding="utf-8")
    broken = sorted(set(re.findall(r"\]\(#([^)]+)\)", text)) - _anchors())
    assert not broken, broken


@pytest.mark.parametrize("name", ["README.md"])
def test_readme_links_the_method_doc(name):
    assert "(docs/method.md)" in (ROOT / name).read_text(encoding="utf-8")


def test_no_citation_of_the_old_spec_document():
    """Cite docs/method.md#<anchor> instead: the old SPEC section numbers point outside the repository."""
    hits = []
    for path in _files():
        if path.resolve() == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").split("\n"), 1):
            if OLD_REFERENCE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not hits, "replace these with docs/method.md#<anchor>:\n" + "\n".join(hits)
