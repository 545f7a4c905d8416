"""Rows 1 to 4 of the table: each runs one strategy in this process, through lib, and returns figures.

Every loop is bounded twice: by a count and by a deadline (a section that runs out of time
stops early and reports how many samples it took).
"""

from __future__ import annotations

import bisect
import collections
import functools
import json
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.stack import LocalStack
from bench.strategies import Counter, Shim, Strategy, published, timed_request, write_price
from lib import context, db, keys
from lib.domain import properties
from lib.edge import upstash
from lib.ops import recorder


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no samples."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100), at least 1
    return ordered[int(rank) - 1]


def listen_overflows() -> int:
    """Connections Linux dropped because a listening socket's accept queue was full (machine-wide
    counter; 0 where unknown). A stand-in with a short backlog drops a burst's connects: the client
    then times out connecting, and lib's fail-safe answers from the database (BYPASS)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split()[1:], values.split()[1:], strict=False)).get("ListenOverflows", 0))
    return 0


def warm_up(rows: list[dict[str, Any]]) -> None:
    """Open the HTTP connections and load the scripts before anything is timed."""
    upstash.execute(["PING"])
    for row in rows[:2]:
        properties.get_public(row["id"])


# -- row 1: hits and misses -------------------------------------------------------------------


@dataclass
class Latency:
    hit_ms: list[float] = field(default_factory=list)
    miss_ms: list[float] = field(default_factory=list)
    unexpected: collections.Counter = field(default_factory=collections.Counter)


def latency(strategy: Strategy, sample: list[dict[str, Any]], hits: int, misses: int, budget: float) -> Latency:
    """Misses: invalidate (as a write would), then read. Hits: read keys already filled."""
    deadline = time.monotonic() + budget
    out = Latency()
    for i in range(misses):
        if time.monotonic() > deadline:
            break
        row = sample[i % len(sample)]
        strategy.invalidate_property(row["id"], row["owner_id"], row["city"])
        _, status, ms = timed_request(functools.partial(properties.get_public, row["id"]))
        if status == "MISS":
            out.miss_ms.append(ms)
        else:
            out.unexpected[f"miss read answered {status}"] += 1
    if not strategy.caches:
        return out
    for row in sample:  # filled (the misses above filled most already)
        properties.get_public(row["id"])
    for i in range(hits):
        if time.monotonic() > deadline:
            break
        row = sample[i % len(sample)]
        _, status, ms = timed_request(functools.partial(properties.get_public, row["id"]))
        if status == "HIT":
            out.hit_ms.append(ms)
        else:
            out.unexpected[f"hit read answered {status}"] += 1
    return out


# -- row 2: a stampede on one cold key ---------------------------------------------------------


@dataclass
class Stampede:
    requests: int
    loader_calls: int
    db_queries: int
    statuses: collections.Counter
    slowest_ms: float
    errors: collections.Counter
    overflows: int = 0


def stampede(stack: LocalStack, strategy: Strategy, loads: Counter, row: dict[str, Any], n: int,
             budget: float) -> Stampede:
    """`n` threads released together by a barrier read one key that was just invalidated."""
    strategy.invalidate_property(row["id"], row["owner_id"], row["city"])  # B and C delete the key: cold
    barrier = threading.Barrier(n)
    results: list[tuple[str, float] | None] = [None] * n

    def one(i: int) -> None:
        try:
            barrier.wait(timeout=budget)
            _, status, ms = timed_request(functools.partial(properties.get_public, row["id"]))
            results[i] = (status or "?", ms)
        except Exception as exc:  # reported in the table, never hidden
            results[i] = (f"error {type(exc).__name__}", float("nan"))

    stack.reset_db_stats()
    loads.take()
    overflows = listen_overflows()
    threads = [threading.Thread(target=one, args=(i,), daemon=True, name=f"stampede-{i}") for i in range(n)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + budget
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    done = [r for r in results if r is not None]
    statuses = collections.Counter(s for s, _ in done if not s.startswith("error"))
    errors = collections.Counter(s for s, _ in done if s.startswith("error"))
    errors["unfinished"] += n - len(done)
    errors += collections.Counter()  # drop zero counts
    return Stampede(n, loads.take(), stack.db_requests(), statuses,
                    max((ms for _, ms in done if ms == ms), default=float("nan")), errors,
                    listen_overflows() - overflows)


# -- row 3: a Zipf workload with 1 % writes ----------------------------------------------------


@dataclass(frozen=True)
class Op:
    write: bool
    kind: str  # "all", "city" or "detail"
    arg: Any = None  # the city, or the property id


def zipf_plan(rows: list[dict[str, Any]], cities: list[str], n: int, s: float, write_share: float,
              seed: int) -> list[Op]:
    """`n` operations: reads over the keys ranked by popularity (the public list first, then the
    city lists and detail pages in a seeded order), weights 1/rank^s; `write_share` of them are
    writes, at evenly random positions, to properties drawn by the same law over the details."""
    rng = random.Random(seed)
    others = [Op(False, "city", c) for c in cities] + [Op(False, "detail", r["id"]) for r in rows]
    rng.shuffle(others)
    ranked = [Op(False, "all"), *others]
    weights = [1 / (rank ** s) for rank in range(1, len(ranked) + 1)]
    ops = rng.choices(ranked, weights, k=n)
    details = [op for op in ranked if op.kind == "detail"]
    detail_weights = [1 / (rank ** s) for rank in range(1, len(details) + 1)]
    for position in rng.sample(range(n), round(n * write_share)):
        target = rng.choices(details, detail_weights)[0]
        ops[position] = Op(True, "detail", target.arg)
    return ops


@dataclass
class Zipf:
    planned: int
    reads: int = 0
    writes: int = 0
    hits: int = 0
    loader_calls: int = 0
    db_queries: int = 0  # read queries the stand-in saw (its count minus the writes)
    stale_reads: int = 0
    stale_detail: int = 0
    stale_list: int = 0
    exposed_reads: int = 0  # reads that started after a write of a property they show had returned
    unknown_prices: int = 0
    errors: collections.Counter = field(default_factory=collections.Counter)
    seconds: float = 0.0
    delay_ms: float = 0.0
    overflows: int = 0
    billed: int = 0  # commands the Upstash stand-in counted during the run
    global_lock: int = 0  # scripts it ran under Upstash's global lock
    hit_reads: int = 0  # reads answered HIT (not STALE)
    hit_commands: int = 0  # commands sent by the reads answered HIT (C: tallied per request)
    first_read_hits: int = 0  # HITs answered by their first command (not after waiting for a fill)
    request_commands: int = 0  # commands sent by all requests; billed - this = C's metrics writes
    read_ms: list[float] = field(default_factory=list)  # each read's duration
    waiting: int = 0  # reads that waited for another request's fill (polled READ at least once)
    polls: int = 0  # READ calls those reads made
    max_polls: int = 0
    # A write's return → the first HIT of each key it invalidated, lists (public, city) and details
    # apart; the reads of those keys that began meanwhile and did not hit; pairs never hit in the run.
    first_hit_ms: dict[str, list[float]] = field(default_factory=lambda: {"list": [], "detail": []})
    missed_before_hit: dict[str, int] = field(default_factory=lambda: {"list": 0, "detail": 0})
    never_hit: int = 0
    can_wait: bool = False  # the strategy makes a read wait for another's fill (C)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.reads if self.reads else float("nan")

    @property
    def avoided(self) -> float:
        return 1 - self.db_queries / self.reads if self.reads else float("nan")

    @property
    def per_request(self) -> float:
        """Billed commands per request (reads and writes), metrics writes included."""
        return self.billed / (self.reads + self.writes) if self.reads + self.writes else float("nan")

    @property
    def metrics_writes(self) -> int:
        """Commands the requests did not send themselves: C's metrics writes (0 for A and B)."""
        return max(0, self.billed - self.request_commands) if self.request_commands else 0

    @property
    def per_hit(self) -> float:
        """Billed commands per HIT, waits for another's fill included, every metrics write of the run
        counted against the hits."""
        if not self.hit_reads or not self.request_commands:
            return float("nan")
        return (self.hit_commands + self.metrics_writes) / self.hit_reads

    @property
    def per_first_read_hit(self) -> float:
        """Billed commands per HIT answered by its first read, every metrics write of the run counted
        against them: what the hit path itself costs."""
        if not self.first_read_hits or not self.request_commands:
            return float("nan")
        return (self.first_read_hits + self.metrics_writes) / self.first_read_hits


    @property
    def polls_per_wait(self) -> float:
        return self.polls / self.waiting if self.waiting else float("nan")


