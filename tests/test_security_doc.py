"""SECURITY.md ties each claim to a test: every test it names must exist, so the doc cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_test_security_md_names_exists():
    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    current, named, missing = None, 0, []
    for path, name in re.findall(r"`(tests/[\w/]+\.py)?(?:::(\w+))?`", text):
        current = path or current
        if not (ROOT / current).exists():
            missing.append(current)
            continue
        if name:
            named += 1
            if not re.search(rf"def {name}\b", (ROOT / current).read_text(encoding="utf-8")):
                missing.append(f"{current}::{name}")
    assert named >= 20
    assert missing == []
