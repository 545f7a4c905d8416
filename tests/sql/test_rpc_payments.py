"""reserve_payment and confirm_payment: every branch, idempotence, and races."""

from __future__ import annotations

import pytest
from psycopg import errors

from tests.sql.demo import AWA, FATOU, IBRAHIMA, LEASE_123, LEASE_124, MOUSSA, RENT_123
from tests.sql.helpers import in_thread, race, raised_code, wait_until_blocked

RESERVE = "select reserve_payment(%s, %s, %s)"
CONFIRM = "select confirm_payment(%s, %s, %s)"


def reserve(conn, act_as, lease_id=LEASE_123, tenant=MOUSSA, period="2030-01"):
    with act_as(conn, "service_role"):
        return conn.execute(RESERVE, (lease_id, tenant, period)).fetchone()[0]


def confirm(conn, act_as, token, status="completed", amount=RENT_123):
    with act_as(conn, "service_role"):
        return conn.execute(CONFIRM, (token, status, amount)).fetchone()[0]


def rpc_error(call) -> str | None:
    """Run `call()`, expecting an RPC error; return its code."""
    with pytest.raises(errors.RaiseException) as info:
        call()
    assert info.value.sqlstate == "P0001"  # PostgREST turns it into a 400 with the code as message
    return raised_code(info.value)


@pytest.fixture
def pending(api, act_as, admin):
    """A pending payment for lease 123, 2030-01, with a PayDunya token as lib would store it."""
    payment = reserve(api, act_as)["payment"]
    admin.execute("update rental_payments set provider_token = 'tok-1', checkout_url = 'https://pay/tok-1' where id = %s", (payment["id"],))
    return payment


def notifications(admin):
    return admin.execute("select user_id::text, kind, title, body, data from notifications where created_at > now() - interval '1 minute' order by user_id").fetchall()


# -- reserve_payment ------------------------------------------------------------------------


def test_reserving_creates_a_pending_payment_of_one_months_rent(api, act_as):
    result = reserve(api, act_as)
    payment = result["payment"]
    assert result["created"] is True
    assert result["owner_id"] == AWA
    assert {k: payment[k] for k in ("lease_id", "period", "amount", "currency", "status", "provider", "checkout_url", "paid_at")} == {
        "lease_id": LEASE_123,
        "period": "2030-01",
        "amount": RENT_123,
        "currency": "XOF",
        "status": "pending",
        "provider": "paydunya",
        "checkout_url": None,
        "paid_at": None,
    }


def test_reserving_again_returns_the_same_pending_payment(api, act_as, admin):
    first = reserve(api, act_as)
    second = reserve(api, act_as)
    assert second["created"] is False
    assert second["payment"] == first["payment"]
    assert admin.execute("select count(*) from rental_payments where period = '2030-01'").fetchone()[0] == 1


def test_the_current_month_of_the_seeded_lease_is_payable(api, act_as, periods):
    assert reserve(api, act_as, period=periods.current)["created"] is True


@pytest.mark.parametrize(
    "lease_id, tenant, period, code",
    [
        (999, MOUSSA, "2030-01", "lease_not_found"),  # no such lease
        (LEASE_123, FATOU, "2030-01", "not_lease_tenant"),  # someone else's lease
        (LEASE_123, AWA, "2030-01", "not_lease_tenant"),  # even its owner does not pay it
        (LEASE_124, MOUSSA, "2030-01", "lease_not_active"),  # ended lease
        (LEASE_123, MOUSSA, "2030-13", "invalid_period"),  # not a month
        (LEASE_123, MOUSSA, "janvier", "invalid_period"),
        (LEASE_123, MOUSSA, None, "invalid_period"),
    ],
)
def test_reserving_refuses_with_a_stable_code(api, act_as, lease_id, tenant, period, code):
    assert rpc_error(lambda: reserve(api, act_as, lease_id, tenant, period)) == code


def test_reserving_a_pending_lease_is_refused(api, act_as, admin):
    admin.execute("update leases set status = 'pending' where id = %s", (LEASE_123,))
    assert rpc_error(lambda: reserve(api, act_as)) == "lease_not_active"


def test_reserving_a_paid_month_is_refused(api, act_as, admin, periods):
    assert rpc_error(lambda: reserve(api, act_as, period=periods.previous)) == "already_paid"
    assert admin.execute("select count(*) from rental_payments where status = 'pending'").fetchone()[0] == 0


