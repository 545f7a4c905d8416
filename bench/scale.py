"""Row 8 of `make bench`: what a read costs at 50, 5,000 and 50,000 published listings (the catalogue grown in SQL).

For each size, five reads through lib as the endpoints make them (list page 1, a city's page 1, a
detail, a search, and the free slots of a listing that has 1,500 of them), with the stand-in's
artificial database delay off:

- *hit p50*: the read answered from Redis (one Upstash request), in ms;
- *miss p50* and *db p50*: the read after its entry was deleted, in ms, and the part of it spent
  waiting for PostgREST (`Server-Timing: db`, lib/db.run's timer);
- *largest value*: the entry's size in Redis (`STRLEN`), bytes;
- *bytes per hit*: the HTTP bodies a hit sends to and receives from Upstash, bytes.

The catalogue only grows (devstack/catalogue.py: deterministic, listings inserted without
triggers, then VACUUM ANALYZE), so this row runs last: it leaves 50,000 listings behind. The
Supabase stand-in's stats say how many rows the largest database answer held (max-rows: 1,000).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg

from devstack import catalogue

SIZES = (50, 5_000, 50_000)
CITY = "Dakar"
SEARCH_QUERY = {"city": "dakar", "q": "piscine"}  # as a tenant types it; put in canonical form by api/search.py
BUSY, BUSY_SLOTS = 789, 1_500  # a busy agency's listing: the demo villa with 1,500 free visit slots more
HIT_TARGET = 0.20  # hit p50 at the largest size within 20 % of the smallest's
VALUE_TARGET = 64 * 1024
DB_TARGET_MS = 50.0
ROWS_TARGET = 1_000


class CountingTransport(httpx.HTTPTransport):
    """Counts the bytes of every request and response body that passes (Upstash's REST traffic)."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.bytes = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        body = response.read()
        self.bytes += len(request.content) + len(body)
        return httpx.Response(response.status_code, headers=response.headers, content=body,
                              request=request, extensions=response.extensions)


@dataclass
class Figures:
    hit_ms: list[float] = field(default_factory=list)
    miss_ms: list[float] = field(default_factory=list)
    db_ms: list[float] = field(default_factory=list)
    value_bytes: int = 0
    hit_bytes: int = 0
    rows: int = 0

    def p50(self, name: str) -> float:
        values = getattr(self, name)
        return statistics.median(values) if values else float("nan")


@dataclass
class Scale:
    by_size: dict[int, dict[str, Figures]] = field(default_factory=dict)
    grow_s: dict[int, float] = field(default_factory=dict)
    most_rows: int = 0
    at_max_rows: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def reads(conn: psycopg.Connection) -> dict[str, tuple[Any, Callable[[], Any], Callable[[Any], int]]]:
    """label → (cache entry, the read, rows shown): what each endpoint does, through lib."""
    from api.search import SearchFilters, canonical
    from lib import keys
    from lib.domain import properties, visits

    newest = conn.execute("select id from properties where status = 'published' "
                          "order by created_at desc, id desc limit 1").fetchone()[0]
    filters = canonical(SearchFilters.model_validate(SEARCH_QUERY))
    return {
        "list page 1": (keys.properties_all(), lambda: properties.list_public(),
                        lambda v: v["count"]),
        f"{CITY} page 1": (keys.properties_city(CITY), lambda: properties.list_public(CITY),
                           lambda v: v["count"]),
        "detail": (keys.property_detail(newest), lambda: properties.get_public(newest), lambda v: 1),
        "search": (keys.search(filters), lambda: properties.search(filters), lambda v: len(v["results"])),
        f"slots of {BUSY}": (keys.visit_slots(BUSY), lambda: visits.free_slots(BUSY), len),
    }


def measure_size(stack: Any, conn: psycopg.Connection, counter: CountingTransport, hits: int,
                 misses: int) -> dict[str, Figures]:
    from lib import context
    from lib.edge import upstash

    out: dict[str, Figures] = {}
    for label, (entry, read, shown) in reads(conn).items():
        figures = out[label] = Figures()
        for _ in range(misses):
            upstash.execute(["DEL", entry.key])
            ctx = context.begin()
            started = time.perf_counter()
            value = read()
            figures.miss_ms.append((time.perf_counter() - started) * 1000)
            if ctx.cache_status != "MISS":
                raise RuntimeError(f"{label}: a deleted entry answered {ctx.cache_status}, not MISS")
            figures.db_ms.append(ctx.timings_ms.get("db", 0.0))
        figures.rows = shown(value)
        figures.value_bytes = int(upstash.execute(["STRLEN", entry.key]))
        for _ in range(hits):
            ctx = context.begin()
            before = counter.bytes
            started = time.perf_counter()
            read()
            figures.hit_ms.append((time.perf_counter() - started) * 1000)
            figures.hit_bytes = max(figures.hit_bytes, counter.bytes - before)
            if ctx.cache_status != "HIT":
                raise RuntimeError(f"{label}: a filled entry answered {ctx.cache_status}, not HIT")
    return out


def run(stack: Any, *, hits: int = 100, misses: int = 15, progress: Callable[[str], None] = print) -> Scale:
    """Grow the stack's catalogue through SIZES and measure each; the database delay must be 0."""
    from lib import keys
    from lib.domain import properties
    from lib.edge import upstash

    counter = CountingTransport()
    http = httpx.Client(transport=counter, timeout=httpx.Timeout(5.0, connect=2.0))
    result = Scale()
    dsn = f"postgresql://postgres@127.0.0.1:{stack.ports.postgres}/dousell"
    with http, upstash.using(upstash.UpstashREST(http)):
        with psycopg.connect(dsn, autocommit=True) as conn:
            catalogue.add_slots(conn, BUSY, BUSY_SLOTS)
            stack.reset_db_stats()
            for size in SIZES:
                progress(f"row 8: growing the catalogue to {size:,} published listings …")
                started = time.monotonic()
                catalogue.grow(conn, size)
                result.grow_s[size] = time.monotonic() - started
                stack.redis("FLUSHDB")  # the growth bypassed the triggers: nothing cached may survive it
                progress(f"row 8: {size:,} listings: {misses} misses and {hits} hits of each read …")
                result.by_size[size] = measure_size(stack, conn, counter, hits, misses)
            # The largest page the API serves: 100 listings, the most `per_page` allows.
            properties.list_public(None, 1, properties.MAX_PER_PAGE)
            result.extra["list page 1 at per_page=100"] = int(
                upstash.execute(["STRLEN", keys.properties_all(1, properties.MAX_PER_PAGE).key]))
            stats = stack.db_stats()
            result.most_rows, result.at_max_rows = int(stats["most_rows"]), int(stats["at_max_rows"])
    return result


def render(scale: Scale) -> str:
    """The table, then the issue's targets with PASS/FAIL."""
    lines = ["## Row 8: the catalogue at scale (database delay 0; through lib, in process)", "",
             "| listings | read | rows | hit p50 ms | miss p50 ms | db p50 ms (miss) | largest value B | bytes per hit |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for size, by_read in scale.by_size.items():
        for label, f in by_read.items():
            lines.append(f"| {size:,} | {label} | {f.rows} | {f.p50('hit_ms'):.2f} | {f.p50('miss_ms'):.1f} | "
                         f"{f.p50('db_ms'):.1f} | {f.value_bytes:,} | {f.hit_bytes:,} |")
    lines.append("")
    grown = ", ".join(f"{size:,} in {s:.0f} s" for size, s in scale.grow_s.items())
    lines.append(f"Catalogue grown in SQL: {grown}. Largest page the API serves (per_page=100): "
                 + ", ".join(f"{label}: {value:,} B" for label, value in scale.extra.items()) + ".")
    lines += ["", "Targets (issue 15):", ""]
    small, large = min(scale.by_size), max(scale.by_size)
    for label in scale.by_size[large]:
        ratio = scale.by_size[large][label].p50("hit_ms") / scale.by_size[small][label].p50("hit_ms")
        lines.append(f"- {'PASS' if ratio <= 1 + HIT_TARGET else 'FAIL'}: hit p50 of {label} at {large:,} is "
                     f"{ratio:.2f}× the one at {small:,} (target ≤ {1 + HIT_TARGET:.2f}×)")
    largest = max(f.value_bytes for by_read in scale.by_size.values() for f in by_read.values())
    lines.append(f"- {'PASS' if largest <= VALUE_TARGET else 'FAIL'}: largest cached value of these reads "
                 f"{largest:,} B (target ≤ {VALUE_TARGET:,} B)")
    for label, f in scale.by_size[large].items():
        lines.append(f"- {'PASS' if f.p50('db_ms') <= DB_TARGET_MS else 'FAIL'}: miss of {label} at {large:,}: "
                     f"{f.p50('db_ms'):.1f} ms of database time at p50 (target ≤ {DB_TARGET_MS:g} ms)")
    lines.append(f"- {'PASS' if scale.most_rows <= ROWS_TARGET else 'FAIL'}: the largest database answer held "
                 f"{scale.most_rows:,} rows; {scale.at_max_rows} answers were bounded by max-rows "
                 f"(target ≤ {ROWS_TARGET:,} rows)")
    return "\n".join(lines)
