"""The drills themselves: each fills one Row (requests, answers by status, the three must-be-0 counts, notes).

Every request goes to the real API (`vercel dev`) on 127.0.0.1; the stand-ins' drill switches
(`/__devstack/...`) and the service key are used only to break things and to count rows.
"""

from __future__ import annotations

import base64
import json
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from drills import invalidation
from drills.report import progress

OWNER, OWNER2, TENANT, STRANGER = ("awa.ndiaye@example.sn", "ibrahima.fall@example.sn", "moussa.diop@example.sn",
                                   "fatou.sarr@example.sn")
LEASE = 123
# 5xx answers the contract has: anything else (500, a vercel dev 502/504, a dropped connection) counts.
CONTRACT_5XX = {(502, "payment_provider_error"), (503, "database_unavailable"), (503, "service_unavailable"),
                (503, "metrics_unavailable")}
DEADLINE = 30.0  # seconds per request: above the functions' own bounds (PayDunya 10 s, database 5 s)
WARM_DEADLINE = 300.0  # seconds to keep asking a function still being built


@dataclass
class Answer:
    method: str
    path: str
    status: int | str  # "ERR:<exception>" when no HTTP answer came
    body: str
    headers: dict[str, str]
    started: float
    seconds: float

    @property
    def code(self) -> str | None:
        try:
            return json.loads(self.body)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def cache(self) -> str | None:
        return self.headers.get("x-cache")


@dataclass
class Row:
    name: str
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    bad_5xx: int = 0
    lost_or_doubled: int = 0
    leaked: int = 0
    stale: int = 0  # reads that showed a row older than a change whose window had passed (drill 11)
    notes: list[str] = field(default_factory=list)
    failed: str = ""
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, a: Answer) -> Answer:
        with self._lock:
            self.sent += 1
            self.statuses[a.status] += 1
            if isinstance(a.status, str) or (a.status >= 500 and (a.status, a.code) not in CONTRACT_5XX
                                             and not (a.path == "/api/health" and a.status == 503)):
                self.bad_5xx += 1
                progress(f"  5xx not in the contract: {a.method} {a.path} → {a.status} {a.body[:200]}")
        return a

    def expect(self, a: Answer, statuses: set[int], what: str) -> bool:
        """A wrong (non-5xx) answer is not a must-be-0 column: it is listed in the notes."""
        if a.status in statuses:
            return True
        self.notes.append(f"UNEXPECTED {what}: {a.method} {a.path} → {a.status} {a.body[:120]}")
        progress(f"  unexpected: {what}: {a.method} {a.path} → {a.status} {a.body[:300]}")
        return False

    def by_status(self) -> str:
        return " ".join(f"{s}×{n}" for s, n in sorted(self.statuses.items(), key=lambda kv: str(kv[0])))


def tally(values) -> str:
    """`200×7` style, like the status column."""
    return " ".join(f"{k}×{n}" for k, n in sorted(Counter(values).items(), key=lambda kv: str(kv[0])))


def p50(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} ms" if values else "n/a"