def test_reserving_after_a_failed_attempt_creates_a_new_payment(api, act_as, pending):
    confirm(api, act_as, "tok-1", "failed")
    again = reserve(api, act_as)
    assert again["created"] is True
    assert again["payment"]["id"] != pending["id"]


def test_the_rent_is_the_leases_rent_at_reservation_time(api, act_as, admin):
    admin.execute("update leases set monthly_rent = 65000 where id = %s", (LEASE_123,))
    assert reserve(api, act_as)["payment"]["amount"] == 65000


def test_twenty_concurrent_reservations_make_one_payment(api_conns, act_as, admin):
    conns = api_conns(20)

    def work(conn, _):
        return reserve(conn, act_as)

    results = race(conns, work)
    errors_seen = [r for r in results if isinstance(r, Exception)]
    assert errors_seen == []
    assert len({r["payment"]["id"] for r in results}) == 1
    assert sorted(r["created"] for r in results) == [False] * 19 + [True]
    assert admin.execute("select count(*) from rental_payments where period = '2030-01'").fetchone()[0] == 1


def test_a_reservation_that_loses_to_an_unlocked_writer_answers_the_winners_row(seeded_db, pg_connect, api, act_as, admin):
    # A writer that bypasses the lease lock holds an uncommitted pending row. The RPC's
    # existence check cannot see it, so its insert waits on the unique index, fails when
    # the writer commits, and must answer the writer's row instead of an error.
    rogue = pg_connect(seeded_db.dsn())
    rogue.autocommit = False
    rogue.execute("insert into rental_payments (lease_id, period, amount) values (%s, '2030-01', %s)", (LEASE_123, RENT_123))
    rogue_id = rogue.execute("select max(id) from rental_payments").fetchone()[0]

    pid = api.info.backend_pid
    result = in_thread(lambda: reserve(api, act_as))
    wait_until_blocked(admin, pid)
    rogue.commit()

    answer = result()
    assert not isinstance(answer, Exception), answer
    assert answer["created"] is False
    assert answer["payment"]["id"] == rogue_id


# -- confirm_payment ------------------------------------------------------------------------


def test_confirming_completes_the_payment_and_notifies_tenant_and_owner(api, act_as, admin, pending):
    result = confirm(api, act_as, "tok-1")
    assert result["changed"] is True
    assert (result["tenant_id"], result["owner_id"], result["lease_id"]) == (MOUSSA, AWA, LEASE_123)
    assert result["payment"]["status"] == "completed"
    assert result["payment"]["paid_at"] is not None
    assert result["payment"]["id"] == pending["id"]

    sent = notifications(admin)
    assert [(user, kind, title) for user, kind, title, _, _ in sent] == [
        (AWA, "rent_received", "Loyer reçu"),
        (MOUSSA, "payment_completed", "Paiement reçu"),
    ]
    owner_body, tenant_body = sent[0][3], sent[1][3]
    assert owner_body == "Moussa Diop a payé le loyer de janvier 2030 pour « Appartement chambre-salon à la Médina » : 50 000 FCFA."
    assert tenant_body == "Votre loyer de janvier 2030 pour « Appartement chambre-salon à la Médina » (50 000 FCFA) a bien été payé. Merci !"
    assert sent[0][4] == {"payment_id": pending["id"], "lease_id": LEASE_123, "property_id": 123, "period": "2030-01", "amount": RENT_123, "currency": "XOF"}


def test_french_month_names_elide_before_a_vowel(api, act_as, admin):
    payment = reserve(api, act_as, period="2030-10")["payment"]
    admin.execute("update rental_payments set provider_token = 'tok-oct' where id = %s", (payment["id"],))
    confirm(api, act_as, "tok-oct")
    assert "le loyer d'octobre 2030" in notifications(admin)[0][3]


def test_a_repeated_confirmation_changes_nothing_and_notifies_once(api, act_as, admin, pending):
    first = confirm(api, act_as, "tok-1")
    again = confirm(api, act_as, "tok-1")
    assert again["changed"] is False
    assert again["payment"] == first["payment"]  # paid_at and updated_at untouched
    assert len(notifications(admin)) == 2


