"""lib/domain/settle: a lost IPN settled by the cron or by the tenant's own read; money for a dead row put under review.

Faked at the network boundary (tests/world.py): PostgREST by FakeSupabase (its RPCs mirror
supabase/migrations/20261202000040_money_and_visits.sql), PayDunya by FakePayDunya, Upstash by FakeUpstash over a
real Valkey. tests/sql/test_rpc_payments.py checks the same RPCs on a real PostgreSQL.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import httpx
import pytest

from lib import context, keys
from lib.domain import payments, settle
from lib.errors import ConfigurationError, PaymentProviderError
from tests.world import AWA, MOUSSA, user

MOUSSA_U = user(MOUSSA)


def invoice(world, period="2026-12", minutes_old=11, paid=True) -> tuple[str, int]:
    """A pending payment with its PayDunya invoice, made `minutes_old` ago; paid at PayDunya or not."""
    context.begin()
    now = world.clock.now
    world.clock.now = now - timedelta(minutes=minutes_old)
    try:
        payment = payments.start(MOUSSA_U, 123, period).payment
    finally:
        world.clock.now = now
    token = world.db.payments[payment["id"]]["provider_token"]
    if paid:
        world.paydunya.invoices[token]["status"] = "completed"
    return token, payment["id"]


def pid_in(message: str, pid: int) -> bool:
    return f"payment {pid}" in message


def listing():
    context.begin()
    return payments.list_for(MOUSSA_U, 123)


# -- the cron ------------------------------------------------------------------------------------


def test_a_payment_whose_ipn_was_lost_is_completed_by_the_next_cron_run(world, caplog):
    caplog.set_level(logging.INFO, logger=settle.__name__)
    _, pid = invoice(world)
    versions = {t: world.tag_version(t) for t in ("payments:lease:123", f"dashboard:{AWA}", f"notifications:{MOUSSA}")}
    counts = settle.reconcile()
    assert counts == {"due": 1, "checked": 1, "changed": 1, "needs_review": 0, "expired": 0, "errors": 0, "left": 0}
    assert world.db.payments[pid]["status"] == "completed"
    assert [n["kind"] for n in world.db.notifications] == ["payment_completed", "rent_received"]
    for tag, version in versions.items():
        assert world.tag_version(tag) != version, tag
    assert f"reconcile: payment {pid} is now completed (its IPN never came)" in caplog.messages


def test_a_payment_younger_than_ten_minutes_waits_for_its_ipn(world):
    invoice(world, minutes_old=9)
    assert settle.reconcile()["due"] == 0
    assert world.paydunya.confirm_calls == 0


def test_an_invoice_still_unpaid_stays_pending_and_is_asked_again_a_minute_later(world):
    _, pid = invoice(world, paid=False)
    assert settle.reconcile() == {"due": 1, "checked": 1, "changed": 0, "needs_review": 0, "expired": 0, "errors": 0, "left": 0}
    assert settle.reconcile()["due"] == 0  # checked just now
    world.clock.now += timedelta(seconds=61)
    assert settle.reconcile()["checked"] == 1
    assert world.db.payments[pid]["status"] == "pending"
    assert world.paydunya.confirm_calls == 2


def test_a_run_asks_the_database_for_twenty_invoices_due_for_ten_minutes(world, monkeypatch):
    asked = []
    original = world.db.payments_to_reconcile
    monkeypatch.setattr(world.db, "payments_to_reconcile", lambda **args: asked.append(args) or original(**args))
    settle.reconcile()
    assert asked == [{"p_limit": 20, "p_min_age": "600 seconds"}]


def test_a_run_checks_a_bounded_batch_and_counts_the_rest(world, monkeypatch):
    monkeypatch.setattr(settle, "BATCH", 3)
    for month in range(1, 6):
        invoice(world, period=f"2027-{month:02d}", paid=False)
    assert settle.reconcile() | {"checked": None} == {"due": 5, "checked": None, "changed": 0, "needs_review": 0,
                                                      "expired": 0, "errors": 0, "left": 2}
    assert settle.reconcile()["checked"] == 2  # the two left over, the next run


def test_a_run_stops_at_its_time_budget_and_leaves_the_rest_for_the_next(world, monkeypatch):
    for month in range(1, 4):
        invoice(world, period=f"2027-{month:02d}")
    ticks = iter([0.0, 0.0, settle.CRON_BUDGET])  # the start, the first payment, then the budget is spent
    monkeypatch.setattr(settle, "monotonic", lambda: next(ticks, settle.CRON_BUDGET))
    counts = settle.reconcile()
    assert (counts["checked"], counts["changed"], counts["left"]) == (1, 1, 2)


def test_a_payment_is_checked_while_more_than_half_a_second_of_the_twenty_is_left(world, monkeypatch):
    for month in range(1, 5):
        invoice(world, period=f"2027-{month:02d}")
    ticks = iter([0.0, 19.0, 19.5])  # the start; 1 s left: checked; 0.5 s left: not
    monkeypatch.setattr(settle, "monotonic", lambda: next(ticks, 20.0))
    seen = []
    original = settle.paydunya.confirm
    monkeypatch.setattr(settle.paydunya, "confirm", lambda token, timeout: seen.append(timeout)
                        or original(token, timeout=timeout))
    counts = settle.reconcile()
    assert (counts["checked"], counts["left"]) == (1, 3)
    assert seen == [pytest.approx(1.0)]  # the call is bounded by what is left of the budget


def test_paydunya_down_fails_the_job_and_changes_nothing(world, caplog):
    _, pid = invoice(world)
    world.paydunya.confirm_failure = httpx.ConnectTimeout("slow")
    with pytest.raises(PaymentProviderError):
        settle.reconcile()
    assert world.db.payments[pid]["status"] == "pending"
    assert f"reconcile: payment {pid} not settled (payment_provider_error timeout: ConnectTimeout)" in caplog.messages


def test_one_failure_among_successes_is_counted_not_fatal(world):
    token, _ = invoice(world, period="2027-01")
    invoice(world, period="2027-02")
    del world.paydunya.invoices[token]  # PayDunya answers "Invoice not found" for this one
    counts = settle.reconcile()
    assert (counts["checked"], counts["changed"], counts["errors"]) == (1, 1, 1)


@pytest.mark.parametrize("dead", ["failed", "cancelled"])
def test_a_paid_invoice_of_a_dead_row_is_put_under_review_and_logged_as_an_error(world, caplog, dead):
    token, pid = invoice(world)
    world.db.payments[pid]["status"] = dead
    verdict = {"status": "completed", "total_amount": 50_000, "rent_amount": 50_000}
    result = settle.apply(token, verdict)
    assert (result["changed"], result["review"], result["payment"]["status"]) == (True, True, "needs_review")
    assert any(r.levelname == "ERROR" for r in caplog.records)


@pytest.mark.parametrize("dead", ["failed", "cancelled"])
def test_money_paid_on_a_dead_row_whose_ipn_was_lost_is_found_by_the_cron(world, caplog, dead):
    # The attack on the old cron: it asked only about pending rows, so this money was never seen.
    caplog.set_level(logging.INFO, logger=settle.__name__)
    token, pid = invoice(world, paid=False)
    world.paydunya.invoices[token]["status"] = dead
    counts = settle.reconcile()
    assert (counts["changed"], counts["expired"], counts["needs_review"]) == (1, 0, 0)
    assert f"reconcile: payment {pid} is now {dead} (its IPN never came)" in caplog.messages
    assert world.db.payments[pid]["status"] == dead
    world.paydunya.invoices[token]["status"] = "completed"  # paid after all; the IPN is lost
    world.clock.now += timedelta(minutes=31)
    counts = settle.reconcile()
    assert (counts["changed"], counts["needs_review"]) == (1, 1)
    row = world.db.payments[pid]
    assert (row["status"], row["review_reason"]) == ("needs_review", f"paid_after_{dead}")


def test_a_dead_row_is_asked_about_every_half_hour_for_a_week_only(world):
    token, pid = invoice(world, paid=False)
    world.paydunya.invoices[token]["status"] = "cancelled"
    settle.reconcile()
    calls = world.paydunya.confirm_calls
    world.clock.now += timedelta(minutes=20)
    assert settle.reconcile()["due"] == 0
    world.clock.now += timedelta(days=7)
    assert settle.reconcile()["due"] == 0
    assert world.paydunya.confirm_calls == calls


def test_an_invoice_paydunya_keeps_calling_pending_expires_after_seven_days_and_checks_stop(world, caplog):
    caplog.set_level(logging.INFO, logger=settle.__name__)
    token, pid = invoice(world, paid=False)
    assert settle.reconcile()["expired"] == 0
    world.clock.now += timedelta(days=7)
    counts = settle.reconcile()
    assert (counts["checked"], counts["changed"], counts["expired"], counts["needs_review"]) == (1, 1, 1, 0)
    assert world.db.payments[pid]["status"] == "expired"
    assert [m for m in caplog.messages if pid_in(m, pid)] == [
        f"payment {pid}: invoice {token} never settled within its life; expired, checks stop"]
    calls = world.paydunya.confirm_calls
    for _ in range(3):
        world.clock.now += timedelta(hours=1)
        assert settle.reconcile()["due"] == 0
    assert world.paydunya.confirm_calls == calls


def test_paydunyas_own_expire_date_ends_the_invoices_life(world):
    token, pid = invoice(world, paid=False)
    world.paydunya.invoices[token]["expire_date"] = (world.clock.now + timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")
    settle.reconcile()
    assert world.db.payments[pid]["status"] == "pending"
    world.clock.now += timedelta(hours=2)
    assert settle.reconcile()["expired"] == 1
    assert world.db.payments[pid]["status"] == "expired"


def test_an_expired_invoice_paid_after_all_is_put_under_review(world):
    token, pid = invoice(world, paid=False)
    world.clock.now += timedelta(days=8)
    settle.reconcile()
    world.paydunya.invoices[token]["status"] = "completed"
    result = settle.apply(token, settle.paydunya.confirm(token))
    assert (result["payment"]["status"], result["payment"]["review_reason"]) == ("needs_review", "paid_after_expired")


def test_an_unknown_paydunya_status_is_not_settled_and_never_fails_the_run(world):
    token, pid = invoice(world, paid=False)
    world.paydunya.invoices[token]["status"] = "refunded"
    counts = settle.reconcile()  # the old code raised PaymentProviderError (502) on every run
    assert (counts["checked"], counts["changed"], counts["errors"]) == (1, 0, 0)
    assert world.db.payments[pid]["status"] == "pending"


def test_the_cron_in_production_without_paydunya_mode_stops_before_stamping_anything(world, monkeypatch):
    invoice(world, paid=True)
    monkeypatch.setenv("VERCEL", "1")
    monkeypatch.setenv("VERCEL_ENV", "production")
    monkeypatch.delenv("PAYDUNYA_MODE", raising=False)
    calls = world.paydunya.confirm_calls
    with pytest.raises(ConfigurationError, match="PAYDUNYA_MODE"):
        settle.reconcile()
    assert world.db.checked == {} and world.paydunya.confirm_calls == calls


# -- the tenant's read ---------------------------------------------------------------------------


def test_a_tenant_reading_an_overdue_payment_sees_it_paid_with_one_paydunya_call(world):
    _, pid = invoice(world)
    rows = listing()
    assert rows[0]["id"] == pid and rows[0]["status"] == "completed"
    assert world.paydunya.confirm_calls == 1
    assert 0 < world.redis.redis.ttl(keys.payment_recheck(pid)) <= 60
    assert ["SET", keys.payment_recheck(pid), "1", "NX", "EX", 60] in world.redis.calls  # the minute


def test_a_payment_is_re_checked_at_most_once_a_minute_whoever_reads(world):
    invoice(world, paid=False)
    listing()
    listing()
    context.begin()
    payments.list_for(user(AWA), 123)  # the owner too
    assert world.paydunya.confirm_calls == 1


def test_a_young_pending_payment_is_not_re_checked(world):
    invoice(world, minutes_old=2)
    assert listing()[0]["status"] == "pending"
    assert world.paydunya.confirm_calls == 0


def test_redis_down_the_read_does_not_re_check(world):
    invoice(world)
    world.redis.down = httpx.ConnectError("down")
    assert listing()[0]["status"] == "pending"
    assert world.paydunya.confirm_calls == 0


def test_paydunya_failing_leaves_the_list_as_it_is(world):
    _, pid = invoice(world)
    world.paydunya.confirm_failure = httpx.ReadTimeout("slow")
    assert listing()[0]["status"] == "pending"
    assert world.db.payments[pid]["status"] == "pending"


def test_the_re_check_is_bounded_in_time(world, monkeypatch):
    invoice(world)
    seen = {}
    original = settle.paydunya.confirm
    monkeypatch.setattr(settle.paydunya, "confirm", lambda token, timeout: seen.setdefault("t", timeout)
                        and original(token, timeout=timeout))
    listing()
    assert seen["t"] == 3.0 < settle.paydunya.TOTAL_TIMEOUT


# -- the pieces: an invoice's life, what is overdue, one re-check --------------------------------


@pytest.mark.parametrize("expire_date, life", [
    (None, timedelta(days=7)),  # PayDunya sent none: INVOICE_LIFE
    (timedelta(hours=5), timedelta(hours=5)),  # PayDunya's own
    (timedelta(days=40), timedelta(days=30)),  # never past INVOICE_LIFE_MAX, whatever PayDunya says
])
def test_an_invoice_is_expired_from_the_end_of_its_life_on_not_a_second_before(world, expire_date, life):
    created = world.clock.now
    verdict = {"status": "pending", "expire_date": created + expire_date if expire_date else None}
    world.clock.now = created + life - timedelta(seconds=1)
    assert settle.expired(created.isoformat(), verdict) is False
    world.clock.now = created + life
    assert settle.expired(created.isoformat(), verdict) is True


def test_a_creation_time_without_a_zone_is_utc(world):
    created = world.clock.now - timedelta(days=7)
    naive = created.replace(tzinfo=None).isoformat()
    assert settle.expired(naive, {"expire_date": None}) is True
    world.clock.now -= timedelta(seconds=1)
    assert settle.expired(naive, {"expire_date": None}) is False


@pytest.mark.parametrize("created_at", [None, "", "not a date"])
def test_a_row_without_a_readable_creation_time_is_neither_expired_nor_overdue(world, created_at):
    assert settle.expired(created_at, {"expire_date": None}) is False
    row = {"id": 1, "status": "pending", "checkout_url": "https://pay.test/x", "created_at": created_at}
    assert settle.overdue([row]) == []


def test_only_pending_rows_with_an_invoice_older_than_ten_minutes_are_overdue_oldest_first(world):
    def ago(minutes):
        return (world.clock.now - timedelta(minutes=minutes)).isoformat()

    rows = [
        {"id": 1, "status": "completed", "checkout_url": "u", "created_at": ago(50)},
        {"id": 2, "status": "pending", "checkout_url": None, "created_at": ago(50)},  # its invoice is being made
        {"id": 3, "status": "pending", "checkout_url": "u", "created_at": ago(30)},
        {"id": 4, "status": "pending", "checkout_url": "u", "created_at": ago(40)},
        {"id": 5, "status": "pending", "checkout_url": "u", "created_at": ago(10)},  # exactly RECONCILE_AFTER
        {"id": 6, "status": "needs_review", "checkout_url": "u", "created_at": ago(50)},
    ]
    assert [row["id"] for row in settle.overdue(rows)] == [4, 3]


def test_a_re_check_says_whether_the_payment_changed(world):
    _, pid = invoice(world)
    context.begin()
    assert settle.recheck([dict(world.db.payments[pid])]) is True
    assert world.db.payments[pid]["status"] == "completed"


def test_a_re_check_of_a_row_settled_since_the_list_was_read_asks_paydunya_nothing(world):
    _, pid = invoice(world)
    row = dict(world.db.payments[pid])
    world.db.payments[pid]["status"] = "completed"  # its IPN came in the meantime
    context.begin()
    assert settle.recheck([row]) is False
    assert world.paydunya.confirm_calls == 0


def test_a_re_check_while_redis_fails_is_no_change_and_asks_paydunya_nothing(world):
    _, pid = invoice(world)
    world.redis.down = httpx.ConnectError("down")
    context.begin()
    assert settle.recheck([dict(world.db.payments[pid])]) is False
    assert world.paydunya.confirm_calls == 0


def test_a_re_check_paydunya_fails_is_no_change_and_logged_with_its_reason(world, caplog):
    _, pid = invoice(world)
    world.paydunya.confirm_failure = httpx.ReadTimeout("slow")
    context.begin()
    assert settle.recheck([dict(world.db.payments[pid])]) is False
    assert world.paydunya.confirm_calls == 1
    assert f"re-check of payment {pid} failed (payment_provider_error timeout: ReadTimeout); the cron will retry" \
        in caplog.messages


def test_a_verdict_without_a_whole_amount_is_applied_and_logged(world, caplog):
    token, pid = invoice(world)
    context.begin()
    settle.apply(token, {"status": "completed", "total_amount": 50_000, "rent_amount": 50_000})
    assert not any("not a whole number" in m for m in caplog.messages)
    token, pid = invoice(world, period="2027-01")
    context.begin()
    result = settle.apply(token, {"status": "completed", "total_amount": None, "rent_amount": None})
    assert result["payment"]["status"] == "needs_review"  # the database calls it an amount mismatch
    assert f"invoice {token}: PayDunya's amount is not a whole number of XOF" in caplog.messages


@pytest.mark.parametrize("said", ["pending", "failed", "cancelled", "expired"])
def test_a_dead_row_is_written_only_when_paydunya_says_completed(world, said):
    token, pid = invoice(world, paid=False)
    world.db.payments[pid]["status"] = "failed"
    row = {"status": "failed", "provider_token": token, "created_at": world.db.payments[pid]["created_at"]}
    assert settle.settle_row(row, {"status": said, "expire_date": None}) is None
    assert world.db.payments[pid]["status"] == "failed"


def test_a_read_re_checks_the_oldest_overdue_payment_nobody_checked_this_minute(world):
    ids = [invoice(world, period=f"2027-{m:02d}", minutes_old=60 - m)[1] for m in range(1, 5)]  # oldest first
    for i in ids[:2]:
        world.redis.redis.set(keys.payment_recheck(i), "1", ex=60)  # other reads checked these two
    context.begin()
    assert settle.recheck([dict(world.db.payments[i]) for i in ids]) is True
    assert [world.db.payments[i]["status"] for i in ids] == ["pending", "pending", "completed", "pending"]


def test_a_read_tries_the_three_oldest_overdue_payments_at_most(world):
    ids = [invoice(world, period=f"2027-{m:02d}", minutes_old=60 - m)[1] for m in range(1, 5)]
    for i in ids[:3]:
        world.redis.redis.set(keys.payment_recheck(i), "1", ex=60)
    context.begin()
    assert settle.recheck([dict(world.db.payments[i]) for i in ids]) is False
    assert world.paydunya.confirm_calls == 0