class Context:
    def __init__(self, stack, args):
        self.stack, self.args = stack, args
        self.client = httpx.Client(base_url=stack.api_url, timeout=DEADLINE)
        self.ids = {email: stack.user_id(email) for email in (OWNER, OWNER2, TENANT, STRANGER)}

    # -- requests ------------------------------------------------------------------------------
    def call(self, row: Row | None, method: str, path: str, who: str | None = None, *, json_body: Any = None,
             content: bytes | None = None, headers: dict[str, str] | None = None,
             client: httpx.Client | None = None) -> Answer:
        h = dict(headers or {})
        if who is not None:
            h.setdefault("Authorization", f"Bearer {self.stack.token(who)}")
        if json_body is not None:
            content = json.dumps(json_body).encode()
            h.setdefault("Content-Type", "application/json")
        t0 = time.monotonic()
        try:
            r = (client or self.client).request(method, path, content=content, headers=h)
            a = Answer(method, path, r.status_code, r.text, {k.lower(): v for k, v in r.headers.items()}, t0,
                       time.monotonic() - t0)
        except httpx.HTTPError as exc:
            a = Answer(method, path, f"ERR:{type(exc).__name__}", "", {}, t0, time.monotonic() - t0)
        return row.record(a) if row is not None else a

    def warm(self) -> None:
        """vercel dev builds each function at its first request (~10 s each): once each, not counted."""
        paths = [("GET", "/api/health", None), ("GET", "/api/properties", None), ("GET", "/api/properties/123", None),
                 ("GET", "/api/search?city=Dakar", None), ("GET", "/api/visits/slots?property_id=789", None),
                 ("GET", "/api/dashboard", OWNER), ("GET", "/api/profile", TENANT),
                 ("GET", "/api/notifications", TENANT), ("GET", f"/api/payments?lease_id={LEASE}", TENANT),
                 ("POST", "/api/visits", TENANT), ("POST", "/api/paydunya/ipn", None),
                 ("GET", "/api/metrics", None), ("GET", "/api/openapi", None),
                 ("POST", "/api/hooks/database", None), ("GET", "/api/cron/reconcile", None)]

        def one(item):
            # On a loaded machine a build outlasts the 30 s deadline and goes on after it: ask again until the
            # function answers, so no drill meets a build (up to WARM_DEADLINE in all).
            method, path, who = item
            t0, tries = time.monotonic(), 0
            while True:
                tries += 1
                a = self.call(None, method, path, who, content=b"{}" if method == "POST" else None,
                              headers={"Content-Type": "application/json"} if method == "POST" else None)
                if not isinstance(a.status, str) or time.monotonic() - t0 > WARM_DEADLINE:
                    break
            return f"{method} {path} {a.status} {time.monotonic() - t0:.1f}s ({tries} tries)"

        with ThreadPoolExecutor(4) as pool:
            for line in pool.map(one, paths):
                progress(f"  warm: {line}")

    def reset_switches(self) -> None:
        s = self.stack
        for step in (lambda: s.redis_delay(0), lambda: s.set_db_delay(0), lambda: s.db_mode("normal"),
                     lambda: s.paydunya("POST", "mode", {"mode": "normal"}),
                     lambda: s._supabase("POST", "webhooks", {"mode": "deliver"})):
            try:
                step()
            except Exception as exc:
                progress(f"  could not reset a switch: {exc}")
        try:
            if self.stack.upstash_status().get("redis") != "up":
                self.stack.devstack("redis-start")
        except Exception as exc:
            progress(f"  could not check Redis: {exc}")

    # -- ground truth (service role, no RLS) ---------------------------------------------------
    def payments(self, period: str | None = None) -> list[dict]:
        filters = {"lease_id": f"eq.{LEASE}"}
        if period:
            filters["period"] = f"eq.{period}"
        return self.stack.rows("rental_payments", "id,status,lease_id,period,amount,checkout_url", **filters)

    def snapshot(self) -> dict[str, str]:
        """Everything a rejected request must leave alone, as text to compare."""
        out = {}
        for table in ("rental_payments", "visits", "properties", "profiles", "notifications", "leases"):
            try:
                rows = self.stack.rows(table, order="id")
            except httpx.HTTPStatusError:
                rows = self.stack.rows(table)
                rows.sort(key=lambda r: json.dumps(r, sort_keys=True))
            out[table] = json.dumps(rows, sort_keys=True)
        return out

    def compare(self, row: Row, before: dict[str, str], after: dict[str, str]) -> None:
        changed = [t for t in before if before[t] != after[t]]
        for table in changed:
            if table in ("rental_payments", "visits"):
                row.lost_or_doubled += abs(len(json.loads(after[table])) - len(json.loads(before[table]))) or 1
        row.notes.append(f"tables changed: {', '.join(changed) if changed else 'none'}")

    def foreign(self, who: str, body: str) -> int:
        """How many other demo users' ids or emails a private answer to `who` shows."""
        return sum(1 for email, uid in self.ids.items() if email != who and (uid in body or email in body))


# ------------------------------------------------------------------------------------------------
# 1. Redis stopped under load

PUBLIC = ["/api/properties", "/api/properties?city=Dakar", "/api/properties/123", "/api/properties/789",
          "/api/search?city=Dakar", "/api/search?city=Thies", "/api/visits/slots?property_id=789"]
PRIVATE = [("/api/dashboard", OWNER), ("/api/profile", TENANT), ("/api/notifications", TENANT),
           (f"/api/payments?lease_id={LEASE}", TENANT), ("/api/profile", STRANGER)]


def _private_leak(ctx: Context, a: Answer, who: str) -> int:
    return ctx.foreign(who, a.body) if a.status == 200 else 0


