"""Drill 12: readers on several instances, writers elsewhere, Upstash's replicas late — 0 stale reads after a write returned.

Upstash answers reads round-robin from replicas that apply writes late (docs/cache-strategy.md). Here each reader
is a separate process (its own lib, its own Upstash client, its own sync token: another Vercel instance) reading
one property's public detail in a loop through lib/cache/aside; the writers change its price, each time higher:

    api       the API's own write path (lib/domain/properties.update as the owner; in the stack drill,
              PATCH /api/properties/<id> through vercel dev): it bumps the tags before it returns
    webhook   an UPDATE in SQL; the database webhook (pg_net → /api/hooks/database) bumps the tags; the write
              has "returned" once the outbox row is drained, i.e. the bump was applied

Once a write has returned, the writer raises a shared floor to its price. A reader notes the floor before each
read; a read that started with floor F and shows a price below F is stale. The product's hit (READ on the leader)
must show none, at any replica lag. `control=True` makes the readers' edge blind to replicas: a hit judged from one
MGET (lib/cache/entries.fresh_value), which any node may answer, and no sync token kept or sent (with one, a reader
that has read from the leader since a write also waits for its replica: the token alone hides part of what it does
not fix). That is the negative control: the drill sees stale reads when they happen.

    counts = run(env, property_id, write_api=..., write_sql=..., readers=3, writes=12, control=False)
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # each reader process imports lib itself, once its environment is set
    from lib.cache.entries import Look

READERS = 3
WRITES = 12  # per writer
PAUSE = 0.15  # seconds between writes: the readers' loops run through each write's aftermath


@dataclass
class Counts:
    """What the readers saw: reads, stale ones, and the cache statuses."""

    reads: int = 0
    stale: int = 0
    hits: int = 0
    examples: list[str] | None = None

    def line(self) -> str:
        return f"reads {self.reads}, hits {self.hits}, stale {self.stale}"


def mget_look(keys_: list[str], odds: list[float]) -> Look:
    """The hit judged from one MGET of the entry and its tags (any node may answer it); CLAIM decides the rest."""
    from lib.cache import aside, entries
    from lib.edge import upstash

    raw, *versions = upstash.execute(["MGET", keys_[0], *keys_[3:]])
    value = entries.fresh_value(raw, versions, odds[0], odds[1], aside.wall() * 1000)
    return entries.Look("HIT", value) if value is not None else entries.Look("LOAD")


def _reader(env: Mapping[str, str], property_id: int, control: bool, floor: Any, stop: Any, ready: Any,
            out: Any) -> None:
    """One instance: reads the property's detail until `stop`, comparing each answer with the floor."""
    os.environ.update(env)
    from lib.cache import aside
    from lib.edge import upstash

    class Blind(upstash.UpstashREST):
        def keep_sync(self, token: str | None) -> None:
            """No sync token kept, so none sent."""

    if control:  # an edge blind to replicas: a hit from one MGET, and no sync token kept or sent
        aside.first_look = mget_look
    with upstash.using(Blind() if control else upstash.UpstashREST()):
        _read(property_id, floor, stop, ready, out)


def _read(property_id: int, floor: Any, stop: Any, ready: Any, out: Any) -> None:
    """The reader's loop (see `_reader`), on the edge it installed."""
    from lib import context
    from lib.domain import properties

    counts = Counts(examples=[])
    properties.get_public(property_id)  # connections open, scripts known: the drill measures reads, not a cold start
    ready.release()
    while not stop.is_set():
        before = floor.value
        ctx = context.begin()
        price = properties.get_public(property_id)["price"]
        counts.reads += 1
        counts.hits += ctx.cache_status == "HIT"
        if price < before:
            counts.stale += 1
            if len(counts.examples or []) < 5:
                counts.examples.append(f"{price} < {before} ({ctx.cache_status})")  # type: ignore[union-attr]
    out.put(counts)


