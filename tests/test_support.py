"""tests/support: `show` prints a module's table after its tests, whatever ran, past pytest's capture."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE = '''
import pytest
from tests.support import show

SEEN = []


@pytest.fixture(scope="module", autouse=True)
def table(request):
    SEEN.clear()
    yield
    if SEEN:
        show(request, ["| test | ran |", *(f"| {name} | yes |" for name in SEEN)])


def test_first():
    SEEN.append("first")


def test_second():
    SEEN.append("second")
'''


def run_pytest(tmp_path: Path, *args: str) -> str:
    (tmp_path / "test_table.py").write_text(MODULE)
    result = subprocess.run([sys.executable, "-m", "pytest", str(tmp_path / "test_table.py"), "-q", "-p",
                             "no:cacheprovider", "--rootdir", str(ROOT), *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode in (0, 5), result.stdout + result.stderr  # 5: nothing selected
    return result.stdout


def test_the_table_follows_the_tests_that_ran_in_any_order(tmp_path):
    lines = run_pytest(tmp_path).splitlines()
    assert lines[lines.index("| test | ran |"):][:3] == ["| test | ran |", "| first | yes |", "| second | yes |"]
    only_second = run_pytest(tmp_path, "-k", "second")
    assert "| second | yes |" in only_second and "| first | yes |" not in only_second


def test_no_table_when_nothing_ran(tmp_path):
    assert "| test | ran |" not in run_pytest(tmp_path, "-k", "nothing_matches")