def redis_stopped(ctx: Context, row: Row) -> None:
    duration, threads = ctx.args.load_seconds, ctx.args.threads
    stop_at, start_at = duration * 0.3, duration * 0.6
    answers: list[Answer] = []
    marks: dict[str, float] = {}
    t0 = time.monotonic()
    leaks = Counter()

    def worker(n: int) -> None:
        client = httpx.Client(base_url=ctx.stack.api_url, timeout=DEADLINE)
        i = n
        while time.monotonic() - t0 < duration:
            if i % 2:
                a = ctx.call(row, "GET", PUBLIC[i % len(PUBLIC)], client=client)
            else:
                path, who = PRIVATE[i % len(PRIVATE)]
                a = ctx.call(row, "GET", path, who, client=client)
                leaks[n] += _private_leak(ctx, a, who)
            answers.append(a)
            i += 1
        client.close()

    def switch() -> None:
        time.sleep(stop_at)
        ctx.stack.devstack("redis-stop")
        marks["stopped"] = time.monotonic()
        time.sleep(max(0.0, t0 + start_at - time.monotonic()))
        marks["start"] = time.monotonic()
        ctx.stack.devstack("redis-start")
        marks["started"] = time.monotonic()

    with ThreadPoolExecutor(threads + 1) as pool:
        futures = [pool.submit(worker, n) for n in range(threads)] + [pool.submit(switch)]
        for f in futures:
            f.result()
    row.leaked += sum(leaks.values())
    before = [a.seconds for a in answers if a.started < t0 + stop_at]
    during = [a.seconds for a in answers if marks["stopped"] <= a.started < marks["start"]]
    bypass = sum(1 for a in answers if marks["stopped"] <= a.started < marks["start"] and a.cache == "BYPASS")
    errors = sum(1 for a in answers if a.status != 200)
    # Recovery: the first HIT of a request sent after redis-start returned; poll on after the load if none yet.
    hits = [a for a in answers if a.started >= marks["started"] and a.cache == "HIT"]
    first_hit = min((a.started + a.seconds for a in hits), default=None)
    poll_until = time.monotonic() + 60
    while first_hit is None and time.monotonic() < poll_until:
        a = ctx.call(row, "GET", "/api/properties")
        if a.cache == "HIT":
            first_hit = a.started + a.seconds
        else:
            time.sleep(0.2)
    row.notes += [f"{threads} threads {duration:.0f} s; redis stopped at {marks['stopped'] - t0:.1f} s, "
                  f"restarted at {marks['started'] - t0:.1f} s",
                  f"non-200: {errors}",
                  f"p50 before {p50(before)}, during outage {p50(during)} ({len(during)} req, {bypass} BYPASS)",
                  "first HIT " + (f"{first_hit - marks['started']:.1f} s after restart" if first_hit
                                  else "none within 60 s after restart")]


# ------------------------------------------------------------------------------------------------
# 2. Redis slowed above the client timeout


def _timing_p50(answers: list[Answer], name: str) -> str:
    values = []
    for a in answers:
        for part in a.headers.get("server-timing", "").split(","):
            label, _, rest = part.strip().partition(";")
            if label == name and rest.startswith("dur="):
                values.append(float(rest[4:]))
    return f"{statistics.median(values):.0f}" if values else "n/a"


def redis_slow(ctx: Context, row: Row) -> None:
    ctx.stack.redis_delay(800)
    answers: list[Answer] = []

    def one(i: int) -> None:
        if i % 2:
            a = ctx.call(row, "GET", PUBLIC[i % len(PUBLIC)])
        else:
            path, who = PRIVATE[i % len(PRIVATE)]
            a = ctx.call(row, "GET", path, who)
            with row._lock:
                row.leaked += _private_leak(ctx, a, who)
        row.expect(a, {200}, "read with Redis slow")
        answers.append(a)

    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, range(48)))
    finally:
        ctx.stack.redis_delay(0)
    paid = sum(1 for a in answers if a.seconds >= 0.45)
    row.notes += ["Upstash delay 800 ms > client timeout 500 ms; 4 threads, 48 reads over 9 functions",
                  "X-Cache " + tally(a.cache for a in answers),
                  f"p50 {p50([a.seconds for a in answers])}, max {max(a.seconds for a in answers) * 1000:.0f} ms",
                  f"{paid} requests paid the 500 ms timeout: the breaker is per process (vercel dev runs one "
                  "or more per function), first failure then a probe after 1 s, 2 s, 4 s …"]


# ------------------------------------------------------------------------------------------------
# 3. PayDunya answering 5xx, then hanging


