"""Row 9: the Dakar host (host/, Valkey over TCP) beside `vercel dev` (Upstash REST), in one run.

One local stack with `vercel dev` (`python -m devstack up` on free ports), and the Dakar host
started on the same stand-ins and the same Valkey (`VALKEY_URL`, no Upstash variable), two
workers. Measured, with the database delay at 0 (only cache hits are timed):

- the edge round trip of a cache hit (the one `MGET` of `properties.get_public`, from the
  request's tally), in this process through lib: over TCP to Valkey, then over REST to the
  Upstash stand-in;
- a hit end to end through the host (`GET /api/properties/123`, one kept-alive connection,
  client-side time), and the same through `vercel dev`;
- hits per second at 1, 8 and 32 concurrent clients (kept-alive connections, each client a
  thread, spread over client processes so the client's own GIL is not what is measured), with
  every answer checked: 200 and `X-Cache: HIT`, anything else counted as an error.

    python -m bench.dakar [--seconds 5] [--samples 500]
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

from bench.measure import percentile
from devstack import child
from devstack.__main__ import REPO, dakar_env, function_env
from devstack.redis_server import free_port

START_TIMEOUT = 600.0  # vercel dev builds and wakes every function before the stack says ready
PATH = "/api/properties/123"
CLIENTS = (1, 8, 32)
CLIENT_PROCESSES = 4


def progress(message: str) -> None:
    print(f"· {message}", file=sys.stderr, flush=True)


class Host:
    """`python -m host` on the stack's stand-ins and Valkey, on a free port."""

    def __init__(self, stack: child.ChildStack, workers: int = 2) -> None:
        self.port = free_port()
        env = {name: value for name, value in os.environ.items()
               if not name.startswith(("UPSTASH_", "KV_REST_API_"))}
        env.update(dakar_env(stack.ports, f"redis://127.0.0.1:{stack.ports.redis}/0"))
        self.log = open(stack.state / "bench-dakar.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "host", "--bind", f"127.0.0.1:{self.port}",
                                      "--workers", str(workers)], cwd=REPO, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if get(self.port, "/api/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the Dakar host did not answer /api/health within 30 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def get(port: int, path: str, conn: http.client.HTTPConnection | None = None) -> tuple[int, str, float]:
    """One GET (on `conn` if given): status, X-Cache, milliseconds."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        start = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        ms = (time.perf_counter() - start) * 1000
        return response.status, response.getheader("X-Cache") or "", ms
    finally:
        if own:
            conn.close()


# -- the edge round trip -------------------------------------------------------------------------


def edge_round_trips(samples: int) -> list[float]:
    """The one round trip of a cache hit, `samples` times, on whatever transport the environment picks."""
    from lib import context
    from lib.domain import properties

    properties.get_public(123)  # filled (a miss), connections opened, scripts loaded
    properties.get_public(123)
    out: list[float] = []
    for _ in range(samples):
        tally, token = context.start_tally()
        try:
            properties.get_public(123)
        finally:
            context.stop_tally(token)
        if len(tally.calls_ms) == 1:  # a hit is exactly one round trip; anything else is not a hit
            out.extend(tally.calls_ms)
    return out


def edge(stack: child.ChildStack, samples: int) -> dict[str, list[float]]:
    from lib import db
    from lib.edge import upstash, valkey

    saved = dict(os.environ)
    os.environ.update(function_env(stack.ports))
    os.environ.pop("VERCEL", None)
    try:
        found: dict[str, list[float]] = {}
        for label, url in (("TCP (Valkey)", f"redis://127.0.0.1:{stack.ports.redis}/0"), ("REST (Upstash)", None)):
            if url:
                os.environ["VALKEY_URL"] = url
            else:
                os.environ.pop("VALKEY_URL", None)
            upstash.breaker.reset()
            # clients of their own for each transport, built from this environment at first use
            rest, pool, postgrest = upstash.UpstashREST(), valkey.ValkeyPool(), db.PostgREST()
            try:
                with upstash.using(rest), valkey.using(pool), db.using(postgrest):
                    found[label] = edge_round_trips(samples)
            finally:
                rest.close()
                pool.close()
                postgrest.close()
        return found
    finally:
        os.environ.clear()
        os.environ.update(saved)


# -- end to end -----------------------------------------------------------------------------------


def sequential(port: int, samples: int) -> tuple[list[float], Counter]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    errors: Counter = Counter()
    out: list[float] = []
    try:
        for _ in range(20):
            get(port, PATH, conn)
        for _ in range(samples):
            status, cache, ms = get(port, PATH, conn)
            out.append(ms)
            if status != 200 or cache != "HIT":
                errors[f"{status} {cache}"] += 1
    finally:
        conn.close()
    return out, errors


def _clients(port: int, threads: int, seconds: float, start_at: float, pipe: Any) -> None:
    """One client process: `threads` kept-alive clients from `start_at` for `seconds`; sends back
    (latencies, errors) through `pipe`."""
    latencies: list[float] = []
    errors: Counter = Counter()
    lock = threading.Lock()

    def run() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: list[float] = []
        bad: Counter = Counter()
        get(port, PATH, conn)
        while time.time() < start_at:
            time.sleep(0.001)
        stop_at = start_at + seconds
        while time.time() < stop_at:
            try:
                status, cache, ms = get(port, PATH, conn)
            except (OSError, http.client.HTTPException) as exc:
                bad[type(exc).__name__] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            mine.append(ms)
            if status != 200 or cache != "HIT":
                bad[f"{status} {cache}"] += 1
        conn.close()
        with lock:
            latencies.extend(mine)
            errors.update(bad)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    pipe.send((latencies, dict(errors)))
    pipe.close()


def concurrent(port: int, clients: int, seconds: float) -> dict[str, Any]:
    """`clients` kept-alive clients for `seconds`: hits per second, p50/p99, errors."""
    processes = min(clients, CLIENT_PROCESSES)
    spread = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    start_at = time.time() + 1.0 + 0.05 * clients  # every connection open and warm before the clock starts
    context = multiprocessing.get_context("fork")
    running = []
    for threads in spread:
        receive, send = context.Pipe(duplex=False)
        proc = context.Process(target=_clients, args=(port, threads, seconds, start_at, send))
        proc.start()
        running.append((proc, receive))
    latencies: list[float] = []
    errors: Counter = Counter()
    for proc, receive in running:
        got, bad = receive.recv()
        proc.join()
        latencies.extend(got)
        errors.update(bad)
    return {"clients": clients, "requests": len(latencies), "per_second": len(latencies) / seconds,
            "p50": percentile(latencies, 50), "p99": percentile(latencies, 99), "errors": dict(errors)}


def run(seconds: float, samples: int) -> dict[str, Any]:
    progress("row 9: starting the stack with vercel dev (python -m devstack up, free ports; a minute or two) …")
    stack = child.start(api=True, purpose="bench-dakar", timeout=START_TIMEOUT)
    host = None
    try:
        progress("row 9: the Dakar host on the same stand-ins and Valkey …")
        host = Host(stack)
        results: dict[str, Any] = {"seconds": seconds, "samples": samples}
        progress(f"row 9: the edge round trip of a hit, {samples} on each transport …")
        results["edge"] = edge(stack, samples)
        results["through"] = {}
        for label, port in (("Dakar host", host.port), ("vercel dev", stack.ports.api)):
            progress(f"row 9, {label}: {samples} hits one after the other …")
            sequence, errors = sequential(port, samples)
            rows = []
            for clients in CLIENTS:
                progress(f"row 9, {label}: {clients} concurrent clients for {seconds:g} s …")
                rows.append(concurrent(port, clients, seconds))
            results["through"][label] = {"sequential": sequence, "sequential_errors": dict(errors),
                                         "concurrent": rows}
        return results
    finally:
        if host is not None:
            host.stop()
        stack.stop()


def render(results: dict[str, Any]) -> str:
    lines = ["| row 9: the Dakar host | Dakar host (host/, Valkey over TCP) | vercel dev (Upstash REST stand-in) |",
             "| --- | --- | --- |"]
    tcp, rest = results["edge"]["TCP (Valkey)"], results["edge"]["REST (Upstash)"]
    lines.append(f"| a hit's edge round trip, p50 (in process, {len(tcp)} / {len(rest)} samples) "
                 f"| {percentile(tcp, 50):.3f} ms (TCP) | {percentile(rest, 50):.3f} ms (REST) |")
    host, dev = results["through"]["Dakar host"], results["through"]["vercel dev"]

    def seq(r: dict[str, Any]) -> str:
        errors = sum(r["sequential_errors"].values())
        return (f"p50 {percentile(r['sequential'], 50):.2f} ms · p99 {percentile(r['sequential'], 99):.2f} ms"
                f" · {errors} errors")

    lines.append(f"| a hit end to end, one client ({results['samples']} in a row) | {seq(host)} | {seq(dev)} |")
    for h, d in zip(host["concurrent"], dev["concurrent"], strict=True):
        def conc(r: dict[str, Any]) -> str:
            errors = sum(r["errors"].values())
            detail = f" ({', '.join(f'{n} {k}' for k, n in r['errors'].items())})" if errors else ""
            return (f"{r['per_second']:.0f} hits/s · p50 {r['p50']:.2f} ms · p99 {r['p99']:.2f} ms · "
                    f"{errors} errors{detail}")

        lines.append(f"| {h['clients']} concurrent clients, {results['seconds']:g} s | {conc(h)} | {conc(d)} |")
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> list[str]:
    tcp = percentile(results["edge"]["TCP (Valkey)"], 50)
    host = results["through"]["Dakar host"]
    end = percentile(host["sequential"], 50)
    at32 = next(r for r in host["concurrent"] if r["clients"] == 32)
    errors = sum(sum(r["errors"].values()) for r in host["concurrent"]) + sum(host["sequential_errors"].values())

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    return [
        f"- {verdict(tcp <= 0.5)} edge round trip over TCP ≤ 0.5 ms p50: {tcp:.3f} ms",
        f"- {verdict(end <= 3.0)} a hit end to end through the host ≤ 3 ms p50: {end:.2f} ms",
        f"- {verdict(at32['per_second'] >= 1000 and at32['p99'] <= 50)} ≥ 1,000 hits/s at 32 clients with "
        f"p99 ≤ 50 ms: {at32['per_second']:.0f} hits/s, p99 {at32['p99']:.1f} ms",
        f"- {verdict(errors == 0)} 0 errors through the host: {errors}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dakar", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="each concurrent run (5)")
    parser.add_argument("--samples", type=int, default=500, help="edge round trips and sequential hits (500)")
    args = parser.parse_args(argv)
    results = run(args.seconds, args.samples)
    print(render(results))
    print()
    print("\n".join(targets(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
