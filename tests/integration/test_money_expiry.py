"""Invoices that never settle and money that arrives late, on the local stack (issue 24, finding 4).

An invoice PayDunya keeps calling pending (or answering a status nobody documented) is asked about
only for its life, then `expired`; a later payment of it, and a payment of a dead row whose IPN was
lost, are found and put under review. The PayDunya stand-in gives an invoice an `expire_date` or any
status word (devstack/paydunya.py, `POST /__devstack/invoices/<token>`).

Pays on lease 900 like tests/integration/test_money_and_visits.py (its fixtures: the lease is made
and removed around the module), on periods of its own.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.integration.test_money_and_visits import (  # noqa: F401  (fixtures, by name)
    AWA,
    FATOU,
    age,
    built,
    cron,
    listed,
    notes,
    pay_on_paydunya,
    pd,
    period,
    settled,
    sql,
    start,
    status_of,
)


def test_an_unknown_paydunya_status_is_not_settled_and_the_cron_still_answers_200(stack, sql, pd):  # noqa: F811
    payment, token = start(stack, period(6))
    assert pd.post(f"/__devstack/invoices/{token}", json={"status": "refunded"}).status_code == 200
    age(sql, payment["id"])
    counts = cron(stack)  # the old client raised a 502 here, on every run
    assert counts["errors"] == 0 and counts["checked"] >= 1, counts
    assert status_of(sql, payment["id"]) == "pending"


def test_an_invoice_past_paydunyas_expire_date_is_expired_and_no_longer_asked_about(stack, sql, pd):  # noqa: F811
    payment, token = start(stack, period(7))
    past = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M:%S")
    assert pd.post(f"/__devstack/invoices/{token}", json={"expire_date": past}).status_code == 200
    age(sql, payment["id"])
    counts = cron(stack)
    assert counts["expired"] >= 1, counts
    assert status_of(sql, payment["id"]) == "expired"
    assert listed(stack)[payment["id"]]["status"] == "expired"  # shown at once
    checks = sql.execute("select checks from private.payment_checks where payment_id = %s", (payment["id"],)).fetchone()
    sql.execute("update private.payment_checks set checked_at = now() - interval '2 hours' where payment_id = %s",
                (payment["id"],))
    cron(stack)
    assert sql.execute("select checks from private.payment_checks where payment_id = %s",
                       (payment["id"],)).fetchone() == checks  # checks stopped
    again = stack.api.post("/api/payments", json={"lease_id": 900, "period": period(7)}, headers=stack.auth(FATOU))
    assert again.status_code == 201, again.text  # the month can be paid with a new invoice


def test_an_invoice_paid_after_it_expired_is_put_under_review(stack, sql, pd):  # noqa: F811
    payment, token = start(stack, period(8))
    age(sql, payment["id"], minutes=8 * 24 * 60)  # PayDunya sent no expire_date: 7 days
    assert cron(stack)["expired"] >= 1
    assert status_of(sql, payment["id"]) == "expired"
    pay_on_paydunya(pd, token)  # the tenant had kept the page open; PayDunya takes it
    settled(sql, payment["id"], "needs_review")
    assert listed(stack)[payment["id"]]["review_reason"] == "paid_after_expired"
    assert notes(stack, AWA, payment["id"]) == ["payment_needs_review"]


def test_money_paid_on_a_failed_row_whose_ipn_was_lost_is_found_by_the_cron(stack, sql, pd):  # noqa: F811
    payment, token = start(stack, period(9))
    sql.execute("update rental_payments set status = 'failed' where id = %s", (payment["id"],))
    assert pay_on_paydunya(pd, token, send_ipn=False)["ipn"] == {"sent": False}
    counts = cron(stack)
    assert counts["needs_review"] >= 1, counts
    row = listed(stack)[payment["id"]]
    assert (row["status"], row["review_reason"]) == ("needs_review", "paid_after_failed")
