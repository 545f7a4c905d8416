"""lib/domain/payments: starting a payment (lock, reserve, PayDunya, store), listing, the IPN (the Idempotency-Key: tests/lib/web/test_idempotency.py).

Everything is faked at the network boundary with respx: PostgREST by `FakeSupabase` (an
in-memory model of the tables, RLS and the RPCs of supabase/migrations), PayDunya by
`FakePayDunya`, Upstash by tests.fakes.FakeUpstash (the stand-in's engine over a real Valkey).
The fakes live in tests/world.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import urlencode
from zoneinfo import ZoneInfoNotFoundError

import httpx
import pytest

from lib import context, keys
from lib.cache import locks
from lib.db import DatabaseError
from lib.domain import payments, settle
from lib.edge import upstash
from lib.errors import (
    AlreadyPaid,
    AmountMismatch,
    BadRequest,
    ConfigurationError,
    DatabaseUnavailable,
    InvalidSignature,
    LeaseNotActive,
    NotFound,
    NotYourLease,
    PaymentInProgress,
    PaymentProviderError,
    ValidationFailed,
)
from tests.world import (
    AWA,
    FATOU,
    IBRAHIMA,
    IPN_HASH,
    MOUSSA,
    NOW,
    PUBLIC,
    rpc_error,
    user,
)

# == starting a payment ========================================================================

MOUSSA_U, AWA_U, FATOU_U = user(MOUSSA), user(AWA), user(FATOU)


def start(who=MOUSSA_U, lease_id=123, period: str | None = "2026-12") -> payments.Started:
    context.begin()
    return payments.start(who, lease_id, period)


def test_a_tenant_starts_a_payment_and_gets_a_checkout_url(world):
    reply = start()
    assert reply.created
    payment = reply.payment
    assert set(payment) == {"id", "lease_id", "period", "amount", "currency", "status", "checkout_url"}
    assert payment | {"id": 0} == {"id": 0, "lease_id": 123, "period": "2026-12", "amount": 50_000, "currency": "XOF",
                                   "status": "pending", "checkout_url": "https://pay.test/checkout/test_tok1"}
    row = world.db.payments[payment["id"]]
    assert (row["status"], row["provider_token"], row["checkout_url"]) == ("pending", "test_tok1", payment["checkout_url"])
    invoice = world.paydunya.invoices["test_tok1"]
    assert invoice["total_amount"] == 50_000
    assert invoice["description"] == "Loyer décembre 2026 — bail n°123"
    assert invoice["custom_data"] == {"payment_id": payment["id"], "lease_id": 123, "period": "2026-12"}
    assert invoice["actions"] == {
        "callback_url": f"{PUBLIC}/api/paydunya/ipn",
        "return_url": f"{PUBLIC}/paiement/retour?payment_id={payment['id']}",
        "cancel_url": f"{PUBLIC}/paiement/annule?payment_id={payment['id']}",
    }


def test_the_lease_is_read_as_the_user_and_the_rpc_and_the_update_as_the_service(world):
    start()
    roles = {(m, p): r for m, p, r in world.db.calls}
    assert roles[("GET", "/leases")] == "authenticated"
    assert roles[("POST", "/rpc/reserve_payment")] == "service_role"
    assert roles[("PATCH", "/rental_payments")] == "service_role"


def test_the_lock_is_taken_for_thirty_seconds_and_released(world):
    seen = {}
    world.db.before["/rpc/reserve_payment"] = lambda: seen.update(pttl=world.redis.redis.pttl(world.lock_key()))
    start()
    assert 29_000 < seen["pttl"] <= 30_000
    assert world.redis.redis.exists(world.lock_key()) == 0


def test_a_new_payment_invalidates_the_leases_payments_and_the_owners_dashboard(world):
    before = {tag: world.tag_version(tag) for tag in ("payments:lease:123", f"dashboard:{AWA}")}
    start()
    for tag, version in before.items():
        assert world.tag_version(tag) not in (None, version), tag


def test_the_payments_writes_are_marked_applied_with_the_tags_it_bumped(world):
    start()
    markers = world.redis.redis.keys(keys.applied_change("*").replace("%2A", "*"))
    assert len(markers) == 2  # reserve_payment, then storing the checkout URL: one change id each
    for marker in markers:
        assert set(json.loads(world.redis.redis.get(marker))) == {"payments:lease:123", f"dashboard:{AWA}"}


def test_a_second_request_gets_the_same_pending_payment_and_no_second_invoice(world):
    first = start()
    second = start()
    assert not second.created
    assert second.payment == first.payment
    assert len(world.paydunya.invoices) == 1
    assert len(world.db.rows(period="2026-12", status="pending")) == 1


@pytest.mark.parametrize("at, period", [
    (datetime(2026, 11, 30, 23, 59, tzinfo=UTC), "2026-11"),
    (datetime(2026, 12, 1, 0, 0, 30, tzinfo=UTC), "2026-12"),  # Dakar is UTC+0 all year
])
def test_the_period_defaults_to_the_current_month_in_dakar(world, at, period):
    world.clock.now = at
    assert start(period=None).payment["period"] == period


@pytest.mark.parametrize("who, lease_id, error", [
    (FATOU_U, 123, NotFound),  # not hers: RLS hides it
    (MOUSSA_U, 999, NotFound),  # no such lease
    (AWA_U, 123, NotYourLease),  # the owner cannot pay her own tenant's rent
    (MOUSSA_U, 124, LeaseNotActive),  # his ended lease
])
def test_who_may_pay_is_settled_before_any_lock_or_reservation(world, who, lease_id, error):
    with pytest.raises(error):
        start(who, lease_id)
    assert world.db.count("POST", "/rpc/reserve_payment") == 0
    assert not any("SET" in str(call) for call in world.redis.calls)  # no lock taken: a stranger cannot block it
    assert not world.paydunya.invoices


def test_the_owner_is_told_403_not_lease_party(world):
    with pytest.raises(NotYourLease) as info:
        start(AWA_U)
    assert (info.value.status, info.value.code) == (403, "not_lease_party")


def test_the_tenant_check_is_equality_whatever_the_order_of_the_ids(world):
    # FATOU owns this lease's property and her id sorts after her tenant's (AWA's sorts before MOUSSA's)
    world.db.properties[300] = {"id": 300, "owner_id": FATOU, "status": "published", "title": "Studio", "city": "Dakar"}
    world.db.leases[125] = {"id": 125, "property_id": 300, "tenant_id": MOUSSA, "status": "active",
                            "monthly_rent": 80_000, "starts_on": "2026-09-01", "ends_on": None}
    with pytest.raises(NotYourLease):
        start(FATOU_U, 125)
    assert world.db.count("POST", "/rpc/reserve_payment") == 0


def test_the_started_payment_is_a_frozen_answer(world):
    reply = start()
    with pytest.raises(dataclasses.FrozenInstanceError):
        reply.created = False  # type: ignore[misc]


def test_a_month_already_paid_is_409_already_paid(world):
    with pytest.raises(AlreadyPaid):
        start(period="2026-10")
    assert not world.paydunya.invoices


@pytest.mark.parametrize("period, ok", [
    ("2026-12", True), ("2027-11", True),  # up to 12 months ahead
    ("2027-12", False),  # 13 months ahead: a typo
    ("2026-08", False),  # before the lease started (2026-09)
    ("2026-13", False), ("26-11", False),
])
def test_the_period_must_be_within_the_window_and_the_lease(world, period, ok):
    if ok:
        assert start(period=period).created
    else:
        with pytest.raises(ValidationFailed) as info:
            start(period=period)
        assert info.value.status == 422 and info.value.details[0]["field"] == "period"


def test_the_window_reaches_twelve_months_ahead_from_any_month(monkeypatch):
    monkeypatch.setattr(payments, "now", lambda: datetime(2027, 3, 15, tzinfo=UTC))
    payments.check_period("2028-03")
    with pytest.raises(ValidationFailed):
        payments.check_period("2028-04")


def test_the_month_the_lease_starts_may_be_paid(monkeypatch):
    monkeypatch.setattr(payments, "now", lambda: NOW)
    payments.check_period("2026-09", {"starts_on": "2026-09-01"})
    with pytest.raises(ValidationFailed):
        payments.check_period("2026-08", {"starts_on": "2026-09-01"})


def test_without_a_tz_database_dakar_is_utc(monkeypatch):
    def missing(key):
        raise ZoneInfoNotFoundError(key)

    monkeypatch.setattr(payments, "ZoneInfo", missing)
    monkeypatch.setattr(payments, "now", lambda: datetime(2026, 11, 30, 23, 59, tzinfo=UTC))
    assert payments.current_period() == "2026-11"


def test_the_window_reaches_two_years_back(monkeypatch):
    monkeypatch.setattr(payments, "now", lambda: NOW)
    payments.check_period("2024-11")
    with pytest.raises(ValidationFailed):
        payments.check_period("2024-10")


@pytest.mark.parametrize("code, error", [
    ("lease_not_found", NotFound), ("not_lease_tenant", NotYourLease), ("lease_not_active", LeaseNotActive),
    ("already_paid", AlreadyPaid), ("payment_in_progress", PaymentInProgress), ("invalid_period", ValidationFailed),
])
def test_each_code_the_reserve_rpc_raises_becomes_its_contract_error(world, code, error):
    world.db.broken["/rpc/reserve_payment"] = rpc_error(code)
    with pytest.raises(error):
        start()
    assert not world.paydunya.invoices


def test_an_unknown_rpc_code_is_not_swallowed(world):
    world.db.broken["/rpc/reserve_payment"] = rpc_error("something_new")
    with pytest.raises(DatabaseError):
        start()


def test_a_busy_lock_is_409_payment_in_progress_after_one_retry(world, monkeypatch):
    sleeps = []
    monkeypatch.setattr(locks, "sleep", sleeps.append)
    world.redis.redis.set(world.lock_key(), "someone-else", px=30_000)
    with pytest.raises(PaymentInProgress) as info:
        start()
    assert info.value.message.startswith("Paiement en cours")
    assert len(sleeps) == 1 and 0.1 <= sleeps[0] <= 0.15
    assert world.db.count("POST", "/rpc/reserve_payment") == 0
    assert world.redis.redis.get(world.lock_key()) == b"someone-else"


FAILURES = [
    pytest.param(httpx.Response(200, json={"response_code": "1001", "response_text": "Invalid Masterkey Specified"}),
                 id="error-in-body"),
    pytest.param(httpx.Response(500, text="<h1>500</h1>"), id="http-500"),
    pytest.param(httpx.ReadTimeout("slow"), id="timeout"),
]


@pytest.mark.parametrize("failure", FAILURES)
def test_a_paydunya_failure_marks_the_row_failed_and_leaves_nothing_pending(world, caplog, failure):
    world.paydunya.failure = failure
    with pytest.raises(PaymentProviderError) as caught:
        start()
    rows = world.db.rows(period="2026-12")
    assert f"payment {rows[0]['id']}: PayDunya failed ({caught.value.reason}); marked failed" in caplog.messages
    assert caught.value.reason
    assert [r["status"] for r in rows] == ["failed"]
    assert rows[0]["checkout_url"] is None
    assert world.redis.redis.exists(world.lock_key()) == 0
    world.paydunya.failure = None
    retry = start()
    assert retry.created and retry.payment["id"] != rows[0]["id"]


def test_a_failed_attempt_invalidates_the_history_it_changed(world):
    world.paydunya.failure = httpx.Response(503)
    version = world.tag_version("payments:lease:123")
    with pytest.raises(PaymentProviderError):
        start()
    assert world.tag_version("payments:lease:123") != version


def test_a_young_pending_row_without_an_invoice_is_another_request_at_work(world):
    world.db.add_payment(123, "2026-12", created_at=NOW - timedelta(seconds=5))
    with pytest.raises(PaymentInProgress):
        start()
    assert not world.paydunya.invoices
    assert [r["status"] for r in world.db.rows(period="2026-12")] == ["pending"]


def test_a_pending_row_without_an_invoice_exactly_the_lock_ttl_old_is_still_at_work(world):
    world.db.add_payment(123, "2026-12", created_at=NOW - payments.ABANDONED_AFTER)
    with pytest.raises(PaymentInProgress):
        start()


@pytest.mark.parametrize("created_at", ["missing", None, "not a date"])
def test_a_pending_row_without_a_readable_creation_time_is_never_taken_for_abandoned(world, created_at):
    row = world.db.add_payment(123, "2026-12", created_at=NOW - timedelta(hours=1))
    if created_at == "missing":
        del row["created_at"]
    else:
        row["created_at"] = created_at
    with pytest.raises(PaymentInProgress):
        start()
    assert not world.paydunya.invoices


def test_an_abandoned_row_that_cannot_be_marked_failed_is_reserved_twice_at_most_and_bumps_nothing(world):
    world.db.add_payment(123, "2026-12", created_at=NOW - timedelta(minutes=5))
    world.db.broken["/rental_payments"] = httpx.ConnectError("down")
    version = world.tag_version("payments:lease:123")
    with pytest.raises(PaymentInProgress):
        start()
    assert world.db.count("POST", "/rpc/reserve_payment") == 2
    assert world.tag_version("payments:lease:123") == version  # nothing changed: nothing to invalidate
    assert not world.paydunya.invoices


def test_a_paydunya_failure_while_the_database_is_down_is_still_the_providers_error(world):
    world.paydunya.failure = httpx.ReadTimeout("slow")
    world.db.broken["/rental_payments"] = httpx.ConnectError("down")
    with pytest.raises(PaymentProviderError):
        start()
    del world.db.broken["/rental_payments"]
    assert [r["status"] for r in world.db.rows(period="2026-12")] == ["pending"]  # abandoned after LOCK_TTL


def test_a_pending_row_without_an_invoice_older_than_the_lock_ttl_is_abandoned_and_replaced(world):
    stale = world.db.add_payment(123, "2026-12", created_at=NOW - timedelta(seconds=31))
    reply = start()
    assert reply.created
    assert world.db.payments[stale["id"]]["status"] == "failed"
    assert reply.payment["id"] != stale["id"]
    assert len(world.paydunya.invoices) == 1


def test_a_creation_time_is_read_with_its_offset(world):
    at = (NOW - timedelta(seconds=31)).astimezone(timezone(timedelta(hours=1)))  # a session not on UTC
    stale = world.db.add_payment(123, "2026-12", created_at=at)
    assert start().created
    assert world.db.payments[stale["id"]]["status"] == "failed"


def test_an_abandoned_pending_row_with_an_invoice_is_kept_the_tenant_may_be_paying_it(world):
    row = world.db.add_payment(123, "2026-12", token="t0", url="https://pay.test/checkout/t0",
                               created_at=NOW - timedelta(hours=3))
    reply = start()
    assert not reply.created and reply.payment["id"] == row["id"]


def test_a_row_declared_abandoned_while_we_made_its_invoice_never_shows_that_invoice(world):
    def meanwhile():  # another request, after our lock expired, failed our row and reserved again
        for row in world.db.rows(period="2026-12", status="pending"):
            row["status"] = "failed"
    world.paydunya.during_create = meanwhile
    with pytest.raises(PaymentInProgress):
        start()
    rows = world.db.rows(period="2026-12")
    assert [(r["status"], r["checkout_url"]) for r in rows] == [("failed", None)]


def test_a_database_failure_after_the_invoice_leaves_a_row_that_is_abandoned_later(world):
    world.db.broken["/rental_payments"] = httpx.ConnectError("down")
    with pytest.raises(DatabaseUnavailable):
        start()
    del world.db.broken["/rental_payments"]
    assert [r["status"] for r in world.db.rows(period="2026-12")] == ["pending"]
    world.clock.now = NOW + timedelta(seconds=31)
    assert start().created
    assert [r["status"] for r in world.db.rows(period="2026-12")] == ["failed", "pending"]


def test_a_missing_paydunya_setting_fails_before_any_row_exists(world, monkeypatch):
    monkeypatch.delenv("PAYDUNYA_TOKEN")
    with pytest.raises(ConfigurationError):
        start()
    assert world.db.calls == []


def test_redis_down_the_database_fence_still_gives_one_invoice(world):
    world.redis.down = httpx.ConnectError("redis down")
    first = start()
    second = start()
    assert (first.created, second.created) == (True, False)
    assert second.payment == first.payment
    assert len(world.paydunya.invoices) == 1


def test_redis_down_the_breaker_skips_the_lock_after_the_first_failure(world):
    world.redis.down = httpx.ConnectError("redis down")
    start()
    assert not upstash.breaker.allow()
    calls = len(world.router.calls)
    start(period="2027-01")
    upstash_calls = [c for c in world.router.calls[calls:] if c.request.url.host == "upstash.test"]
    assert upstash_calls == []


def test_a_lock_that_expired_while_we_worked_does_not_lose_the_answer(world, caplog):
    world.paydunya.during_create = lambda: world.redis.redis.set(world.lock_key(), "next-holder")
    assert start().created
    assert world.redis.redis.get(world.lock_key()) == b"next-holder"  # never deleted the other's lock
    assert "no longer owned" in caplog.text



# == listing ===================================================================================


def listing(who, lease_id=123):
    ctx = context.begin()
    return payments.list_for(who, lease_id), ctx.cache_status


def test_tenant_and_owner_read_the_leases_payments_newest_first(world):
    reply = start()
    rows, status = listing(MOUSSA_U)
    assert status == "MISS"
    assert [r["period"] for r in rows] == ["2026-12", "2026-10", "2026-09"]
    assert rows[0]["id"] == reply.payment["id"] and rows[0]["checkout_url"]
    assert "provider_token" not in rows[0]
    same, status = listing(AWA_U)
    assert (same, status) == (rows, "HIT")


@pytest.mark.parametrize("who, lease_id", [(FATOU_U, 123), (MOUSSA_U, 999), (IBRAHIMA, 123)])
def test_anyone_else_is_403_whether_or_not_the_lease_exists(world, who, lease_id):
    who = user(who) if isinstance(who, str) else who
    with pytest.raises(NotYourLease):
        listing(who, lease_id)


def test_the_parties_are_checked_before_the_payments_entry_is_read(world):
    listing(MOUSSA_U)  # fills dousell:payments:lease:123
    world.redis.calls.clear()
    with pytest.raises(NotYourLease):
        listing(FATOU_U)
    touched = json.dumps(world.redis.calls)
    assert "dousell:meta:lease:123" in touched
    assert keys.payments(123).key not in touched


def test_a_hit_costs_no_database_query_and_two_upstash_calls(world):
    listing(MOUSSA_U)
    world.db.calls.clear()
    world.redis.calls.clear()
    assert listing(MOUSSA_U)[1] == "HIT"
    assert world.db.calls == []
    assert len(world.redis.calls) == 2  # the parties, then the payments


def test_a_new_payment_shows_at_once_in_the_cached_list(world):
    listing(MOUSSA_U)
    start()
    rows, status = listing(AWA_U)
    assert status == "MISS" and rows[0]["period"] == "2026-12"


def test_payments_made_at_the_same_instant_are_listed_newest_id_first(world):
    at = NOW - timedelta(days=1)
    first = world.db.add_payment(123, "2026-11", status="failed", created_at=at)
    second = world.db.add_payment(123, "2026-11", status="failed", created_at=at)
    rows, _ = listing(MOUSSA_U)
    assert [row["id"] for row in rows[:2]] == [second["id"], first["id"]]


def test_the_list_shows_the_two_hundred_newest_payments(world):
    for hours in range(1, 202):
        world.db.add_payment(123, "2026-11", status="failed", created_at=NOW - timedelta(hours=hours))
    rows, _ = listing(MOUSSA_U)
    assert len(rows) == 200 and rows[-1]["created_at"] == (NOW - timedelta(hours=200)).isoformat()


def test_the_list_is_read_with_the_users_token(world):
    listing(AWA_U)
    assert ("GET", "/rental_payments", "authenticated") in world.db.calls


# == the IPN ===================================================================================


def pending_invoice(world, period="2026-12") -> tuple[str, int]:
    payment = start(period=period).payment
    return world.db.payments[payment["id"]]["provider_token"], payment["id"]


def ipn(world, body: bytes, content_type="application/x-www-form-urlencoded"):
    context.begin()
    return settle.receive_ipn(body, content_type)


def test_a_genuine_ipn_completes_the_payment_and_notifies_both_parties(world):
    token, pid = pending_invoice(world)
    world.paydunya.invoices[token]["status"] = "completed"
    listing(MOUSSA_U)
    versions = {t: world.tag_version(t) for t in
                ("payments:lease:123", f"dashboard:{AWA}", f"notifications:{MOUSSA}", f"notifications:{AWA}")}
    assert ipn(world, world.paydunya.ipn(token)) == {"received": True, "status": "completed"}
    assert world.db.payments[pid]["status"] == "completed"
    assert [(n["user_id"], n["kind"]) for n in world.db.notifications] == [(MOUSSA, "payment_completed"),
                                                                           (AWA, "rent_received")]
    for tag, version in versions.items():
        assert world.tag_version(tag) != version, tag
    rows, status = listing(MOUSSA_U)
    assert status == "MISS" and rows[0]["status"] == "completed"


def test_a_replayed_ipn_changes_nothing(world):
    token, pid = pending_invoice(world)
    world.paydunya.invoices[token]["status"] = "completed"
    ipn(world, world.paydunya.ipn(token))
    version = world.tag_version("payments:lease:123")
    assert ipn(world, world.paydunya.ipn(token)) == {"received": True, "status": "completed"}
    assert len(world.db.notifications) == 2
    assert world.tag_version("payments:lease:123") == version


@pytest.mark.parametrize("forged", ["0" * 128, hashlib.sha512(b"guess").hexdigest(), ""])
def test_a_forged_ipn_is_403_and_asks_nobody_anything(world, forged):
    token, pid = pending_invoice(world)
    world.paydunya.invoices[token]["status"] = "completed"
    with pytest.raises(InvalidSignature):
        ipn(world, world.paydunya.ipn(token, hash=forged))
    assert world.paydunya.confirm_calls == 0
    assert world.db.count("POST", "/rpc/confirm_payment") == 0
    assert world.db.payments[pid]["status"] == "pending"


def test_an_ipn_without_a_hash_is_403(world):
    with pytest.raises(InvalidSignature):
        ipn(world, b"data[invoice][token]=x&data[status]=completed")


def test_the_ipn_status_is_not_believed_only_paydunyas_confirmation(world, caplog):
    caplog.set_level(logging.INFO, logger=settle.__name__)
    token, pid = pending_invoice(world)  # still pending at PayDunya
    assert ipn(world, world.paydunya.ipn(token, status="completed")) == {"received": True, "status": "pending"}
    assert world.db.payments[pid]["status"] == "pending"
    assert world.db.notifications == []
    assert f"IPN for {token} says completed, PayDunya says pending: applying PayDunya's" in caplog.messages


def test_an_ipn_whose_status_agrees_with_paydunya_logs_no_disagreement(world, caplog):
    caplog.set_level(logging.INFO, logger=settle.__name__)
    token, _ = pending_invoice(world)
    world.paydunya.invoices[token]["status"] = "completed"
    ipn(world, world.paydunya.ipn(token))
    assert not any("PayDunya says" in m for m in caplog.messages)


@pytest.mark.parametrize("claimed", [
    100,  # less than PayDunya's
    "more",  # more
    "",  # a blank amount is not PayDunya's either
])
def test_an_ipn_whose_amount_differs_from_the_confirmation_changes_nothing(world, claimed):
    token, pid = pending_invoice(world)
    world.paydunya.invoices[token]["status"] = "completed"
    if claimed == "more":
        claimed = world.paydunya.invoices[token]["total_amount"] + 1
    with pytest.raises(AmountMismatch) as info:
        ipn(world, world.paydunya.ipn(token, amount=claimed))
    assert (info.value.status, info.value.code) == (409, "amount_mismatch")
    assert world.db.count("POST", "/rpc/confirm_payment") == 0
    assert world.db.payments[pid]["status"] == "pending"


def test_a_confirmed_amount_that_is_not_the_rent_is_put_under_review_never_left_pending(world, caplog):
    # Money was received, just not the rent: refusing it left the row pending for ever.
    token, pid = pending_invoice(world)
    world.paydunya.invoices[token].update(status="completed", total_amount=100)
    assert ipn(world, world.paydunya.ipn(token))["status"] == "needs_review"
    row = world.db.payments[pid]
    assert (row["status"], row["review_reason"]) == ("needs_review", "amount_mismatch")
    assert [n["kind"] for n in world.db.notifications] == ["payment_needs_review"] * 2
    assert any(r.levelname == "ERROR" and "amount_mismatch" in r.getMessage() for r in caplog.records)


def test_a_cancelled_checkout_is_recorded_without_notifications(world):
    token, pid = pending_invoice(world)
    world.paydunya.invoices[token]["status"] = "cancelled"
    assert ipn(world, world.paydunya.ipn(token))["status"] == "cancelled"
    assert world.db.payments[pid]["status"] == "cancelled" and world.db.notifications == []


def test_an_invoice_paydunya_knows_but_we_do_not_is_404(world):
    world.paydunya.invoices["orphan"] = {"token": "orphan", "status": "completed", "total_amount": 50_000,
                                         "description": "x", "custom_data": {}}
    with pytest.raises(NotFound):
        ipn(world, world.paydunya.ipn("orphan"))


def test_an_invoice_paydunya_does_not_know_is_a_provider_error(world):
    body = urlencode({"data[hash]": IPN_HASH, "data[invoice][token]": "nope", "data[status]": "completed"}).encode()
    with pytest.raises(PaymentProviderError):
        ipn(world, body)


def test_paydunya_down_at_confirmation_is_502_and_changes_nothing(world):
    token, pid = pending_invoice(world)
    world.paydunya.invoices[token]["status"] = "completed"
    world.paydunya.confirm_failure = httpx.ConnectTimeout("slow")
    with pytest.raises(PaymentProviderError):
        ipn(world, world.paydunya.ipn(token))
    assert world.db.payments[pid]["status"] == "pending"


def test_a_second_completed_invoice_for_a_paid_month_is_put_under_review_and_logged(world, caplog):
    token, pid = pending_invoice(world)
    world.paydunya.invoices[token]["status"] = "completed"
    world.db.add_payment(123, "2026-12", status="completed")
    assert ipn(world, world.paydunya.ipn(token)) == {"received": True, "status": "needs_review"}
    assert world.db.payments[pid]["review_reason"] == "month_already_paid"
    assert [r.levelname for r in caplog.records if "needs_review" in r.getMessage()] == ["ERROR"]


@pytest.mark.parametrize("first", ["failed", "cancelled"])
def test_money_received_for_a_failed_or_cancelled_payment_is_never_dropped(world, caplog, first):
    token, pid = pending_invoice(world)
    world.db.payments[pid]["status"] = first
    world.paydunya.invoices[token]["status"] = "completed"
    listing(MOUSSA_U)
    versions = {t: world.tag_version(t) for t in
                ("payments:lease:123", f"dashboard:{AWA}", f"notifications:{MOUSSA}", f"notifications:{AWA}")}
    assert ipn(world, world.paydunya.ipn(token)) == {"received": True, "status": "needs_review"}
    assert [(n["user_id"], n["kind"]) for n in world.db.notifications] == [(MOUSSA, "payment_needs_review"),
                                                                           (AWA, "payment_needs_review")]
    assert any(r.levelname == "ERROR" and f"payment {pid}" in r.getMessage() for r in caplog.records)
    for tag, version in versions.items():
        assert world.tag_version(tag) != version, tag
    rows, _ = listing(MOUSSA_U)
    assert (rows[0]["status"], rows[0]["review_reason"]) == ("needs_review", f"paid_after_{first}")


def test_with_fees_on_the_customer_the_rent_is_compared_without_them(world):
    token, pid = pending_invoice(world)
    # PayDunya's confirm with the fees on the customer: total_amount includes them (strings, as it sends them).
    world.paydunya.invoices[token].update(status="completed", total_amount="51500",
                                          total_amount_without_fees="50000", pal_is_on="1")
    assert ipn(world, world.paydunya.ipn(token)) == {"received": True, "status": "completed"}
    assert world.db.payments[pid]["status"] == "completed"


def test_without_fees_that_are_not_the_rent_the_payment_is_under_review(world):
    token, pid = pending_invoice(world)
    world.paydunya.invoices[token].update(status="completed", total_amount="50000", total_amount_without_fees="48500")
    assert ipn(world, world.paydunya.ipn(token))["status"] == "needs_review"
    assert world.db.payments[pid]["review_reason"] == "amount_mismatch"


@pytest.mark.parametrize("body, content_type", [
    (b"\xff\xfe", None),  # not UTF-8
    (b"data[hash]", None),  # not key=value
    (b"data[hash]=a&data[hash]=b", None),  # a repeated field
    (b'{"data": {}}', "application/json"),  # PayDunya posts a form
])
def test_a_malformed_ipn_is_400(world, body, content_type):
    with pytest.raises(BadRequest):
        ipn(world, body, content_type)


def test_an_ipn_with_a_good_hash_but_no_token_is_400(world):
    with pytest.raises(BadRequest):
        ipn(world, urlencode({"data[hash]": IPN_HASH}).encode())


def test_a_repeated_ipn_field_is_named_in_the_400_up_to_40_characters(world):
    name = "data[custom_data][" + "x" * 40 + "]"
    with pytest.raises(BadRequest) as info:
        ipn(world, urlencode([(name, "a"), (name, "b")]).encode())
    assert info.value.message == f"Champ répété : {name[:40]}."


def test_an_ipn_of_more_than_500_fields_is_400_unread(world):
    token, pid = pending_invoice(world)
    world.paydunya.invoices[token]["status"] = "completed"
    body = world.paydunya.ipn(token)

    def padded(fields):
        return body + b"".join(b"&data[x%d]=1" % i for i in range(fields - body.count(b"&") - 1))

    with pytest.raises(BadRequest):
        ipn(world, padded(501))
    assert world.paydunya.confirm_calls == 0
    assert ipn(world, padded(500)) == {"received": True, "status": "completed"}


def test_an_ipn_token_longer_than_200_characters_is_400_without_asking_paydunya(world):
    def form(token):
        return urlencode({"data[hash]": IPN_HASH, "data[invoice][token]": token}).encode()

    with pytest.raises(BadRequest):
        ipn(world, form("t" * 201))
    assert world.paydunya.confirm_calls == 0
    with pytest.raises(PaymentProviderError):  # 200 may be a token: PayDunya is asked, and knows none such
        ipn(world, form("t" * 200))
    assert world.paydunya.confirm_calls == 1