def paydunya_down(ctx: Context, row: Row) -> None:
    period = "2026-12"
    body = {"lease_id": LEASE, "period": period}

    def pending() -> int:
        return sum(1 for p in ctx.payments(period) if p["status"] == "pending")

    for mode in ({"mode": "error", "error_status": 500}, {"mode": "error", "error_status": 503},
                 {"mode": "hang", "hang_seconds": 15}):
        ctx.stack.paydunya("POST", "mode", mode)
        a = ctx.call(row, "POST", "/api/payments", TENANT, json_body=body)
        ok = row.expect(a, {502}, f"PayDunya {mode}") and a.code == "payment_provider_error"
        left = pending()
        row.lost_or_doubled += left  # a pending row left behind by a failed call is a payment that cannot start
        label = f"{mode['mode']} {mode.get('error_status', '')}".strip()
        row.notes.append(f"{label}: {a.status} {a.code} in {a.seconds:.1f} s, pending rows {left}"
                         + ("" if ok else " (UNEXPECTED)"))
    ctx.stack.paydunya("POST", "mode", {"mode": "normal"})
    first = ctx.call(row, "POST", "/api/payments", TENANT, json_body=body)
    again = ctx.call(row, "POST", "/api/payments", TENANT, json_body=body)
    row.expect(first, {201}, "retry after PayDunya is back")
    row.expect(again, {200}, "second retry returns the same pending payment")
    rows = [p for p in ctx.payments(period) if p["status"] == "pending"]
    if len(rows) != 1:
        row.lost_or_doubled += abs(len(rows) - 1)
    same = first.status == 201 and again.status == 200 and first.json()["payment"]["id"] == again.json()["payment"]["id"]
    row.notes.append(f"normal: retry {first.status}, again {again.status} (same id: {same}), pending rows {len(rows)}; "
                     f"failed rows {sum(1 for p in ctx.payments(period) if p['status'] == 'failed')}")


# ------------------------------------------------------------------------------------------------
# 4. The IPN twice and late


def ipn_twice(ctx: Context, row: Row) -> None:
    period = "2027-03"  # a month no other drill touches
    notes_before = ctx.stack.rows("notifications", "id,user_id,kind,data")
    a = ctx.call(row, "POST", "/api/payments", TENANT, json_body={"lease_id": LEASE, "period": period})
    if not row.expect(a, {200, 201}, "payment for the IPN drill"):
        return
    payment = a.json()["payment"]
    token = payment["checkout_url"].rstrip("/").rsplit("/", 1)[-1]
    done = ctx.stack.admin.post(f"{ctx.stack.paydunya_url}/checkout/{token}/complete",
                                headers={"Accept": "application/json"})
    done.raise_for_status()
    ctx.stack.paydunya("POST", f"ipn/{token}/resend", {})
    ctx.stack.paydunya("POST", f"ipn/{token}/resend", {"delay_ms": 3000})
    deadline = time.monotonic() + 20
    deliveries: list[dict] = []
    while time.monotonic() < deadline:
        deliveries = ctx.stack.paydunya("GET", f"invoices/{token}").get("ipn_deliveries", [])
        if len(deliveries) >= 3:
            break
        time.sleep(0.25)
    for d in deliveries:  # the IPNs went to the API: count them as requests of this drill
        status = d.get("status_code") or f"ERR:{d.get('error')}"
        row.record(Answer("POST", "/api/paydunya/ipn", status, d.get("body") or "", {}, 0.0,
                          (d.get("elapsed_ms") or 0) / 1000))
    rows = ctx.payments(period)
    completed = [p for p in rows if p["status"] == "completed"]
    if len(completed) != 1:
        row.lost_or_doubled += abs(len(completed) - 1)
    amounts = sorted({p["amount"] for p in completed})
    new_notes = [n for n in ctx.stack.rows("notifications", "id,user_id,kind,data")
                 if n not in notes_before and (n.get("data") or {}).get("payment_id") == payment["id"]]
    per_party = Counter(n["user_id"] for n in new_notes)
    tenant_n, owner_n = per_party.get(ctx.ids[TENANT], 0), per_party.get(ctx.ids[OWNER], 0)
    if (tenant_n, owner_n) != (1, 1) or len(new_notes) != 2:
        row.lost_or_doubled += abs(tenant_n - 1) + abs(owner_n - 1) + (len(new_notes) - tenant_n - owner_n)
    # The tenant's list shows it completed at once (the IPN invalidated the cache).
    listed = ctx.call(row, "GET", f"/api/payments?lease_id={LEASE}", TENANT)
    shown = [p["status"] for p in listed.json().get("payments", []) if p["id"] == payment["id"]] if listed.status == 200 else []
    row.notes += [f"IPN deliveries {len(deliveries)} (initial + immediate resend + 3 s late resend): "
                  + " ".join(str(d.get("status_code")) for d in deliveries),
                  f"completed rows {len(completed)} of amount {amounts}",
                  f"notifications tenant {tenant_n}, owner {owner_n}",
                  f"tenant's list shows {shown}"]


