"""The write path on the local stack (vercel dev, PostgreSQL, redis-server, the PayDunya stand-in).

Double clicks never double a payment or a booking, with Redis up or stopped; the IPN completes a
payment once, notifies tenant and owner, and shows at once in GET /api/payments; forged,
replayed and wrong-amount IPNs change nothing.

Each test pays its own month of lease 123 (months ahead of the current one: the seed's
history and the current month stay as they are for the other suites) and books its own slot
of property 789 (the last ones: the earliest stay free for others).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from urllib.parse import urlencode

import httpx
import pytest

from devstack.__main__ import PAYDUNYA_KEYS
from tests.support import show

MOUSSA = "moussa.diop@example.sn"
AWA = "awa.ndiaye@example.sn"
FATOU = "fatou.sarr@example.sn"
IBRAHIMA = "ibrahima.fall@example.sn"
CLICKS = 50
IPN_HASH = hashlib.sha512(PAYDUNYA_KEYS["PAYDUNYA_MASTER_KEY"].encode()).hexdigest()

# Filled by the concurrency tests; printed after the module by `concurrency_table` for the closing note.
RESULTS: dict[str, dict] = {}


@pytest.fixture(scope="module", autouse=True)
def concurrency_table(request):
    """The table of every concurrency scenario that ran, in any order (nothing when none ran)."""
    RESULTS.clear()
    yield
    lines = ["| scenario | requests | 201 | 200 | 409 (codes) | other | invoices | pending rows | visits | seconds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, r in RESULTS.items():
        codes = ", ".join(f"{n} {c}" for c, n in sorted(r["codes"].items())) or "—"
        lines.append(f"| {label} | {r['requests']} | {r['201']} | {r['200']} | {r['409']} ({codes}) | {r['other']} | "
                     f"{r.get('invoices', '—')} | {r.get('pending rows', '—')} | {r.get('visits', '—')} | {r['seconds']} |")
    if RESULTS:
        show(request, lines)


def period(months_ahead: int) -> str:
    """The month `months_ahead` after the current one in Dakar (UTC+0 all year)."""
    now = datetime.now(UTC)
    index = now.year * 12 + now.month - 1 + months_ahead
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


@pytest.fixture(scope="module", autouse=True)
def built(stack):
    """vercel dev builds a function at its first request (seconds): do it before any timing matters,
    e.g. before the PayDunya stand-in's IPN, which gives up after 5 s."""
    for path in ("/api/paydunya/ipn", "/api/payments", "/api/visits", "/api/notifications", "/api/dashboard"):
        stack.api.options(path)


@pytest.fixture(scope="module")
def pd(stack):
    with httpx.Client(base_url=stack.paydunya_url, timeout=30) as client:
        yield client


def pay(stack, when: str, who: str = MOUSSA, **headers) -> httpx.Response:
    return stack.api.post("/api/payments", json={"lease_id": 123, "period": when},
                          headers={**stack.auth(who), **headers})


def payments_of(stack, when: str, who: str = MOUSSA) -> list[dict]:
    response = stack.api.get("/api/payments", params={"lease_id": 123}, headers=stack.auth(who))
    assert response.status_code == 200, response.text
    return [p for p in response.json()["payments"] if p["period"] == when]


def invoices_of(pd, when: str) -> list[dict]:
    found = pd.get("/__devstack/invoices").json()["invoices"]
    return [i for i in found if str(i["custom_data"].get("lease_id")) == "123" and i["custom_data"].get("period") == when]


def warm(send) -> None:
    """Start vercel dev's pool of Python processes for a function (10 at most, @vercel/fun's
    default, each serving one request at a time and queueing the others for 5 s at most) with
    ten harmless requests that import everything the real one will: fifty cold starts at once
    would measure vercel dev on this machine, not the API."""
    clicks(10, lambda i: send())


def code_of(response: httpx.Response) -> str:
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return f"http {response.status_code}: {response.text[:80]!r}"