@dataclass
class _Read:
    started: float
    kind: str
    status: str | None
    prices: dict[int, int]
    commands: int = 0
    arg: Any = None  # the city, or the property id
    ended: float = 0.0
    polls: int = 0


def _read(op: Op) -> Any:
    if op.kind == "detail":
        return properties.get_public(op.arg)
    return properties.list_public(op.arg if op.kind == "city" else None)["properties"]  # the first page


def _recorded(path: str, method: str, call: Callable[[], Any]) -> tuple[Any, int]:
    """`call()` as a function would run it: recorded by lib/metrics, which writes its buffer at the end
    when due; the value and the commands the request itself sent."""
    state = recorder.begin_request(path)
    start = time.perf_counter()
    try:
        value = call()
    finally:
        commands = state.tally.commands if state is not None else 0
        recorder.end_request(state, method, recorder.route(path), (time.perf_counter() - start) * 1000)
    return value, commands


def zipf(stack: LocalStack, strategy: Strategy, loads: Counter, rows: list[dict[str, Any]], ops: list[Op],
         threads: int, budget: float, delay_ms: float) -> Zipf:
    """Run `ops` on `threads` threads; check every read against the writes that had returned before it began."""
    by_id = {r["id"]: r for r in rows}
    version_of = {pid: {r["price"]: 0} for pid, r in by_id.items()}  # price -> version, per property
    latest = dict.fromkeys(by_id, 0)
    commits: dict[int, list[tuple[float, int]]] = {pid: [] for pid in by_id}  # (returned at, version)
    write_locks = {pid: threading.Lock() for pid in by_id}  # one writer per property: versions in commit order
    reads: list[_Read] = []
    out = Zipf(planned=len(ops), delay_ms=delay_ms, can_wait=strategy.waits)
    lock = threading.Lock()
    position = iter(range(len(ops)))

    if strategy.caches:  # steady state: every key filled once, not counted
        distinct = list({op: None for op in ops if not op.write})
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(_read, distinct))

    def write(pid: int) -> None:
        row = by_id[pid]
        with write_locks[pid]:
            version = latest[pid] + 1
            price = row["price"] + version  # unique per property: the price names the version
            version_of[pid][price] = version
            write_price(strategy, pid, row["owner_id"], row["city"], price)
            latest[pid] = version
            commits[pid].append((time.perf_counter(), version))

    def worker() -> None:
        while time.monotonic() < deadline:
            with lock:
                i = next(position, None)
            if i is None:
                return
            op = ops[i]
            path = "/api/properties" if op.kind != "detail" else f"/api/properties/{op.arg}"
            try:
                if op.write:
                    context.begin()
                    if strategy.records_metrics:
                        _, commands = _recorded(f"/api/properties/{op.arg}", "PATCH", functools.partial(write, op.arg))
                    else:
                        write(op.arg)
                        commands = 0
                    with lock:
                        out.writes += 1
                        out.request_commands += commands
                    continue
                ctx = context.begin()
                started = time.perf_counter()
                if strategy.records_metrics:
                    value, commands = _recorded(path, "GET", functools.partial(_read, op))
                else:
                    value, commands = _read(op), 0
                ended = time.perf_counter()
            except Exception as exc:
                with lock:
                    out.errors[f"{'write' if op.write else 'read'} {type(exc).__name__}"] += 1
                continue
            shown = [value] if op.kind == "detail" else value
            with lock:
                reads.append(_Read(started, op.kind, ctx.cache_status, {r["id"]: r["price"] for r in shown}, commands,
                                   op.arg, ended, ctx.cache_polls))
                out.request_commands += commands

    stack.reset_db_stats()
    stack.reset_upstash_stats()
    loads.take()
    overflows = listen_overflows()
    begun = time.monotonic()
    deadline = begun + budget
    pool = [threading.Thread(target=worker, daemon=True, name=f"zipf-{i}") for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(max(0.0, deadline + 15 - time.monotonic()))  # a write in flight may finish
    out.seconds = time.monotonic() - begun
    out.overflows = listen_overflows() - overflows
    upstash_stats = stack.upstash_stats()
    out.billed, out.global_lock = upstash_stats["billed"], upstash_stats["scripts_global_lock"]
    out.loader_calls = loads.take()
    out.db_queries = stack.db_requests() - out.writes
    out.reads = len(reads)
    out.hits = sum(r.status in ("HIT", "STALE") for r in reads)
    out.hit_reads = sum(1 for r in reads if r.status == "HIT")
    out.hit_commands = sum(r.commands for r in reads if r.status == "HIT")
    out.first_read_hits = sum(1 for r in reads if r.status == "HIT" and r.commands == 1)
    out.read_ms = [(r.ended - r.started) * 1000 for r in reads]
    waited = [r.polls for r in reads if r.polls]
    out.waiting, out.polls, out.max_polls = len(waited), sum(waited), max(waited, default=0)
    _first_hits(out, reads, commits, by_id)
    for read in reads:
        exposed = stale = False
        for pid, price in read.prices.items():
            history = commits.get(pid)
            if not history:
                continue
            k = bisect.bisect_left(history, (read.started, -1))  # writes that returned before the read began
            if k == 0:
                continue
            exposed = True
            seen = version_of[pid].get(price)
            if seen is None:
                out.unknown_prices += 1
            elif seen < history[k - 1][1]:
                stale = True
        out.exposed_reads += exposed
        if stale:
            out.stale_reads += 1
            if read.kind == "detail":
                out.stale_detail += 1
            else:
                out.stale_list += 1
    return out


def _first_hits(out: Zipf, reads: list[_Read], commits: dict[int, list[tuple[float, int]]],
                rows: dict[int, dict[str, Any]]) -> None:
    """For each write and each key it invalidated (the property's detail, the public list, its city's
    list): how long after the write returned the first read of that key that began afterwards
    answered HIT (its end), and how many reads of it began in between and did not hit (they missed,
    waited, or were answered stale)."""
    by_key: dict[tuple[str, Any], list[_Read]] = {}
    for read in reads:
        by_key.setdefault((read.kind, read.arg), []).append(read)
    for found in by_key.values():
        found.sort(key=lambda r: r.started)
    for pid, history in commits.items():
        for returned, _ in history:
            for key in (("detail", pid), ("all", None), ("city", rows[pid]["city"])):
                found = by_key.get(key)
                if not found:  # a key the run never reads (a city outside its four)
                    continue
                after = found[bisect.bisect_left([r.started for r in found], returned):]
                hit_end = min((r.ended for r in after if r.status == "HIT"), default=None)
                kind = "detail" if key[0] == "detail" else "list"
                if hit_end is None:
                    out.never_hit += 1
                    continue
                out.first_hit_ms[kind].append((hit_end - returned) * 1000)
                out.missed_before_hit[kind] += sum(1 for r in after if r.started < hit_end and r.status != "HIT")


@dataclass
class Race:
    stale: dict[str, int] = field(default_factory=dict)  # "detail"/"list" -> follow-up reads showing the old price
    reads: dict[str, int] = field(default_factory=dict)


def forced_race(strategy: Strategy, shim: Shim, row: dict[str, Any], follow_ups: int = 3) -> Race:
    """The stale-set race, interleaved on purpose: a reader misses and reads the old row; before it
    stores it, a write (update + invalidation) runs and returns; then the reader stores what it
    read. `follow_ups` reads that begin afterwards must show the new price."""
    pid = row["id"]
    out = Race()
    readers: dict[str, Callable[[], Any]] = {
        "detail": lambda: [properties.get_public(pid)],
        "list": lambda: properties.list_public(None)["properties"],  # `row` must be on the first page
    }
    for kind, read in readers.items():
        price = next(r["price"] for r in published() if r["id"] == pid) + 1  # a new value
        strategy.invalidate_property(pid, row["owner_id"], row["city"])  # missing: the next read loads
        shim.after_load = functools.partial(write_price, strategy, pid, row["owner_id"], row["city"], price)
        read()
        shim.after_load = None
        shown = [next((r["price"] for r in read() if r["id"] == pid), None) for _ in range(follow_ups)]
        out.stale[kind] = sum(p != price for p in shown)
        out.reads[kind] = follow_ups
    return out


# -- row 4: what a hit costs beyond its Upstash round trip ---------------------------------------


@dataclass
class Overhead:
    hit_ms: list[float]
    get_ms: list[float]
    misses: int


BARE_KEY_PARTS = ("bench", "bare-get")


def overhead(strategy: Strategy, row: dict[str, Any], n: int, budget: float) -> Overhead:
    """Interleave `n` hits of `strategy.fetch` on a detail key with `n` bare `GET`s of a string
    holding the same JSON, through the same client and stand-in."""
    pid = row["id"]
    entry = keys.property_detail(pid)

    def load() -> dict[str, Any] | None:
        rows = db.run(lambda: db.service().from_("properties").select(properties.COLUMNS)
                      .eq("id", pid).limit(1).execute()).data
        return rows[0] if rows else None

    value = strategy.fetch(entry, load)  # fill
    bare = keys.name(*BARE_KEY_PARTS)
    upstash.execute(["SET", bare, json.dumps(value, ensure_ascii=False, default=str)])
    fetch: Callable[[], Any] = lambda: strategy.fetch(entry, load)  # noqa: E731
    get: Callable[[], Any] = lambda: upstash.execute(["GET", bare])  # noqa: E731
    for _ in range(20):  # settle
        timed_request(fetch)
        get()
    out = Overhead([], [], 0)
    deadline = time.monotonic() + budget
    for _ in range(n):
        if time.monotonic() > deadline:
            break
        _, status, ms = timed_request(fetch)
        if status == "HIT":
            out.hit_ms.append(ms)
        else:
            out.misses += 1
        start = time.perf_counter()
        get()
        out.get_ms.append((time.perf_counter() - start) * 1000)
    upstash.execute(["DEL", bare])
    return out
