"""Rows 6 and 7: what each kind of request costs on Upstash, and the monthly bill of the Zipf mix.

Every figure is read from the Upstash stand-in's own counters (`/__devstack/stats`: billed
commands, each one inside a pipeline too, and scripts run under Upstash's global lock), around
requests run in process through lib against the stand-ins. Each kind runs once unmeasured first
(it loads its scripts, as any earlier request on a warm database did), then `RUNS` times measured.
"""

from __future__ import annotations

import hashlib
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from bench.stack import LocalStack
from bench.strategies import NaiveCacheAside, SeedCard, Strategy, installed, timed_request
from lib import auth, db, keys, metrics
from lib.cache import aside, invalidation
from lib.domain import payments, properties, settle, visits
from lib.edge import upstash
from lib.errors import InvalidSignature, PaymentInProgress, RateLimited
from lib.ops import recorder, report
from lib.web import idempotency, ratelimit

RUNS = 3
PRICE_PER_COMMAND = 0.20 / 100_000  # Upstash pay-as-you-go, regional: $0.20 per 100,000 commands
MONTHLY_REQUESTS = (1_000_000, 100_000_000)
OWNER, TENANT, VISITOR = "awa.ndiaye@example.sn", "moussa.diop@example.sn", "fatou.sarr@example.sn"
LEASE, SLOTTED = 123, 789


@dataclass
class Cost:
    """Per request of one kind, averaged over the measured runs."""

    billed: float
    global_lock: float
    commands: dict[str, float] = field(default_factory=dict)

    def cell(self) -> str:
        what = " ".join(f"{name}×{n:g}" if n != 1 else name for name, n in sorted(self.commands.items()))
        return f"{self.billed:g} · {self.global_lock:g} ({what})" if what else f"{self.billed:g} · {self.global_lock:g}"


def measure(stack: LocalStack, run: Callable[[int], Any], prepare: Callable[[int], Any] | None = None) -> Cost:
    """`run(i)` once to warm up, then RUNS times with the stand-in's counters around each."""
    billed = global_lock = 0
    commands: dict[str, float] = {}
    for i in range(RUNS + 1):
        if prepare is not None:
            prepare(i)
        stack.reset_upstash_stats()
        run(i)
        stats = stack.upstash_stats()
        if i == 0:
            continue
        billed += stats["billed"]
        global_lock += stats["scripts_global_lock"]
        for name, n in stats["by_command"].items():
            commands[name] = commands.get(name, 0) + n / RUNS
    return Cost(billed / RUNS, global_lock / RUNS, {k: round(v, 2) for k, v in commands.items()})


def per_kind(stack: LocalStack, rows: list[dict[str, Any]]) -> dict[str, dict[str, Cost]]:
    """kind → design label → Cost. Reads run through `properties.get_public` under each design, on a
    published property of OWNER's (she signs in for its update)."""
    out: dict[str, dict[str, Cost]] = {}
    owner = _user(stack, OWNER)
    detail = next(row for row in rows if row["owner_id"] == owner.id)

    def read(i: int) -> None:
        timed_request(lambda: properties.get_public(detail["id"]))

    for strategy in (NaiveCacheAside(), SeedCard()):
        strategy.reset()
        write = _writer(strategy, detail)
        with installed(strategy):
            read(0)  # filled
            out.setdefault("hit", {})[strategy.label] = measure(stack, read)
            out.setdefault("miss", {})[strategy.label] = measure(stack, read, write)
            out.setdefault("PATCH (a property's update)", {})[strategy.label] = measure(stack, write)
    ours = "C: this project"
    upstash.execute(["FLUSHDB"])
    upstash.breaker.reset()
    read(0)
    out["hit"][ours] = measure(stack, read)
    out["miss"][ours] = measure(stack, read, lambda i: aside.invalidate(
        invalidation.property_changed(detail["id"], detail["owner_id"], {detail["city"]})))
    out["stale refresh (past its TTL, inside its stale window)"] = {ours: measure(stack, read, _age(detail["id"]))}
    out["PATCH (a property's update)"][ours] = measure(stack, _limited(
        owner, lambda i: properties.update(owner, detail["id"], {"price": detail["price"] + 100 + i})))
    properties.update(owner, detail["id"], {"price": detail["price"]})
    tenant, visitor = _user(stack, TENANT), _user(stack, VISITOR)
    out["payment (POST /api/payments, a new month)"] = {ours: measure(
        stack, _limited(tenant, lambda i: payments.start(tenant, LEASE, _period(1 + i))))}
    out["payment with an Idempotency-Key"] = {ours: measure(
        stack, _limited(tenant, lambda i: idempotency.idempotent(
            f"bench-{i}", tenant.id, "POST /api/payments", {"lease_id": LEASE, "period": _period(5 + i)},
            PaymentInProgress, lambda: _answer(payments.start(tenant, LEASE, _period(5 + i))))))}
    slots: list[datetime] = []  # the slot each booking takes, chosen before it (the client saw the list)
    booked: list[dict[str, Any]] = []

    def next_slot(i: int) -> None:
        """Unmeasured: the previous booking cancelled (a visitor holds 3 per property at most), a free slot."""
        if booked:
            visits.cancel(visitor, booked[-1]["id"])
        slots.append(datetime.fromisoformat(visits.free_slots(SLOTTED)[0]["starts_at"]))

    out["booking (POST /api/visits)"] = {ours: measure(
        stack, _limited(visitor, lambda i: booked.append(visits.book(visitor, SLOTTED, slots[-1]))), next_slot)}
    out["cancel (DELETE /api/visits/{id})"] = {ours: measure(
        stack, _limited(visitor, lambda i: visits.cancel(visitor, booked[-1]["id"])),
        lambda i: booked.append(visits.book(visitor, SLOTTED, datetime.fromisoformat(
            visits.free_slots(SLOTTED)[0]["starts_at"]))))}
    tokens: list[str] = []
    out["IPN (a completed payment)"] = {ours: measure(
        stack, lambda i: settle.receive_ipn(_ipn(tokens[-1]), "application/x-www-form-urlencoded"),
        lambda i: tokens.append(_paid_invoice(stack, tenant, _period(9 + i))))}
    out["write refused past the rate limit (429)"] = {ours: measure(stack, _refused_write)}
    out["IPN with a wrong hash (counted per address)"] = {ours: measure(stack, _forged_ipn)}
    out["metrics read (GET /api/metrics)"] = {ours: measure(stack, lambda i: report.report("last_hour"))}
    out["metrics write (at most 1 per instance every 5 s)"] = {ours: measure(stack, _metrics_write)}
    return out