def clicks(n: int, send) -> list[httpx.Response]:
    """`n` requests released together by a barrier, one thread each."""
    barrier = threading.Barrier(n)

    def one(i: int) -> httpx.Response:
        barrier.wait(60)
        return send(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


@pytest.fixture
def redis_stopped(stack):
    stack.devstack("redis-stop")
    try:
        yield
    finally:
        stack.devstack("redis-start")
        deadline = time.monotonic() + 30
        while stack.api.get("/api/health").json().get("redis") != "up" and time.monotonic() < deadline:
            time.sleep(0.5)


# -- payments ----------------------------------------------------------------------------------


def fifty_payments(stack, pd, when: str, label: str, paydunya_seconds: float = 0) -> None:
    stack.auth(MOUSSA)  # signed in once, before the threads start
    warm(lambda: stack.api.get("/api/payments?lease_id=123", headers=stack.auth(MOUSSA)))
    if paydunya_seconds:  # PayDunya takes this long to make the invoice (the seed's "2 seconds")
        pd.post("/__devstack/mode", json={"mode": "hang", "hang_seconds": paydunya_seconds})
    started = time.monotonic()
    try:
        answers = clicks(CLICKS, lambda i: pay(stack, when))
    finally:
        pd.post("/__devstack/mode", json={"mode": "normal"})
    elapsed = time.monotonic() - started
    statuses = Counter(r.status_code for r in answers)
    codes = Counter(code_of(r) for r in answers if r.status_code >= 400)
    paid = {r.json()["payment"]["id"] for r in answers if r.status_code in (200, 201)}
    # A pending row once every request has answered; read through the API (Redis may be down).
    rows = payments_of(stack, when)
    invoices = invoices_of(pd, when)
    RESULTS[label] = {"requests": CLICKS, "201": statuses[201], "200": statuses[200], "409": statuses[409],
                      "other": sum(v for k, v in statuses.items() if k not in (200, 201, 409)),
                      "invoices": len(invoices), "pending rows": sum(r["status"] == "pending" for r in rows),
                      "codes": dict(codes), "seconds": round(elapsed, 2)}
    assert statuses[201] == 1, (statuses, codes)
    assert set(statuses) <= {200, 201, 409}, (statuses, [r.text for r in answers if r.status_code not in (200, 201, 409)][:3])
    assert set(codes) <= {"payment_in_progress"}, codes
    assert len(paid) == 1
    assert len(invoices) == 1
    assert [r["status"] for r in rows] == ["pending"]
    assert rows[0]["id"] in paid and rows[0]["checkout_url"] == invoices[0]["checkout_url"]
    # Once the dust settles every retry gets that same payment.
    again = pay(stack, when)
    assert again.status_code == 200 and again.json()["payment"]["id"] in paid


def test_fifty_simultaneous_payment_requests_make_one_invoice_and_one_pending_row(stack, pd):
    fifty_payments(stack, pd, period(1), "payments, Redis up")


def test_fifty_payment_requests_while_paydunya_takes_a_second(stack, pd):
    fifty_payments(stack, pd, period(11), "payments, Redis up, PayDunya 1 s", paydunya_seconds=1)


def test_the_owner_cannot_pay_and_a_stranger_cannot_see_the_lease(stack):
    assert pay(stack, period(1), AWA).json()["error"]["code"] == "not_lease_party"
    assert pay(stack, period(1), FATOU).status_code == 404
    listing = stack.api.get("/api/payments", params={"lease_id": 123}, headers=stack.auth(FATOU))
    assert (listing.status_code, listing.json()["error"]["code"]) == (403, "not_lease_party")


def test_an_idempotent_retry_gets_the_first_answer(stack):
    when = period(7)
    first = pay(stack, when, **{"Idempotency-Key": f"it-{when}"})
    again = pay(stack, when, **{"Idempotency-Key": f"it-{when}"})
    assert first.status_code == 201, first.text
    assert (again.status_code, again.json()) == (201, first.json())
    assert again.headers["idempotent-replayed"] == "true"
    other = stack.api.post("/api/payments", json={"lease_id": 123, "period": period(8)},
                           headers={**stack.auth(MOUSSA), "Idempotency-Key": f"it-{when}"})
    assert (other.status_code, other.json()["error"]["code"]) == (422, "idempotency_key_reused")


# -- the IPN -----------------------------------------------------------------------------------


def new_payment(stack, pd, when: str) -> tuple[dict, str]:
    response = pay(stack, when)
    assert response.status_code == 201, response.text
    payment = response.json()["payment"]
    token = payment["checkout_url"].rstrip("/").rsplit("/", 1)[-1]
    return payment, token


def checkout(pd, token: str, action: str = "complete", **params) -> dict:
    response = pd.post(f"/checkout/{token}/{action}", json=params, headers={"Accept": "application/json"})
    assert response.status_code == 200, response.text
    return response.json()


def notified(stack, who: str, payment_id: int) -> list[dict]:
    response = stack.api.get("/api/notifications", headers=stack.auth(who))
    assert response.status_code == 200, response.text
    return [n for n in response.json()["notifications"] if (n.get("data") or {}).get("payment_id") == payment_id]


def ipn_form(token: str, amount, status="completed", hash_=IPN_HASH) -> bytes:
    return urlencode({"data[hash]": hash_, "data[invoice][token]": token, "data[invoice][total_amount]": str(amount),
                      "data[status]": status}).encode()


def post_ipn(stack, body: bytes) -> httpx.Response:
    return stack.api.post("/api/paydunya/ipn", content=body,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})


