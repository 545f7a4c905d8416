"""`python -m drills` (make drills): fault drills through the real API on the local stack, one table.

Starts `python -m devstack up` (with `vercel dev`) on free ports, warms every function, runs each
drill with a fixed number of requests and a deadline, prints one row per drill to stdout (progress
to stderr) and stops the stack. Exit status 1 if a "must be 0" column is not 0. See drills/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

from drills import money, quota, replicated, runs
from drills.report import render
from drills.stack import start

# 12-15: money and visits (drills/money.py); 16: replicas; 17, last (it leaves Redis held off): the quota
DRILLS = runs.DRILLS + money.DRILLS + replicated.DRILLS + quota.DRILLS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m drills", description=__doc__.split("\n")[0])
    p.add_argument("--only", default="", help="drills to run, by number, e.g. 1,3 (default all)")
    p.add_argument("--load-seconds", type=float, default=10.0, help="drill 1: load duration (10)")
    p.add_argument("--threads", type=int, default=8, help="drill 1: concurrent clients (8)")
    args = p.parse_args(argv)
    only = {int(x) for x in args.only.split(",") if x.strip()}
    began = time.monotonic()
    runs.progress("starting the local stack with the API (python -m devstack up) …")
    stack = start()
    rows = []
    try:
        runs.progress(f"stack up in {time.monotonic() - began:.0f} s; warming every function …")
        ctx = runs.Context(stack, args)
        ctx.warm()
        for number, (title, drill) in enumerate(DRILLS, start=1):
            if only and number not in only:
                continue
            runs.progress(f"drill {number}: {title} …")
            row = runs.Row(f"{number}. {title}")
            t0 = time.monotonic()
            try:
                drill(ctx, row)
            except Exception as exc:  # a drill that breaks is a row with its reason, not a crash
                row.failed = f"drill crashed: {type(exc).__name__}: {exc}"
                traceback.print_exc(file=sys.stderr)
            finally:
                ctx.reset_switches()
            row.seconds = time.monotonic() - t0
            rows.append(row)
    finally:
        runs.progress("stopping the local stack …")
        stack.stop()
    print(render(rows, time.monotonic() - began))
    bad = any(r.bad_5xx or r.lost_or_doubled or r.leaked or r.failed for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