# ------------------------------------------------------------------------------------------------
# 5. The database slowed and unreachable

WARM = ["/api/properties", "/api/properties?city=Dakar", "/api/properties/123", "/api/search?city=Dakar",
        "/api/visits/slots?property_id=789"]
WARM_PRIVATE = [("/api/dashboard", OWNER), ("/api/profile", TENANT)]


def database_faults(ctx: Context, row: Row) -> None:
    for path in WARM:
        ctx.call(row, "GET", path)
    for path, who in WARM_PRIVATE:
        ctx.call(row, "GET", path, who)
    nonce = int(time.time()) % 100_000 * 100
    cold = iter(range(nonce, nonce + 100))

    def cold_search() -> str:  # a filter no one asked for yet: a miss
        return f"/api/search?city=Mbour&min_price={next(cold)}"

    # Slowed: warm reads are hits, cold ones pay the delay and still answer.
    ctx.stack.set_db_delay(1500)
    warm_slow = [ctx.call(row, "GET", p) for p in WARM] + [ctx.call(row, "GET", p, w) for p, w in WARM_PRIVATE]
    cold_slow = [ctx.call(row, "GET", cold_search()) for _ in range(3)] + [ctx.call(row, "GET", "/api/properties/102")]
    for a in warm_slow:
        row.expect(a, {200}, "warm read, database slow")
    for a in cold_slow:
        row.expect(a, {200}, "cold read, database slow")
    ctx.stack.set_db_delay(0)
    # Down: warm reads still served (HIT/STALE), cold ones 503 database_unavailable, health 503.
    before = ctx.payments()  # the stand-in's REST is down too in that mode: count first
    ctx.stack.db_mode("down")
    warm_down = [ctx.call(row, "GET", p) for p in WARM] + [ctx.call(row, "GET", p, w) for p, w in WARM_PRIVATE]
    cold_down = [ctx.call(row, "GET", cold_search()) for _ in range(3)] + [ctx.call(row, "GET", "/api/properties/103")]
    health = ctx.call(row, "GET", "/api/health")
    write = ctx.call(row, "POST", "/api/payments", TENANT, json_body={"lease_id": LEASE, "period": "2027-02"})
    for a in warm_down:
        row.expect(a, {200}, "warm read, database down")
    for a in cold_down:
        row.expect(a, {503}, "cold read, database down")
    row.expect(health, {503}, "health, database down")
    row.expect(write, {503}, "payment, database down")
    ctx.stack.db_mode("normal")
    t_back = time.monotonic()
    recovered = None
    while time.monotonic() - t_back < 30:
        a = ctx.call(row, "GET", "/api/health")
        if a.status == 200:
            recovered = time.monotonic() - t_back
            break
        time.sleep(0.2)
    if len(ctx.payments()) != len(before):
        row.lost_or_doubled += abs(len(ctx.payments()) - len(before))
    wrong_code = sum(1 for a in cold_down + [write] if a.status == 503 and a.code != "database_unavailable")
    row.notes += [
        f"slow 1500 ms: warm p50 {p50([a.seconds for a in warm_slow])} "
        f"(X-Cache {tally(a.cache for a in warm_slow)}), cold p50 {p50([a.seconds for a in cold_slow])} "
        f"(X-Cache {tally(a.cache for a in cold_slow)})",
        f"down: warm {tally(a.status for a in warm_down)} X-Cache {tally(a.cache for a in warm_down)}, "
        f"cold {tally(a.status for a in cold_down)} {tally(a.code for a in cold_down)}",
        f"health down {health.status}, payment while down {write.status} {write.code}",
        f"503 without database_unavailable: {wrong_code}",
        f"health 200 again {recovered:.1f} s after normal" if recovered is not None else "health NOT back in 30 s",
    ]


# ------------------------------------------------------------------------------------------------
# 6. Malformed, oversized and wrongly typed bodies

