"""Drill 11: writes made outside the API under read load, through the webhook, with the webhook lost, and with
Redis stopped; every read after its window must show the current row (docs/invalidation.md).

Three phases on three of Awa's published Dakar properties, each write a new unique price, half through Supabase's
REST API as the owner (the web app's way), half in SQL (Studio, another service):

    webhook       writes with everything up: commit → shown on every endpoint (detail, list, city, search)
    webhook lost  the Supabase stand-in's pg_net worker drops the webhook: only the cron can apply it
    Redis stopped `devstack redis-stop`, writes, `redis-start`: the outbox keeps them until a drain

Meanwhile `threads` clients read those endpoints in a loop. A read is stale if it started after a write's window
and shows an older price: window = 5 s after commit for the webhook phase (the target is p50 ≤ 1 s), the cron's
interval + 5 s after commit when the webhook is lost, the interval + 5 s after Redis is back when it was stopped.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg

from devstack.__main__ import ANON_KEY
from drills.report import progress

PROPERTIES = (109, 110, 111)  # Awa's, Dakar, published: on the list, the city page, the search and their detail
OWNER = "awa.ndiaye@example.sn"
VIEWS = ["/api/properties", "/api/properties?city=Dakar", "/api/search?city=Dakar&per_page=50"]
AT_ONCE_WINDOW = 5.0
MARGIN = 5.0


class Ledger:
    """Every write (property, price, commit time, window end) and every price a read saw."""

    def __init__(self, original: dict[int, int]):
        self.lock = threading.Lock()
        self.writes: dict[int, list[tuple[int, float, float]]] = {p: [(price, 0.0, 0.0)] for p, price in original.items()}
        self.seen: list[tuple[float, int, int]] = []  # (read started, property, price shown)

    def wrote(self, pid: int, price: int, committed: float, window_ends: float) -> None:
        with self.lock:
            self.writes[pid].append((price, committed, window_ends))

    def saw(self, started: float, body: Any) -> None:
        rows = body.get("properties") or body.get("results") or ([body["property"]] if "property" in body else [])
        with self.lock:
            for row in rows:
                if row.get("id") in self.writes:
                    self.seen.append((started, row["id"], row["price"]))

    def stale(self) -> list[str]:
        """Reads that began after a write's window and still showed a price from before that write."""
        out = []
        for started, pid, price in self.seen:
            history = self.writes[pid]
            order = {value: i for i, (value, _, _) in enumerate(history)}
            due = max((i for i, (_, _, ends) in enumerate(history) if ends <= started), default=0)
            if order.get(price, -1) < due:
                out.append(f"{pid}: {price} shown at +{started:.1f}s, {history[due][0]} due")
        return out


def cron_seconds() -> float:
    return float(os.environ.get("DEVSTACK_CRON_SECONDS", "") or 60)