@pytest.mark.parametrize("amount", [
    RENT_123 - 1,    # short by one franc
    RENT_123 * 2,    # twice the rent
    0,
    None,            # PayDunya's amount was not a whole number of XOF (lib passes null)
])
def test_money_that_is_not_the_rent_is_put_under_review_never_left_pending(api, act_as, admin, pending, amount):
    # The attack on the old function: it refused the verdict, so the row stayed pending forever
    # while the money sat at PayDunya, and the cron asked again every run.
    result = confirm(api, act_as, "tok-1", "completed", amount)
    assert (result["changed"], result["review"]) == (True, True)
    row = admin.execute("select status, review_reason, paid_at from rental_payments where id = %s",
                        (pending["id"],)).fetchone()
    assert row[:2] == ("needs_review", "amount_mismatch") and row[2] is not None
    sent = notifications(admin)
    assert [(user, kind) for user, kind, *_ in sent] == [(AWA, "payment_needs_review"), (MOUSSA, "payment_needs_review")]
    assert "pas du montant attendu (50 000 FCFA)" in sent[1][3]
    assert sent[0][4]["received"] == amount and sent[0][4]["review_reason"] == "amount_mismatch"
    assert rpc_error(lambda: reserve(api, act_as)) == "already_paid"  # no second invoice for money under review


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_a_verdict_without_money_applies_whatever_amount_comes_with_it(api, act_as, admin, pending, status):
    result = confirm(api, act_as, "tok-1", status, RENT_123 + 1)
    assert (result["changed"], result["payment"]["status"]) == (True, status)
    assert notifications(admin) == []


@pytest.mark.parametrize("token", ["tok-unknown", "", None])
def test_an_unknown_token_is_refused(api, act_as, pending, token):
    assert rpc_error(lambda: confirm(api, act_as, token)) == "payment_not_found"


@pytest.mark.parametrize("status", ["paid", "COMPLETED", "", None])
def test_an_unknown_status_is_refused(api, act_as, pending, status):
    assert rpc_error(lambda: confirm(api, act_as, "tok-1", status)) == "invalid_status"


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_a_failed_or_cancelled_checkout_is_recorded_without_notification(api, act_as, admin, pending, status):
    result = confirm(api, act_as, "tok-1", status)
    assert result["changed"] is True
    assert result["payment"]["status"] == status
    assert result["payment"]["paid_at"] is None
    assert notifications(admin) == []


def test_a_pending_verdict_leaves_the_payment_pending(api, act_as, admin, pending):
    result = confirm(api, act_as, "tok-1", "pending")
    assert result["changed"] is False
    assert result["payment"]["status"] == "pending"
    assert notifications(admin) == []


@pytest.mark.parametrize(
    "first, late",
    [
        ("completed", "cancelled"),  # a late cancel does not undo a payment
        ("completed", "failed"),
        ("failed", "cancelled"),  # final states stay final
        ("cancelled", "failed"),
    ],
)
def test_a_final_state_is_final(api, act_as, admin, pending, first, late):
    confirm(api, act_as, "tok-1", first)
    result = confirm(api, act_as, "tok-1", late)
    assert result["changed"] is False
    assert result["payment"]["status"] == first
    assert len(notifications(admin)) == (2 if first == "completed" else 0)


@pytest.mark.parametrize("first", ["failed", "cancelled", "expired"])
def test_money_received_for_a_failed_or_cancelled_row_is_put_under_review_and_both_parties_are_told(
        api, act_as, admin, pending, first):
    if first == "expired":
        expire(api, act_as, admin, "tok-1", days_old=8)
    else:
        confirm(api, act_as, "tok-1", first)
    result = confirm(api, act_as, "tok-1", "completed")
    assert (result["changed"], result["review"]) == (True, True)
    payment = result["payment"]
    assert (payment["status"], payment["review_reason"]) == ("needs_review", f"paid_after_{first}")
    assert payment["paid_at"] is not None
    sent = notifications(admin)
    assert [(user, kind) for user, kind, *_ in sent] == [(AWA, "payment_needs_review"), (MOUSSA, "payment_needs_review")]
    assert "50 000 FCFA" in sent[1][3] and "janvier 2030" in sent[1][3]
    assert sent[0][4]["review_reason"] == f"paid_after_{first}"


def expire(conn, act_as, admin, token, days_old=None, expire_date=None):
    if days_old is not None:
        admin.execute("update rental_payments set created_at = now() - make_interval(days => %s) where provider_token = %s",
                      (days_old, token))
    with act_as(conn, "service_role"):
        return conn.execute("select expire_payment(%s, %s)", (token, expire_date)).fetchone()[0]