WRITES = [("POST", "/api/payments", TENANT, {"lease_id": "123"}),
          ("POST", "/api/visits", TENANT, {"property_id": "789", "starts_at": 1764151200}),
          ("PATCH", "/api/properties/123", OWNER, {"price": "cheap", "bedrooms": 2.5}),
          ("PATCH", "/api/profile", TENANT, {"full_name": ["a"], "phone": 221}),
          ("POST", "/api/paydunya/ipn", None, None)]


def bodies(ctx: Context, row: Row) -> None:
    before = ctx.snapshot()
    big = json.dumps({"title": "x" * (70 * 1024), "lease_id": 123, "property_id": 789,
                      "full_name": "y" * (70 * 1024)}).encode()
    for method, path, who, wrong in WRITES:
        ipn = path.endswith("/ipn")
        ctype = {"Content-Type": "application/x-www-form-urlencoded" if ipn else "application/json"}
        cases = [("malformed", b'{"lease_id": 12', ctype), ("not json", b"hello=world&" if not ipn else b"\xff\xfe", ctype),
                 ("array", b"[]", ctype), ("null", b"null", ctype), ("empty", b"", ctype),
                 ("oversized 70 KiB", big if not ipn else b"data%5Bhash%5D=" + b"a" * (70 * 1024), ctype),
                 ("wrong content type", b"lease_id=123", {"Content-Type": "text/plain"})]
        if wrong is not None:
            cases.append(("wrongly typed", json.dumps(wrong).encode(), ctype))
        else:
            cases.append(("JSON to the form endpoint", b'{"data": {"hash": "x"}}', {"Content-Type": "application/json"}))
        for label, content, headers in cases:
            a = ctx.call(row, method, path, who, content=content, headers=headers)
            allowed = {400, 413, 415, 422} | ({403} if ipn else set())
            if label.startswith("oversized"):
                allowed = {413}
            row.expect(a, allowed, f"{label} body")
    ctx.compare(row, before, ctx.snapshot())
    row.notes.append("4 JSON endpoints + the IPN × malformed, not JSON, [], null, empty, 70 KiB, wrong "
                     "content type, wrongly typed")


# ------------------------------------------------------------------------------------------------
# 7. Forged tokens

SIGNED_IN = [("GET", "/api/dashboard", None), ("GET", "/api/profile", None), ("PATCH", "/api/profile", {"full_name": "Pirate"}),
             ("GET", "/api/notifications", None), ("POST", "/api/visits", {"property_id": 789, "starts_at": "2026-12-01T10:00:00Z"}),
             ("POST", "/api/payments", {"lease_id": LEASE}), ("GET", f"/api/payments?lease_id={LEASE}", None),
             ("PATCH", "/api/properties/123", {"title": "Pirate"})]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(header: dict, claims: dict, signature: bytes) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}.{_b64(signature)}"


def forged_tokens(ctx: Context) -> dict[str, str]:
    import warnings

    import jwt

    warnings.filterwarnings("ignore", module="jwt")
    from cryptography.hazmat.primitives.asymmetric import ec

    real = ctx.stack.token(OWNER)
    h64, c64, s64 = real.split(".")
    header = json.loads(base64.urlsafe_b64decode(h64 + "=" * (-len(h64) % 4)))
    claims = json.loads(base64.urlsafe_b64decode(c64 + "=" * (-len(c64) % 4)))
    signature = base64.urlsafe_b64decode(s64 + "=" * (-len(s64) % 4))
    other_key = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    return {
        # The stand-in's signing key never leaves its process: an expired or wrong-audience token is
        # the real token with that claim changed (so its signature no longer matches) and the same
        # claims signed by another key under the real kid.
        "expired (edited)": _jwt(header, {**claims, "exp": now - 3600, "iat": now - 7200}, signature),
        "expired (other key)": jwt.encode({**claims, "exp": now - 3600, "iat": now - 7200}, other_key,
                                          algorithm="ES256", headers={"kid": header.get("kid")}),
        "wrong audience (edited)": _jwt(header, {**claims, "aud": "service_role"}, signature),
        "wrong audience (other key)": jwt.encode({**claims, "aud": "other"}, other_key, algorithm="ES256",
                                                 headers={"kid": header.get("kid")}),
        "alg none": _jwt({"alg": "none", "typ": "JWT"}, {**claims, "exp": now + 3600}, b""),
        "alg none, no dot": f"{_b64(json.dumps({'alg': 'none'}).encode())}.{c64}.",
        "HS256 with the anon key": jwt.encode({**claims, "role": "service_role"}, "dev-anon-key", algorithm="HS256"),
        "HS256 with the service key": jwt.encode(claims, "dev-service-role-key", algorithm="HS256"),
        "signed by another key": jwt.encode({**claims, "exp": now + 3600}, other_key, algorithm="ES256",
                                            headers={"kid": header.get("kid")}),
        "unknown kid": jwt.encode({**claims, "exp": now + 3600}, other_key, algorithm="ES256",
                                  headers={"kid": "not-a-kid"}),
        "role escalated": _jwt(header, {**claims, "role": "service_role"}, signature),
        "garbage": "not.a.jwt",
        "garbage base64": "eyJhbGciOiJFUzI1NiJ9.%%%%.@@@@",
    }