def test_paying_on_paydunya_completes_the_payment_notifies_both_and_shows_at_once(stack, pd):
    when = period(3)
    payment, token = new_payment(stack, pd, when)
    assert payments_of(stack, when)[0]["status"] == "pending"  # cached now
    assert payments_of(stack, when, AWA)[0]["status"] == "pending"
    stack.api.get("/api/notifications", headers=stack.auth(MOUSSA))  # cached too
    stack.api.get("/api/dashboard", headers=stack.auth(AWA))

    result = checkout(pd, token)
    assert result["ipn"]["delivered"] is True, result
    assert result["ipn"]["status_code"] == 200

    assert [p["status"] for p in payments_of(stack, when)] == ["completed"]
    assert [p["status"] for p in payments_of(stack, when, AWA)] == ["completed"]
    tenant, owner = notified(stack, MOUSSA, payment["id"]), notified(stack, AWA, payment["id"])
    assert [n["kind"] for n in tenant] == ["payment_completed"]
    assert [n["kind"] for n in owner] == ["rent_received"]
    assert pay(stack, when).json()["error"]["code"] == "already_paid"

    # PayDunya sends the same callback again: 200, nothing changes, nobody is notified twice.
    resent = pd.post(f"/__devstack/ipn/{token}/resend", json={}).json()
    assert resent["ipn"]["delivered"] is True and resent["ipn"]["status_code"] == 200
    assert len(notified(stack, MOUSSA, payment["id"])) == 1 and len(notified(stack, AWA, payment["id"])) == 1
    assert [p["status"] for p in payments_of(stack, when)] == ["completed"]


def test_a_forged_ipn_is_403_and_changes_nothing(stack, pd):
    when = period(4)
    payment, token = new_payment(stack, pd, when)
    checkout(pd, token, send_ipn=False)  # paid at PayDunya; the genuine callback is lost
    for forged in ("0" * 128, hashlib.sha512(b"a guess").hexdigest()):
        response = post_ipn(stack, ipn_form(token, 50_000, hash_=forged))
        assert (response.status_code, response.json()["error"]["code"]) == (403, "invalid_signature")
    assert [p["status"] for p in payments_of(stack, when)] == ["pending"]
    assert notified(stack, MOUSSA, payment["id"]) == []


def test_an_ipn_whose_amount_differs_from_paydunyas_changes_nothing(stack, pd):
    when = period(5)
    payment, token = new_payment(stack, pd, when)
    checkout(pd, token, send_ipn=False)
    response = post_ipn(stack, ipn_form(token, 5_000))  # the right hash, the wrong amount
    assert (response.status_code, response.json()["error"]["code"]) == (409, "amount_mismatch")
    assert [p["status"] for p in payments_of(stack, when)] == ["pending"]
    assert notified(stack, MOUSSA, payment["id"]) == []
    # PayDunya's own callback, with its amount, still completes it afterwards.
    assert pd.post(f"/__devstack/ipn/{token}/resend", json={}).json()["ipn"]["status_code"] == 200
    assert [p["status"] for p in payments_of(stack, when)] == ["completed"]


def test_an_ipn_claiming_completion_of_an_unpaid_invoice_changes_nothing(stack, pd):
    when = period(6)
    payment, token = new_payment(stack, pd, when)
    response = post_ipn(stack, ipn_form(token, 50_000))  # right hash and amount, but nobody paid
    assert response.status_code == 200 and response.json() == {"received": True, "status": "pending"}
    assert [p["status"] for p in payments_of(stack, when)] == ["pending"]


def test_a_cancelled_checkout_frees_the_month_for_a_new_attempt(stack, pd):
    when = period(9)
    payment, token = new_payment(stack, pd, when)
    assert checkout(pd, token, "cancel")["ipn"]["status_code"] == 200
    assert [p["status"] for p in payments_of(stack, when)] == ["cancelled"]
    retry = pay(stack, when)
    assert retry.status_code == 201 and retry.json()["payment"]["id"] != payment["id"]