def test_a_review_is_opened_once_however_often_paydunya_says_completed(api, act_as, admin, pending):
    confirm(api, act_as, "tok-1", "failed")
    confirm(api, act_as, "tok-1", "completed")
    again = confirm(api, act_as, "tok-1", "completed")
    assert (again["changed"], again["review"]) == (False, False)
    assert again["payment"]["status"] == "needs_review"
    assert len(notifications(admin)) == 2


def test_a_month_under_review_cannot_be_paid_again(api, act_as, admin, pending):
    confirm(api, act_as, "tok-1", "cancelled")
    confirm(api, act_as, "tok-1", "completed")
    assert rpc_error(lambda: reserve(api, act_as)) == "already_paid"


def test_completing_a_second_attempt_of_a_paid_month_puts_it_under_review(api, act_as, admin, pending):
    # Two invoices of one month paid: only reachable by writing behind the RPCs' back (or an
    # invoice paid after it was abandoned and the month paid again). The money is not dropped.
    admin.execute(
        "insert into rental_payments (lease_id, period, amount, status, paid_at) values (%s, '2030-01', %s, 'completed', now())",
        (LEASE_123, RENT_123),
    )
    result = confirm(api, act_as, "tok-1")
    assert (result["changed"], result["review"]) == (True, True)
    assert admin.execute("select status, review_reason from rental_payments where id = %s",
                         (pending["id"],)).fetchone() == ("needs_review", "month_already_paid")
    assert [kind for _, kind, *_ in notifications(admin)] == ["payment_needs_review"] * 2


def test_concurrent_callbacks_complete_once_and_notify_once(api_conns, act_as, admin, pending):
    results = race(api_conns(10), lambda conn, _: confirm(conn, act_as, "tok-1"))
    assert [r for r in results if isinstance(r, Exception)] == []
    assert sorted(r["changed"] for r in results) == [False] * 9 + [True]
    assert len(notifications(admin)) == 2


def test_a_completed_payment_makes_the_month_paid(api, act_as, pending):
    confirm(api, act_as, "tok-1")
    assert rpc_error(lambda: reserve(api, act_as)) == "already_paid"


def test_payment_rows_carry_who_to_invalidate(api, act_as, admin):
    # lib invalidates payments:lease:{id} and dashboard:owner_{owner_id} from these answers.
    admin.execute(
        "insert into leases (id, property_id, tenant_id, monthly_rent, status, starts_on) values (900, 201, %s, 200000, 'active', '2030-01-01')",
        (FATOU,),
    )
    reserved = reserve(api, act_as, lease_id=900, tenant=FATOU)
    assert reserved["owner_id"] == IBRAHIMA
    admin.execute("update rental_payments set provider_token = 'tok-900' where id = %s", (reserved["payment"]["id"],))
    confirmed = confirm(api, act_as, "tok-900", "completed", 200000)
    assert (confirmed["tenant_id"], confirmed["owner_id"], confirmed["lease_id"]) == (FATOU, IBRAHIMA, 900)


def test_reservations_of_one_lease_queue_up(seeded_db, pg_connect, api, act_as, admin):
    # The lease lock, not only the unique index, orders reservations: a second one waits
    # for the first to commit, whatever month it is for.
    holder = pg_connect(seeded_db.dsn("authenticator"))
    holder.autocommit = False
    holder.execute("select set_config('role', 'service_role', true)")
    holder.execute(RESERVE, (LEASE_123, MOUSSA, "2030-01"))

    pid = api.info.backend_pid
    result = in_thread(lambda: reserve(api, act_as, period="2030-02"))
    wait_until_blocked(admin, pid)
    holder.commit()

    answer = result()
    assert not isinstance(answer, Exception), answer
    assert answer["created"] is True


# -- payments_to_reconcile --------------------------------------------------------------------

DUE = "select payments_to_reconcile(%s)"


def due(conn, act_as, limit=50):
    with act_as(conn, "service_role"):
        return conn.execute(DUE, (limit,)).fetchone()[0]