def tokens(ctx: Context, row: Row) -> None:
    before = ctx.snapshot()
    forged = forged_tokens(ctx)
    wrong_code = 0
    for label, tok in forged.items():
        for method, path, body in SIGNED_IN:
            a = ctx.call(row, method, path, json_body=body, headers={"Authorization": f"Bearer {tok}"})
            if row.expect(a, {401}, f"token {label!r}") and a.code != "invalid_token":
                wrong_code += 1
            if a.status == 200:
                row.leaked += 1
    ctx.compare(row, before, ctx.snapshot())
    row.notes += [f"{len(forged)} forged tokens × {len(SIGNED_IN)} signed-in endpoints", f"401 not invalid_token: {wrong_code}"]


# ------------------------------------------------------------------------------------------------
# 8. Another user's token and ids


def other_users(ctx: Context, row: Row) -> None:
    # Warm the caches with the rightful readers first: a foreign reader must not get their entries.
    for path, who in [(f"/api/payments?lease_id={LEASE}", TENANT), (f"/api/payments?lease_id={LEASE}", OWNER),
                      ("/api/dashboard", OWNER), ("/api/profile", TENANT), ("/api/notifications", TENANT)]:
        ctx.call(row, "GET", path, who)
    before = ctx.snapshot()
    denied = [
        ("GET", f"/api/payments?lease_id={LEASE}", STRANGER, None),
        ("GET", f"/api/payments?lease_id={LEASE}", OWNER2, None),
        ("GET", "/api/payments?lease_id=999999", STRANGER, None),
        ("PATCH", "/api/properties/123", OWNER2, {"title": "Pris par Ibrahima"}),
        ("PATCH", "/api/properties/123", TENANT, {"price": 1}),
        ("PATCH", "/api/properties/123", STRANGER, {"city": "Thiès"}),
        ("POST", "/api/payments", STRANGER, {"lease_id": LEASE}),
        ("POST", "/api/payments", OWNER2, {"lease_id": LEASE}),
        ("POST", "/api/payments", OWNER, {"lease_id": LEASE}),  # the owner is a party, not the tenant
        ("GET", "/api/dashboard", STRANGER, None),
        ("GET", "/api/dashboard", TENANT, None),
    ]
    for method, path, who, body in denied:
        a = ctx.call(row, method, path, who, json_body=body)
        row.expect(a, {403, 404}, f"{who.split('@')[0]} on another's {path}")
        if a.status == 200 or a.status == 201 or '"payments"' in a.body or "checkout_url" in a.body:
            row.leaked += 1
    # Allowed, but each sees only their own.
    for path, who in [("/api/dashboard", OWNER2), ("/api/profile", STRANGER), ("/api/notifications", STRANGER),
                      ("/api/profile", OWNER2), ("/api/notifications", OWNER2)]:
        a = ctx.call(row, "GET", path, who)
        row.expect(a, {200}, f"{who.split('@')[0]} own {path}")
        row.leaked += ctx.foreign(who, a.body)
    ctx.compare(row, before, ctx.snapshot())
    row.notes.append(f"{len(denied)} foreign reads/writes after the rightful readers warmed the caches; "
                     "own dashboard/profile/notifications checked for other users' ids and emails")


# ------------------------------------------------------------------------------------------------
# 9. Key injection through city and search filters

INJECTIONS = ["*", "a:b", "\x00", "Dakar*", "dousell:*", "?", "[a-z]", "a\r\nFLUSHALL", "../../etc", "x" * 5000,
              "Dakar\x00:lock", "{lease123}", "%", "Dakar OR 1=1", "é" * 300]
Q_INJECTIONS = ["*,()", "a,b", "title.eq.x", "or(id.gt.0)", "%", "*", "\\", "a)(b", "x" * 5000]