def test_paydunya_failing_answers_502_and_leaves_nothing_pending(stack, pd):
    when = period(10)
    pd.post("/__devstack/mode", json={"mode": "error", "error_status": 503})
    try:
        response = pay(stack, when)
    finally:
        pd.post("/__devstack/mode", json={"mode": "normal"})
    assert (response.status_code, response.json()["error"]["code"]) == (502, "payment_provider_error")
    assert [p["status"] for p in payments_of(stack, when)] == ["failed"]
    assert pay(stack, when).status_code == 201


# -- visits ------------------------------------------------------------------------------------


def free_slots(stack) -> list[dict]:
    response = stack.api.get("/api/visits/slots", params={"property_id": 789})
    assert response.status_code == 200, response.text
    return response.json()["slots"]


def fifty_bookings(stack, starts_at: str, label: str) -> None:
    people = (FATOU, MOUSSA, IBRAHIMA)
    for who in people:
        stack.auth(who)  # signed in once, before the threads start
    warm(lambda: stack.api.post("/api/visits", json={"property_id": 789, "starts_at": "2001-01-01T10:00:00Z"},
                                headers=stack.auth(FATOU)))  # no such slot: 409 from the cached list
    started = time.monotonic()
    answers = clicks(CLICKS, lambda i: stack.api.post("/api/visits", json={"property_id": 789, "starts_at": starts_at},
                                                      headers=stack.auth(people[i % 3])))
    elapsed = time.monotonic() - started
    statuses = Counter(r.status_code for r in answers)
    codes = Counter(code_of(r) for r in answers if r.status_code >= 400)
    visits = [r.json()["visit"] for r in answers if r.status_code == 201]
    RESULTS[label] = {"requests": CLICKS, "201": statuses[201], "200": statuses[200], "409": statuses[409],
                      "other": sum(v for k, v in statuses.items() if k not in (201, 409)), "visits": len(visits),
                      "codes": dict(codes), "seconds": round(elapsed, 2)}
    assert statuses[201] == 1, (statuses, codes)
    assert set(statuses) <= {201, 409}, [r.text for r in answers if r.status_code not in (201, 409)][:3]
    assert set(codes) <= {"slot_taken", "booking_in_progress"}
    assert starts_at not in [s["starts_at"] for s in free_slots(stack)]
    again = stack.api.post("/api/visits", json={"property_id": 789, "starts_at": starts_at}, headers=stack.auth(FATOU))
    assert (again.status_code, again.json()["error"]["code"]) == (409, "slot_taken")


def test_fifty_simultaneous_bookings_of_one_slot_make_one_visit(stack):
    fifty_bookings(stack, free_slots(stack)[-1]["starts_at"], "bookings, Redis up")


def test_a_booking_shows_at_once_in_the_free_slots(stack):
    slots = free_slots(stack)
    wanted = slots[-1]["starts_at"]
    response = stack.api.post("/api/visits", json={"property_id": 789, "starts_at": wanted}, headers=stack.auth(FATOU))
    assert response.status_code == 201, response.text
    assert [s["starts_at"] for s in free_slots(stack)] == [s["starts_at"] for s in slots[:-1]]


# -- Redis stopped (last: afterwards each warm function keeps skipping Redis until its circuit
# breaker's next probe, up to 30 s, so an Idempotency-Key test run just after would see the
# database fence answer 200 instead of the replayed 201) ------------------------------------


def test_fifty_simultaneous_payment_requests_with_redis_stopped_still_make_one(stack, pd, redis_stopped):
    assert stack.api.get("/api/health").json()["redis"] == "down"
    fifty_payments(stack, pd, period(2), "payments, Redis stopped")


def test_fifty_payment_requests_with_redis_stopped_while_paydunya_takes_a_second(stack, pd, redis_stopped):
    fifty_payments(stack, pd, period(12), "payments, Redis stopped, PayDunya 1 s", paydunya_seconds=1)


def test_fifty_simultaneous_bookings_with_redis_stopped_still_make_one_visit(stack, redis_stopped):
    assert stack.api.get("/api/health").json()["redis"] == "down"
    fifty_bookings(stack, free_slots(stack)[-1]["starts_at"], "bookings, Redis stopped")