def pending_invoice(admin, period, minutes_old, token):
    return admin.execute(
        "insert into rental_payments (lease_id, period, amount, status, provider_token, checkout_url, created_at) "
        "values (%s, %s, %s, 'pending', %s, 'https://pay/' || %s, now() - make_interval(mins => %s)) returning id",
        (LEASE_123, period, RENT_123, token, token, minutes_old)).fetchone()[0]


def test_only_invoices_pending_longer_than_ten_minutes_are_due_oldest_first(api, act_as, admin):
    old = pending_invoice(admin, "2030-01", 60, "tok-old")
    older = pending_invoice(admin, "2030-02", 120, "tok-older")
    pending_invoice(admin, "2030-03", 5, "tok-young")  # the IPN may still come
    admin.execute("insert into rental_payments (lease_id, period, amount, status, created_at) "
                  "values (%s, '2030-04', %s, 'pending', now() - interval '1 hour')", (LEASE_123, RENT_123))  # no invoice
    result = due(api, act_as)
    assert result["due"] == 2
    assert [(p["id"], p["provider_token"]) for p in result["batch"]] == [(older, "tok-older"), (old, "tok-old")]


def test_a_checked_invoice_waits_a_minute_then_the_least_recently_checked_goes_first(api, act_as, admin):
    first = pending_invoice(admin, "2030-01", 120, "tok-1")
    assert [p["id"] for p in due(api, act_as, 1)["batch"]] == [first]
    second = pending_invoice(admin, "2030-02", 60, "tok-2")
    assert [p["id"] for p in due(api, act_as)["batch"]] == [second]  # the first was checked just now
    admin.execute("update private.payment_checks set checked_at = now() - interval '3 minutes' where payment_id = %s", (second,))
    admin.execute("update private.payment_checks set checked_at = now() - interval '2 minutes' where payment_id = %s", (first,))
    assert [p["id"] for p in due(api, act_as, 1)["batch"]] == [second]  # older by its last check, not by age
    assert admin.execute("select checks from private.payment_checks where payment_id = %s", (second,)).fetchone()[0] == 2


def test_the_batch_is_bounded_and_reports_how_many_were_due(api, act_as, admin):
    for month in range(1, 8):
        pending_invoice(admin, f"2031-{month:02d}", 30 + month, f"tok-{month}")
    result = due(api, act_as, 3)
    assert (len(result["batch"]), result["due"]) == (3, 7)
    assert due(api, act_as, 10)["due"] == 4  # the three just checked wait their minute


def test_checking_an_invoice_does_not_touch_the_payment_row(api, act_as, admin):
    pid = pending_invoice(admin, "2030-01", 60, "tok-1")
    before = admin.execute("select updated_at from rental_payments where id = %s", (pid,)).fetchone()
    outbox = admin.execute("select count(*) from private.invalidation_outbox").fetchone()[0]
    due(api, act_as)
    assert admin.execute("select updated_at from rental_payments where id = %s", (pid,)).fetchone() == before
    assert admin.execute("select count(*) from private.invalidation_outbox").fetchone()[0] == outbox


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_only_the_server_may_list_the_invoices_to_reconcile(api, act_as, role):
    with pytest.raises(errors.InsufficientPrivilege), act_as(api, role, sub=FATOU):
        api.execute(DUE, (10,))


@pytest.mark.parametrize("limit", [0, -1, 1001, None])
def test_a_batch_size_out_of_range_is_refused(api, act_as, limit):
    assert rpc_error(lambda: due(api, act_as, limit)) == "invalid_limit"


# -- expire_payment and the rows re-confirmed after they died (issue 24, finding 4) -----------


@pytest.mark.parametrize("days_old, expire_date, expired", [
    (6, None, False),                              # within the 7 days an invoice lives by default
    (8, None, True),                               # past them: checks stop
    (2, "now() - interval '1 hour'", True),        # PayDunya's own expire_date, earlier, wins
    (8, "now() + interval '2 days'", False),       # ...and later too: PayDunya still takes it
    (31, "now() + interval '10 years'", True),     # but never past 30 days, whatever it says
])
def test_an_invoice_paydunya_keeps_calling_pending_expires_at_the_end_of_its_life(
        api, act_as, admin, pending, days_old, expire_date, expired):
    when = admin.execute(f"select {expire_date}").fetchone()[0] if expire_date else None
    result = expire(api, act_as, admin, "tok-1", days_old=days_old, expire_date=when)
    assert result["changed"] is expired
    assert result["payment"]["status"] == ("expired" if expired else "pending")
    assert (result["tenant_id"], result["owner_id"], result["lease_id"]) == (MOUSSA, AWA, LEASE_123)
    assert [p["id"] for p in due(api, act_as)["batch"]] == ([] if expired else [pending["id"]])