def injection(ctx: Context, row: Row) -> None:
    sent = []
    for raw in INJECTIONS:
        for path in ("/api/properties?city=", "/api/search?city=", "/api/visits/slots?property_id="):
            sent.append((raw, path))
            a = ctx.call(row, "GET", path + quote(raw, safe=""))
            if row.expect(a, {200, 400, 422, 414}, f"filter {raw[:20]!r}") and a.status == 200:
                n = a.json().get("count", a.json().get("total"))
                if n:
                    row.notes.append(f"{path}{raw[:20]!r} → 200 with {n} rows")
    for raw in Q_INJECTIONS:
        a = ctx.call(row, "GET", "/api/search?q=" + quote(raw, safe=""))
        row.expect(a, {200, 400, 422, 414}, f"q {raw[:20]!r}")
        if a.status == 200 and a.json().get("total"):
            row.notes.append(f"q={raw[:20]!r} → 200 with {a.json()['total']} results")
    keys = [k if isinstance(k, str) else str(k) for k in ctx.stack.redis("KEYS", "dousell:*")]
    raw_in_key = sorted({raw for raw in INJECTIONS + Q_INJECTIONS for k in keys
                         if (raw in k and not raw.isalnum() and raw != "%") or any(ord(c) < 32 for c in k)})
    if raw_in_key:
        row.leaked += len(raw_in_key)
        row.notes.append(f"raw input in keys: {[r[:20] for r in raw_in_key]}")
    longest = max((len(k) for k in keys), default=0)
    row.notes += [f"{len(INJECTIONS)} city × 3 paths + {len(Q_INJECTIONS)} q values; KEYS dousell:* → {len(keys)} keys, "
                  f"none with raw input: {not raw_in_key}, longest {longest} chars"]


# ------------------------------------------------------------------------------------------------
# 10. The lock gone during a slow PayDunya call


def lock_expired(ctx: Context, row: Row) -> None:
    period = "2027-01"
    body = {"lease_id": LEASE, "period": period}
    lock_key = f"dousell:lock:payment:lease{LEASE}"
    ctx.stack.paydunya("POST", "mode", {"mode": "hang", "hang_seconds": 4})
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(ctx.call, row, "POST", "/api/payments", TENANT, json_body=body)
        deadline = time.monotonic() + 5
        held = None
        while time.monotonic() < deadline and not held:
            held = ctx.stack.redis("GET", lock_key)
            time.sleep(0.05)
        ctx.stack.redis("DEL", lock_key)  # the lock "expires" while PayDunya is still thinking
        second = ctx.call(row, "POST", "/api/payments", TENANT, json_body=body)
        first = first.result()
    ctx.stack.paydunya("POST", "mode", {"mode": "normal"})
    third = ctx.call(row, "POST", "/api/payments", TENANT, json_body=body)
    row.expect(first, {201}, "first payment, slow PayDunya")
    row.expect(second, {409}, "second payment while the first is making its invoice without the lock")
    row.expect(third, {200}, "retry once the first is done")
    rows = ctx.payments(period)
    pending = [p for p in rows if p["status"] == "pending"]
    invoices = [i for i in ctx.stack.paydunya("GET", "invoices")["invoices"]
                if i.get("custom_data", {}).get("period") == period]
    shown = {json.loads(a.body).get("payment", {}).get("checkout_url") for a in (first, second, third)
             if a.status in (200, 201)}
    if len(pending) != 1:
        row.lost_or_doubled += abs(len(pending) - 1)
    if len(shown) > 1:
        row.lost_or_doubled += len(shown) - 1
    row.notes += [f"lock seen: {bool(held)}, deleted mid-call (the 30 s TTL cannot expire within PayDunya's 10 s "
                  "timeout, so its expiry is simulated by DEL)",
                  f"first {first.status} in {first.seconds:.1f} s, second {second.status} {second.code}, "
                  f"retry {third.status}",
                  f"pending rows {len(pending)}, PayDunya invoices {len(invoices)}, checkout URLs shown {len(shown)}"]


DRILLS = [
    ("Redis stopped under load", redis_stopped),
    ("Redis slowed (800 ms > timeout)", redis_slow),
    ("PayDunya 5xx, then hanging", paydunya_down),
    ("IPN twice and late", ipn_twice),
    ("Database slowed, then down", database_faults),
    ("Malformed/oversized/mistyped bodies", bodies),
    ("Forged tokens", tokens),
    ("Another user's token and ids", other_users),
    ("Key injection (city, q)", injection),
    ("Lock gone mid PayDunya call", lock_expired),
    ("Writes outside the API: webhook, lost, Redis stopped", invalidation.writes_outside_the_api),
]
