"""`python -m bench.replicas`: a hit's latency on a replicated Upstash stand-in against a single node, in one run.

Two Upstash stand-ins in this process over the same Valkey leader: one with the leader alone, one with
`--replicas` read replicas `--lag-ms` late (devstack/replicas.py). One entry is filled through lib/cache/aside;
then `--hits` hits are timed, alternating between the two stand-ins request by request (each its own httpx
client, so each keeps its connections), so whatever else the machine does weighs on both alike. Prints p50 and
p95 of each and the ratio of the p50s, and what each stand-in counted (billed commands, global-lock scripts,
which node served). Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

import httpx

from devstack.redis_server import RedisServer, free_port
from devstack.replicas import ReplicaSet
from devstack.upstash import serve_in_thread

TOKEN = "bench-upstash-token"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__.split("\n")[0])
    p.add_argument("--hits", type=int, default=2000, help="timed hits per stand-in (2000)")
    p.add_argument("--replicas", type=int, default=1, help="read replicas of the replicated stand-in (1)")
    p.add_argument("--lag-ms", type=float, default=20.0, help="their lag (20)")
    args = p.parse_args(argv)
    os.environ.update({"UPSTASH_REDIS_REST_TOKEN": TOKEN, "CACHE_NAMESPACE": "bench"})
    from lib import context
    from lib.cache import aside
    from lib.edge import upstash

    state = tempfile.mkdtemp(prefix="bench-replicas-")
    with RedisServer(free_port(), f"{state}/leader") as leader, \
            ReplicaSet(leader, args.replicas, args.lag_ms, f"{state}/replicas") as replicas:
        single, _ = serve_in_thread(port=0, token=TOKEN, redis_url=leader.url)
        replicated, _ = serve_in_thread(port=0, token=TOKEN, redis_url=leader.url, replica_urls=replicas.urls)
        clients = {name: httpx.Client(timeout=httpx.Timeout(upstash.CACHE_TIMEOUT, connect=upstash.CONNECT_TIMEOUT))
                   for name in ("single", "replicated")}
        urls = {"single": single.url, "replicated": replicated.url}
        timings: dict[str, list[float]] = {name: [] for name in urls}

        def hit(name: str) -> str | None:
            os.environ["UPSTASH_REDIS_REST_URL"] = urls[name]
            ctx = context.begin()
            with upstash.using(upstash.UpstashREST(clients[name])):  # a request on a fresh instance: no sync token yet
                started = time.perf_counter()
                aside.get_or_load("bench:replicas:entry", lambda: {"id": 1, "price": 50000}, 3600, ["bench"])
                timings[name].append((time.perf_counter() - started) * 1000)
            return ctx.cache_status

        for name in urls:  # filled, scripts known, connections open: not timed
            for _ in range(20):
                hit(name)
            timings[name].clear()
        single.engine.reset_stats()
        replicated.engine.reset_stats()
        statuses: dict[str, Any] = {name: {} for name in urls}
        for _ in range(args.hits):
            for name in urls:
                status = hit(name)
                statuses[name][status] = statuses[name].get(status, 0) + 1
        for name, server in (("single", single), ("replicated", replicated)):
            t = sorted(timings[name])
            stats = server.engine.stats.as_dict()
            print(f"{name:>10}: hit p50 {statistics.median(t):.3f} ms, p95 {t[int(0.95 * len(t))]:.3f} ms over "
                  f"{len(t)} hits {statuses[name]}; billed {stats['billed']}, global-lock scripts "
                  f"{stats['scripts_global_lock']}, served by {stats['by_node']}")
        ratio = statistics.median(timings["replicated"]) / statistics.median(timings["single"])
        print(f"replicated / single hit p50: {ratio:.3f} ({args.replicas} replica(s), {args.lag_ms:g} ms late)")
        for server in (single, replicated):
            server.shutdown()
            server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