def writes_outside_the_api(ctx, row) -> None:
    stack = ctx.stack
    sql = psycopg.connect(f"postgresql://postgres@127.0.0.1:{stack.ports.postgres}/dousell", autocommit=True)
    owner = httpx.Client(base_url=f"{stack.supabase_url}/rest/v1", timeout=10, headers={
        "apikey": ANON_KEY, "Authorization": f"Bearer {stack.token(OWNER)}", "Prefer": "return=representation"})
    original = dict(sql.execute("select id, price from properties where id = any(%s)", (list(PROPERTIES),)).fetchall())
    ledger = Ledger(original)
    t0 = time.monotonic()
    clock = lambda: time.monotonic() - t0  # noqa: E731
    stop = threading.Event()
    price = [max(original.values()) + 1000]
    latencies: list[float] = []  # of the polls that did not show the change yet: the stack's own request time

    def paths() -> list[str]:
        return [*VIEWS, *(f"/api/properties/{p}" for p in PROPERTIES)]

    def reader(n: int) -> None:
        client = httpx.Client(base_url=stack.api_url, timeout=30)
        i = n
        while not stop.is_set():
            path = paths()[i % len(paths())]
            started = clock()
            a = ctx.call(row, "GET", path, client=client)
            if a.status == 200:
                ledger.saw(started, a.json())
            i += 1

    def write(pid: int, via_rest: bool, window: Callable[[float], float]) -> tuple[int, float]:
        price[0] += 7
        new = price[0]
        if via_rest:
            r = owner.patch("/properties", params={"id": f"eq.{pid}"}, json={"price": new})
            r.raise_for_status()
        else:
            sql.execute("update properties set price = %s where id = %s", (new, pid))
        committed = clock()
        ledger.wrote(pid, new, committed, window(committed))
        return new, committed

    def shown_everywhere(pid: int, new: int, deadline: float) -> float | None:
        """When (drill clock) every endpoint showing `pid` had answered `new`: one poller per endpoint, each
        stopping at the first answer that shows it (its arrival time counts). None past `deadline`."""
        def poll(path: str) -> float | None:
            client = httpx.Client(base_url=stack.api_url, timeout=30)
            while clock() < deadline:
                a = ctx.call(row, "GET", path, client=client)
                body = a.json() if a.status == 200 else {}
                rows = body.get("properties") or body.get("results") or [body.get("property") or {}]
                if any(r.get("id") == pid and r.get("price") == new for r in rows):
                    return clock()
                latencies.append(a.seconds)
                time.sleep(0.02)
            return None

        with ThreadPoolExecutor(len(VIEWS) + 1) as pollers:
            seen = list(pollers.map(poll, [*VIEWS, f"/api/properties/{pid}"]))
        return None if None in seen else max(seen)

    cron = cron_seconds()
    pool = ThreadPoolExecutor(ctx.args.threads)
    readers = [pool.submit(reader, n) for n in range(ctx.args.threads)]
    notes: list[str] = []
    try:
        # The webhook's function must be built before the first change (vercel dev builds at the first request,
        # ~20 s here, more on a loaded machine; pg_net gives up after 5 s and a lost webhook waits for the cron).
        ready = _ready(ctx, stack, ["/api/hooks/database", "/api/cron/reconcile"])
        notes.append(f"hook and cron functions answering {ready:.0f} s after the warm-up")
        for path in paths():  # every view cached before the first write
            ctx.call(row, "GET", path)

        progress("  phase 1: webhook")
        delays, bumps = [], []
        for i in range(12):
            pid = PROPERTIES[i % len(PROPERTIES)]
            tag = f"dousell:meta:tag:property:{pid}"
            version = stack.redis("GET", tag)
            with ThreadPoolExecutor(1) as watcher:  # the tag's new version in Redis: the invalidation itself
                bumped = watcher.submit(_changed, stack, tag, version, clock, 30)
                new, committed = write(pid, via_rest=i % 2 == 0, window=lambda c: c + AT_ONCE_WINDOW)
                shown = shown_everywhere(pid, new, committed + 30)
                at = bumped.result()
            delays.append((shown - committed) if shown is not None else float("inf"))
            bumps.append((at - committed) if at is not None else float("inf"))
        notes.append(f"webhook: commit → shown on detail, list, city and search (the last of 4 parallel pollers): "
                     f"p50 {statistics.median(delays) * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms over "
                     f"{len(delays)} writes (REST as owner and SQL); commit → tags bumped in Redis: p50 "
                     f"{statistics.median(bumps) * 1000:.0f} ms, max {max(bumps) * 1000:.0f} ms; one API request "
                     f"meanwhile: p50 {statistics.median(latencies or [0]) * 1000:.0f} ms")

        progress(f"  phase 2: webhook lost (cron every {cron:.0f} s)")
        stack._supabase("POST", "webhooks", {"mode": "drop"})
        lost = []
        for i, pid in enumerate(PROPERTIES):
            lost.append((pid, *write(pid, via_rest=i % 2 == 0, window=lambda c: c + cron + MARGIN)))
        took = []
        for pid, new, committed in lost:
            shown = shown_everywhere(pid, new, committed + cron + 30)
            took.append((shown - committed) if shown is not None else float("inf"))
        stack._supabase("POST", "webhooks", {"mode": "deliver"})
        notes.append(f"webhook lost: shown {min(took):.1f}-{max(took):.1f} s after commit (cron every {cron:.0f} s)")

        progress("  phase 3: Redis stopped")
        stack.devstack("redis-stop")
        outage = []
        try:
            for i, pid in enumerate(PROPERTIES):
                outage.append((pid, *write(pid, via_rest=i % 2 == 0, window=lambda c: float("inf"))))
            held = sql.execute("select count(*) from private.invalidation_outbox").fetchone()[0]
        finally:
            stack.devstack("redis-start")
        back = clock()
        with ledger.lock:  # the window of the outage's writes runs from Redis's return
            for pid, new, _ in outage:
                ledger.writes[pid] = [(p, c, back + cron + MARGIN if p == new else e) for p, c, e in ledger.writes[pid]]
        took = []
        for pid, new, _ in outage:
            shown = shown_everywhere(pid, new, back + cron + 30)
            took.append((shown - back) if shown is not None else float("inf"))
        notes.append(f"Redis stopped: {held} changes held in the outbox, shown {max(took):.1f} s after Redis was back")
        # Keep reading past the last window, so the stale count covers it.
        last_window = max(ends for history in ledger.writes.values() for _, _, ends in history[1:])
        while clock() < last_window + 2:
            time.sleep(0.2)
    finally:
        stop.set()
        for f in readers:
            f.result()
        pool.shutdown()
        stack._supabase("POST", "webhooks", {"mode": "deliver"})
        for pid, value in original.items():
            sql.execute("update properties set price = %s where id = %s", (value, pid))

    left = sql.execute("select count(*) from private.invalidation_outbox").fetchone()[0]
    wait_end = time.monotonic() + cron + 30
    while left and time.monotonic() < wait_end:  # the restore's own changes, drained by their webhook
        time.sleep(0.5)
        left = sql.execute("select count(*) from private.invalidation_outbox").fetchone()[0]
    stale = ledger.stale()
    row.stale = len(stale)
    if stale:
        row.failed = f"{len(stale)} stale reads after their window, e.g. {stale[:3]}"
    notes.append(f"{len(ledger.seen)} prices read by {ctx.args.threads} threads; stale after window: {len(stale)}; "
                 f"outbox rows left: {left}; invalidations in any instance's memory: none by design")
    if left:
        row.failed = (row.failed + "; " if row.failed else "") + f"{left} outbox rows never drained"
    row.notes += notes
    sql.close()
    owner.close()


def _ready(ctx, stack, paths: list[str], timeout: float = 240.0) -> float:
    """Seconds until each path answers 401 (no secret) within 2 s: its function is built and warm."""
    t0 = time.monotonic()
    client = httpx.Client(base_url=stack.api_url, timeout=30)
    for path in paths:
        method = "POST" if path.startswith("/api/hooks/") else "GET"
        while time.monotonic() - t0 < timeout:
            started = time.monotonic()
            try:
                status = client.request(method, path).status_code
            except httpx.HTTPError:
                status = None
            if status == 401 and time.monotonic() - started < 2.0:
                break
    client.close()
    return time.monotonic() - t0


def _changed(stack, key: str, before: Any, clock: Callable[[], float], timeout: float) -> float | None:
    """When (drill clock) `key` first holds another value than `before`, polled every 5 ms through Upstash."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.redis("GET", key) != before:
            return clock()
        time.sleep(0.005)
    return None