def _answer(started: payments.Started) -> Any:
    """The handler's Reply for a started payment (api/payments.py), as `idempotency.idempotent` stores it."""
    import importlib

    return importlib.import_module("api.payments").answer(started)


def _limited(user: auth.User, run: Callable[[int], Any]) -> Callable[[int], Any]:
    """A write as the API runs it: the user's rate limit first (lib/web/request's `user()`), then the write."""
    def write(i: int) -> Any:
        ratelimit.for_writes("POST", user.id)
        return run(i)

    return write


def _refused_write(i: int) -> None:
    """One write of a user already past the limit (each window of the limiter full)."""
    for _ in range(ratelimit.LIMITS["write"].requests + 1 if i == 0 else 0):
        try:
            ratelimit.hit("write", "bench-flooder")
        except RateLimited:
            pass
    try:
        ratelimit.hit("write", "bench-flooder")
    except RateLimited:
        return
    raise AssertionError("the flooder was not limited")


def _forged_ipn(i: int) -> None:
    """api/paydunya/ipn.py on a callback whose hash is wrong: 403 (or 429 past the limit), one count."""
    import importlib

    try:
        importlib.import_module("api.paydunya.ipn").receive(
            b"data%5Bhash%5D=forged&data%5Binvoice%5D%5Btoken%5D=x", None, {"X-Forwarded-For": "203.0.113.9"})
    except (InvalidSignature, RateLimited):
        return
    raise AssertionError("a forged IPN was accepted")


def _writer(strategy: Strategy, row: dict[str, Any]) -> Callable[[int], None]:
    """What a property's update does to the cache under `strategy` (its database write aside)."""
    return lambda i: strategy.invalidate_property(row["id"], row["owner_id"], row["city"])


def _age(property_id: int) -> Callable[[int], None]:
    def prepare(i: int) -> None:
        """Past its TTL, inside its stale window: the entry's "expires at" (lib/cache/entries) moved back."""
        key = keys.property_detail(property_id).key
        head, _, value = upstash.execute(["GET", key]).partition("\n")
        _, load, window, built = head.split("|")
        seconds, micros = upstash.execute(["TIME"])
        expired = int(seconds) * 1000 + int(micros) // 1000 - 1000
        upstash.execute(["SET", key, f"{expired}|{load}|{window}|{built}\n{value}", "KEEPTTL"])

    return prepare


def _user(stack: LocalStack, email: str) -> auth.User:
    return auth.authenticate(f"Bearer {stack.token(email)}")


def _period(months_ahead: int) -> str:
    today = datetime.now(UTC)
    index = today.year * 12 + today.month - 1 + months_ahead
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def _paid_invoice(stack: LocalStack, tenant: auth.User, period: str) -> str:
    """A new payment, its invoice completed at the PayDunya stand-in; its token."""
    pid = payments.start(tenant, LEASE, period).payment["id"]
    token = db.run(lambda: db.service().from_("rental_payments").select("provider_token")
                   .eq("id", pid).limit(1).execute()).data[0]["provider_token"]
    # The checkout page's "Payer" button, without its own IPN: the bench sends one below.
    httpx.post(f"{stack.paydunya_url}/checkout/{token}/complete", json={"send_ipn": False},
               headers={"Accept": "application/json"}, timeout=10).raise_for_status()
    return token


def _ipn(token: str) -> bytes:
    from devstack.__main__ import PAYDUNYA_KEYS

    amount = db.run(lambda: db.service().from_("rental_payments").select("amount")
                    .eq("provider_token", token).limit(1).execute()).data[0]["amount"]
    master = PAYDUNYA_KEYS["PAYDUNYA_MASTER_KEY"]
    return urllib.parse.urlencode({
        "data[hash]": hashlib.sha512(master.encode()).hexdigest(), "data[status]": "completed",
        "data[invoice][token]": token, "data[invoice][total_amount]": str(amount),
    }).encode()


def _metrics_write(i: int) -> None:
    state = recorder.begin_request("/api/properties")
    metrics.count_cache("properties_list", "HIT")
    recorder.end_request(state, "GET", "/api/properties", 1.0)
    recorder.flush(force=True)


def monthly_bill(commands_per_request: float, requests: int) -> float:
    return commands_per_request * requests * PRICE_PER_COMMAND


def seed_card_per_request(naive: Any) -> float:
    """The seed's card on the same run: naive cache-aside plus one INCR per read (its hit-rate counter)."""
    return (naive.billed + naive.reads) / (naive.reads + naive.writes)
