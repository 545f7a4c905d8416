"""`python -m bench` (make bench): no cache vs the seed's naive cache-aside vs this project, one table.

Starts the stand-ins (`python -m devstack up --no-api`) on free ports, delays the database
(default 300 ms, the seed's figure), points lib at them and runs everything in this process
through lib: the figures are server-side (no `vercel dev` proxy in front). Progress goes to
stderr, the table to stdout. Timings are printed, never asserted. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from typing import Any

from bench import costs, dakar, importtime, measure, report, scale
from bench.stack import start
from bench.strategies import STRATEGIES, NaiveCacheAside, ThisProject, installed, published


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--db-delay-ms", type=float, default=300.0, help="delay before each database request (300)")
    p.add_argument("--hits", type=int, default=200, help="row 1: timed hits per strategy (200)")
    p.add_argument("--misses", type=int, default=30, help="row 1: timed misses per strategy (30)")
    p.add_argument("--concurrent", type=int, default=100, help="row 2: requests released together (100)")
    p.add_argument("--zipf-requests", type=int, default=4000, help="row 3: requests per caching strategy (4000)")
    p.add_argument("--zipf-nocache-requests", type=int, default=400,
                   help="row 3: requests for A, the first ones of the same sequence (400: A is all queries)")
    p.add_argument("--zipf-threads", type=int, default=8, help="row 3: concurrent clients (8)")
    p.add_argument("--zipf-s", type=float, default=1.1, help="row 3: Zipf exponent (1.1)")
    p.add_argument("--zipf-writes", type=float, default=0.01, help="row 3: share of writes (0.01)")
    p.add_argument("--zipf-db-delay-ms", type=float, default=None, help="row 3: database delay (default: --db-delay-ms)")
    p.add_argument("--overhead-samples", type=int, default=500, help="row 4: hits and bare GETs each (500)")
    p.add_argument("--import-runs", type=int, default=7, help="row 5: fresh interpreters each (7, at least 5)")
    p.add_argument("--seed", type=int, default=20261126, help="random seed of the samples and the workload")
    p.add_argument("--scale-hits", type=int, default=100, help="row 8: timed hits per read and size (100)")
    p.add_argument("--scale-misses", type=int, default=15, help="row 8: timed misses per read and size (15)")
    p.add_argument("--dakar-seconds", type=float, default=5.0, help="row 9: each concurrent run (5)")
    p.add_argument("--dakar-samples", type=int, default=500, help="row 9: edge round trips and hits in a row (500)")
    p.add_argument("--rows", default="1,2,3,4,5,6,8,9",
                   help="rows to run, e.g. 1,2 (default all; 7 comes with 3; 8 grows the catalogue: it runs last "
                        "of the stand-ins' rows; 9, the Dakar host beside vercel dev, starts its own stack)")
    args = p.parse_args(argv)
    args.rows = {int(r) for r in args.rows.split(",") if r.strip()}
    args.import_runs = max(args.import_runs, 5)
    if args.zipf_db_delay_ms is None:
        args.zipf_db_delay_ms = args.db_delay_ms
    return args


def progress(message: str) -> None:
    print(f"· {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    began = time.monotonic()
    results: dict[str, Any] = {"args": args, "latency": {}, "stampede": {}, "zipf": {}, "race": {}, "overhead": {},
                               "costs": {}}
    if args.rows & {1, 2, 3, 4, 6, 8}:
        progress("starting the stand-ins (python -m devstack up --no-api) …")
        stack = start()
        try:
            run_stack_rows(stack, args, results)
        finally:
            progress("stopping the stand-ins …")
            stack.stop()
    if 9 in args.rows:
        results["dakar"] = dakar.run(args.dakar_seconds, args.dakar_samples)
    if 5 in args.rows:
        progress(f"row 5: cold imports, {args.import_runs} fresh interpreters each …")
        results["imports"] = importtime.compare(args.import_runs)
    results["seconds"] = time.monotonic() - began
    results["zipf_keys"] = getattr(args, "zipf_keys", "?")
    results["machine"] = machine()
    print(report.render(results))
    if "scale" in results:
        print()
        print(scale.render(results["scale"]))
    if "dakar" in results:
        print()
        print(dakar.render(results["dakar"]))
        print()
        print("\n".join(dakar.targets(results["dakar"])))
    return 0


def run_stack_rows(stack, args: argparse.Namespace, results: dict[str, Any]) -> None:
    from devstack.__main__ import function_env
    from lib import db
    from lib.edge import upstash

    os.environ.update(function_env(stack.ports))
    # lib's clients of their own for these rows, built from the stack's environment at first use
    with db.using(db.PostgREST()) as postgrest, upstash.using(upstash.UpstashREST()) as rest:
        try:
            stack_rows(stack, args, results)
        finally:
            postgrest.close()
            rest.close()


def stack_rows(stack, args: argparse.Namespace, results: dict[str, Any]) -> None:
    from lib.domain import properties
    from lib.edge import upstash

    results["redis"] = redis_version(upstash)
    rng = random.Random(args.seed)
    rows = published()
    sample = rng.sample(rows, min(10, len(rows)))
    # The stale-set race reads the public list's first page (lists are paged): its row must be on it.
    front = properties.list_public()["properties"][0]["id"]
    race_row = next(row for row in rows if row["id"] == front)
    results["published"] = len(rows)
    stack.set_db_delay(args.db_delay_ms)
    for strategy in STRATEGIES:
        strategy.reset()
        with installed(strategy) as shim:
            loads = shim.loads
            measure.warm_up(sample)
            if 1 in args.rows:
                strategy.reset()
                progress(f"row 1, {strategy.label}: {args.misses} misses, {args.hits if strategy.caches else 0} hits …")
                results["latency"][strategy.label] = measure.latency(strategy, sample, args.hits, args.misses,
                                                                     budget=60)
            if 2 in args.rows:
                strategy.reset()
                progress(f"row 2, {strategy.label}: {args.concurrent} concurrent reads of one cold key …")
                results["stampede"][strategy.label] = measure.stampede(stack, strategy, loads, sample[0],
                                                                       args.concurrent, budget=30)
            if 3 in args.rows:
                ops = zipf_ops(args, rows, strategy.caches)
                progress(f"row 3, {strategy.label}: Zipf workload, {len(ops)} requests on {args.zipf_threads} "
                         f"threads, database delay {args.zipf_db_delay_ms:g} ms …")
                strategy.reset()
                stack.set_db_delay(args.zipf_db_delay_ms)
                try:
                    results["zipf"][strategy.label] = measure.zipf(
                        stack, strategy, loads, published(), ops, args.zipf_threads, budget=75,
                        delay_ms=args.zipf_db_delay_ms)
                finally:
                    stack.set_db_delay(args.db_delay_ms)
                progress(f"row 3, {strategy.label}: the stale-set race, interleaved on purpose …")
                results["race"][strategy.label] = measure.forced_race(strategy, shim, race_row)
    if 4 in args.rows:
        for strategy in (NaiveCacheAside(), ThisProject()):
            progress(f"row 4, {strategy.label}: {args.overhead_samples} hits vs bare GETs …")
            strategy.reset()
            results["overhead"][strategy.label] = measure.overhead(strategy, sample[0], args.overhead_samples,
                                                                   budget=30)
    stack.set_db_delay(0)
    if 6 in args.rows:
        progress("row 6: what each kind of request costs on Upstash (reads, a PATCH, a payment, a booking, "
                 "an IPN, metrics) …")
        results["costs"] = costs.per_kind(stack, published())
    if 8 in args.rows:  # last: it leaves 50,000 listings in the stack's database
        results["scale"] = scale.run(stack, hits=args.scale_hits, misses=args.scale_misses, progress=progress)


def redis_version(upstash: Any) -> str:
    """What answers behind the Upstash stand-in (its valkey-server, or a redis-server asked for)."""
    try:
        info = upstash.execute(["INFO", "server"])
    except upstash.RedisError as exc:  # informative only
        return f"unknown ({type(exc).__name__})"
    fields = {name: value.strip() for name, _, value in (line.partition(":") for line in str(info).splitlines())}
    if fields.get("valkey_version"):
        return f"valkey-server {fields['valkey_version']}"
    return f"redis_version {fields.get('redis_version', '?')}"


def zipf_ops(args: argparse.Namespace, rows: list[dict[str, Any]], caches: bool) -> list[measure.Op]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["city"]] = counts.get(row["city"], 0) + 1
    cities = sorted(counts, key=lambda c: (-counts[c], c))[:4]  # the four cities with most listings
    args.zipf_keys = 1 + len(cities) + len(rows)
    ops = measure.zipf_plan(rows, cities, args.zipf_requests, args.zipf_s, args.zipf_writes, args.seed)
    return ops if caches else ops[: args.zipf_nocache_requests]


def machine() -> dict[str, str]:
    model = ""
    try:
        with open("/proc/cpuinfo") as info:
            model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cores": f"{os.cpu_count()} logical ({usable} usable by this process)" + (f", {model}" if model else ""),
        "python": f"{platform.python_implementation()} {platform.python_version()} on {platform.platform()}",
    }


if __name__ == "__main__":
    sys.exit(main())
