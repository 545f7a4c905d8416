"""Row 5: what a read endpoint imports at cold start, against `import supabase`, with `python -X importtime`.

Each run is a fresh interpreter. A marker line on stderr separates the interpreter's own start-up
imports from ours; the figure is the sum of the cumulative µs of the top-level imports after it
(for `import supabase`, that one line). Vercel loads a function's file by path, which is not
itself an `import`: the imports it triggers are what importtime sees.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MARKER = "-- bench: imports start here --"
ENDPOINT = "api/properties/index.py"
LAZY_ON_HIT_PATH = ("httpx",)  # lib.edge.upstash imports it at the first Redis call (upstash-redis: never on a read)

_PRELUDE = f"import sys\nsys.stderr.write({MARKER!r} + '\\n')\nsys.stderr.flush()\n"

READ_ENDPOINT = _PRELUDE + f"""
import importlib.util
spec = importlib.util.spec_from_file_location("vc_handler_module", {ENDPOINT!r})
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
import {", ".join(LAZY_ON_HIT_PATH)}
heavy = sorted({{name.split(".")[0] for name in sys.modules}} & {{"supabase", "postgrest", "pydantic", "jwt"}})
sys.stderr.write("-- bench: heavy " + ",".join(heavy) + "\\n")
"""

SUPABASE = _PRELUDE + "import supabase\n"


@dataclass
class ImportTime:
    runs_us: list[int]
    heavy: str = ""  # heavy packages the read endpoint pulled in (should be none)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.runs_us) / 1000 if self.runs_us else float("nan")


def top_level_cumulative_us(stderr: str) -> int:
    """Sum of the cumulative µs of the imports at depth 0 after the marker."""
    total, seen = 0, False
    for line in stderr.splitlines():
        if line.startswith(MARKER):
            seen = True
            continue
        if not seen or not line.startswith("import time:"):
            continue
        _, cumulative, name = line.split("|", 2)
        if name.startswith(" ") and not name.startswith("  "):  # one space after the bar: depth 0
            total += int(cumulative)
    return total


def _run(script: str, timeout: float) -> tuple[int, str]:
    """One fresh interpreter: (top-level cumulative µs, heavy packages it reported)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"import run failed ({done.returncode}):\n{done.stderr[-2000:]}")
    heavy = next((line.removeprefix("-- bench: heavy ").strip() for line in done.stderr.splitlines()
                  if line.startswith("-- bench: heavy ")), "")
    return top_level_cumulative_us(done.stderr), heavy


def compare(runs: int, timeout: float = 60.0) -> tuple[ImportTime, ImportTime]:
    """(read endpoint, import supabase): one discarded run each (bytecode caches), then `runs`
    of each, alternated so both see the same machine."""
    endpoint, supabase = ImportTime([]), ImportTime([])
    _run(READ_ENDPOINT, timeout)
    _run(SUPABASE, timeout)
    for _ in range(runs):
        us, endpoint.heavy = _run(READ_ENDPOINT, timeout)
        endpoint.runs_us.append(us)
        supabase.runs_us.append(_run(SUPABASE, timeout)[0])
    return endpoint, supabase