def run(env: Mapping[str, str], property_id: int, start_price: int, *, write_api: Callable[[int], None],
        write_sql: Callable[[int], None], readers: int = READERS, writes: int = WRITES, control: bool = False,
        pause: float = PAUSE) -> Counts:
    """The drill: `readers` processes on `env` (lib's variables) read `property_id` while `write_api` and
    `write_sql` (each returning once its write is applied to the cache) alternate raising its price."""
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter each: nothing of this process's lib shared
    floor = spawn.Value("q", start_price, lock=False)
    stop, ready, out = spawn.Event(), spawn.Semaphore(0), spawn.Queue()
    procs = [spawn.Process(target=_reader, args=(dict(env), property_id, control, floor, stop, ready, out),
                           daemon=True) for _ in range(readers)]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            if not ready.acquire(timeout=60):
                raise RuntimeError("a reader did not start within 60 s")
        price = start_price
        for i in range(2 * writes):
            price += 100
            (write_api if i % 2 == 0 else write_sql)(price)
            floor.value = price  # the write returned: from now on no read may show less
            time.sleep(pause)
    finally:
        stop.set()
    total = Counts(examples=[])
    for _ in procs:
        got = out.get(timeout=30)
        total.reads += got.reads
        total.stale += got.stale
        total.hits += got.hits
        total.examples += got.examples or []  # type: ignore[operator]
    for proc in procs:
        proc.join(timeout=10)
    return total


# -- drill 16, through the whole local stack (`python -m drills --only 16`) ------------------------------------

PROPERTY = 109  # Awa's, Dakar, published
OWNER = "awa.ndiaye@example.sn"
LAGS_MS = (20, 500)


def through_the_stack(ctx: Any, row: Any) -> None:
    """Writers through the API (PATCH through vercel dev) and through SQL and the database webhook; readers in
    separate processes on the stack's Upstash and Supabase; at each lag, the product then the negative control."""
    import psycopg

    from devstack.__main__ import UPSTASH_TOKEN, function_env

    stack = ctx.stack
    sql = psycopg.connect(f"postgresql://postgres@127.0.0.1:{stack.ports.postgres}/dousell", autocommit=True)
    admin = {"Authorization": f"Bearer {UPSTASH_TOKEN}"}
    original = sql.execute("select price from properties where id = %s", (PROPERTY,)).fetchone()[0]

    def write_api(price: int) -> None:
        a = ctx.call(row, "PATCH", f"/api/properties/{PROPERTY}", OWNER, json_body={"price": price})
        if a.status != 200:
            raise RuntimeError(f"PATCH answered {a.status}: {a.body[:200]}")

    def write_sql(price: int) -> None:
        sql.execute("update properties set price = %s where id = %s", (price, PROPERTY))
        deadline = time.monotonic() + 30
        while sql.execute("select 1 from private.invalidation_outbox limit 1").fetchone():
            if time.monotonic() > deadline:
                raise RuntimeError("the webhook did not apply the change within 30 s")
            time.sleep(0.002)

    ctx.call(row, "GET", f"/api/properties/{PROPERTY}")  # the hook and detail functions built before the first write
    ctx.call(row, "POST", "/api/hooks/database", content=b"{}", headers={"Content-Type": "application/json"})
    results = {}
    try:
        for lag in LAGS_MS:
            stack.admin.post(f"{stack.upstash_url}/__devstack/replicas", json={"lag_ms": lag},
                             headers=admin).raise_for_status()
            for control in (False, True):
                # Each run starts with the owner's write allowance whole (30 a minute; a run PATCHes 12 times).
                for key in stack.redis("KEYS", "dousell:ratelimit:*") or []:
                    stack.redis("DEL", key)
                start = sql.execute("select price from properties where id = %s", (PROPERTY,)).fetchone()[0]
                counts = run(function_env(stack.ports), PROPERTY, start, write_api=write_api, write_sql=write_sql,
                             control=control)
                results[(lag, control)] = counts
                if not control:
                    row.stale += counts.stale
    finally:
        stack.admin.post(f"{stack.upstash_url}/__devstack/replicas", json={"lag_ms": LAGS_MS[0]}, headers=admin)
        sql.execute("update properties set price = %s where id = %s", (original, PROPERTY))
        sql.close()
    for (lag, control), counts in results.items():
        what = "control (MGET hit, no sync token)" if control else "product"
        row.notes.append(f"lag {lag} ms, {what}: {READERS} reader processes, {2 * WRITES} writes "
                         f"(API and webhook): {counts.line()}")
    if row.stale:
        row.failed = f"{row.stale} stale reads after a write returned, e.g. {results}"
    blind = [lag for lag in LAGS_MS if results.get((lag, True)) and not results[(lag, True)].stale]
    if blind:
        row.failed = (row.failed + "; " if row.failed else "") + f"the negative control saw no stale read at {blind} ms"


DRILLS = [("Replicated reads: readers on several instances, writers elsewhere", through_the_stack)]