def test_an_expired_month_can_be_paid_with_a_new_invoice(api, act_as, admin, pending):
    expire(api, act_as, admin, "tok-1", days_old=8)
    again = reserve(api, act_as)
    assert again["created"] is True and again["payment"]["id"] != pending["id"]


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_only_a_pending_row_expires(api, act_as, admin, pending, status):
    confirm(api, act_as, "tok-1", status)
    result = expire(api, act_as, admin, "tok-1", days_old=40)
    assert (result["changed"], result["payment"]["status"]) == (False, status)


def test_an_expired_invoice_paid_after_all_is_put_under_review(api, act_as, admin, pending):
    expire(api, act_as, admin, "tok-1", days_old=8)
    result = confirm(api, act_as, "tok-1", "completed")
    assert (result["payment"]["status"], result["payment"]["review_reason"]) == ("needs_review", "paid_after_expired")


def test_only_the_server_may_expire_a_payment(api, act_as, pending):
    for role in ("anon", "authenticated"):
        with pytest.raises(errors.InsufficientPrivilege), act_as(api, role, sub=FATOU):
            api.execute("select expire_payment('tok-1')")


def dead_invoice(admin, period, status, token, *, died_hours_ago=1):
    pid = pending_invoice(admin, period, 120 + 60 * died_hours_ago, token)
    admin.execute("update rental_payments set status = %s where id = %s", (status, pid))
    died(admin, pid, f"{died_hours_ago} hours")
    return pid


def died(admin, pid, ago):
    """Set the row's updated_at `ago` back (the updated_at trigger would overwrite it: off for this one statement)."""
    admin.execute("set session_replication_role = replica")
    try:
        admin.execute("update rental_payments set updated_at = now() - %s::interval where id = %s", (ago, pid))
    finally:
        admin.execute("set session_replication_role = default")


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_a_failed_or_cancelled_invoice_is_re_confirmed_every_half_hour_for_a_week(api, act_as, admin, status):
    # Its IPN can be lost like any other: without this, money paid on it would never be seen.
    pid = dead_invoice(admin, "2030-01", status, "tok-dead")
    assert [(p["id"], p["status"]) for p in due(api, act_as)["batch"]] == [(pid, status)]
    assert due(api, act_as)["due"] == 0  # checked just now
    admin.execute("update private.payment_checks set checked_at = now() - interval '20 minutes' where payment_id = %s", (pid,))
    assert due(api, act_as)["due"] == 0  # not every minute, as a pending one
    admin.execute("update private.payment_checks set checked_at = now() - interval '31 minutes' where payment_id = %s", (pid,))
    assert [p["id"] for p in due(api, act_as)["batch"]] == [pid]
    admin.execute("update private.payment_checks set checked_at = now() - interval '31 minutes' where payment_id = %s", (pid,))
    died(admin, pid, "6 days 23 hours")
    assert [p["id"] for p in due(api, act_as)["batch"]] == [pid]  # still within the week
    admin.execute("update private.payment_checks set checked_at = now() - interval '31 minutes' where payment_id = %s", (pid,))
    died(admin, pid, "7 days 1 hour")
    assert due(api, act_as)["due"] == 0  # a week after it died: no more


def test_dead_rows_without_an_invoice_or_expired_are_never_due(api, act_as, admin):
    admin.execute("insert into rental_payments (lease_id, period, amount, status, created_at) "
                  "values (%s, '2030-01', %s, 'failed', now() - interval '1 hour')", (LEASE_123, RENT_123))
    dead_invoice(admin, "2030-02", "expired", "tok-expired")
    assert due(api, act_as) == {"batch": [], "due": 0}


def test_pending_invoices_go_before_dead_ones(api, act_as, admin):
    dead = dead_invoice(admin, "2030-01", "failed", "tok-dead", died_hours_ago=48)  # made long before
    live = pending_invoice(admin, "2030-02", 30, "tok-live")
    assert [p["id"] for p in due(api, act_as, 1)["batch"]] == [live]
    assert [p["id"] for p in due(api, act_as, 1)["batch"]] == [dead]
