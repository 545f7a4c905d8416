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


@pytest.mark.parametrize("amount", [RENT_123 - 1, RENT_123 * 2, 0, None])
def test_a_wrong_amount_is_refused_and_changes_nothing(api, act_as, admin, pending, amount):
    before = admin.execute("select status, paid_at, updated_at from rental_payments where id = %s", (pending["id"],)).fetchone()
    assert rpc_error(lambda: confirm(api, act_as, "tok-1", "completed", amount)) == "amount_mismatch"
    assert admin.execute("select status, paid_at, updated_at from rental_payments where id = %s", (pending["id"],)).fetchone() == before
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


@pytest.mark.parametrize("first", ["failed", "cancelled"])
def test_money_received_for_a_failed_or_cancelled_row_is_put_under_review_and_both_parties_are_told(
        api, act_as, admin, pending, first):
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
