"""Every ``*.md`` document the code's docstrings and comments point to exists (a reference to a
missing document, like the former ``MODEL_CONTRACT.md``, sends a reader nowhere)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CODE_DIRS = ("megatron_vrft", "checkpoint_convert", "tools", "bench", "examples", "tests")
REFERENCE = re.compile(r"[A-Za-z0-9_./-]*[A-Za-z0-9_-]\.md\b")


def test_referenced_documents_exist():
    missing = []
    for d in CODE_DIRS:
        for py in sorted(p for p in (REPO / d).rglob("*.py") if p != Path(__file__).resolve()):
            for lineno, line in enumerate(py.read_text(encoding="utf-8").splitlines(), start=1):
                for ref in REFERENCE.findall(line):
                    candidates = [REPO / ref, REPO / "docs" / ref, py.parent / ref]
                    if "DESIGN.md" not in ref and not any(c.is_file() for c in candidates):
                        missing.append(f"{py.relative_to(REPO)}:{lineno}: {ref}")
    assert not missing, missing
