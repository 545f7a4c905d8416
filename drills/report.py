"""The drills table: one row per drill, plain text, columns as in drills/README.md."""

from __future__ import annotations

import sys
import textwrap


def progress(message: str) -> None:
    """One line on stderr while a drill runs (the table goes to stdout)."""
    print(f"· {message}", file=sys.stderr, flush=True)


HEAD = ("drill", "requests sent", "answers by status", "5xx not in contract", "lost/doubled", "leaked",
        "stale after window", "notes")


def render(rows, seconds: float) -> str:
    table = [HEAD]
    for r in rows:
        notes = "; ".join(([f"FAILED: {r.failed}"] if r.failed else []) + r.notes + [f"{r.seconds:.1f} s"])
        table.append((r.name, str(r.sent), r.by_status(), str(r.bad_5xx), str(r.lost_or_doubled), str(r.leaked),
                      str(r.stale), notes))
    widths = [max(len(row[i]) for row in table) for i in range(len(HEAD) - 1)]
    notes_width = 70
    lines = []
    for n, row in enumerate(table):
        wrapped = textwrap.wrap(row[-1], notes_width) or [""]
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        lines.append("| " + " | ".join(cells) + " | " + wrapped[0].ljust(notes_width) + " |")
        for more in wrapped[1:]:
            lines.append("| " + " | ".join(" " * w for w in widths) + " | " + more.ljust(notes_width) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|" + "-" * (notes_width + 2) + "|")
    total = sum(r.sent for r in rows)
    lines.append("")
    lines.append(f"{len(rows)} drills, {total} requests, {seconds:.0f} s wall (stack start and warm-up included). "
                 "The four middle columns must be 0.")
    return "\n".join(lines)
