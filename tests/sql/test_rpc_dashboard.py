"""owner_dashboard: the signed-in owner's figures, checked against the seed and after payments."""

from __future__ import annotations

import pytest

from tests.sql.demo import (
    AWA,
    AWA_PROPERTIES,
    FATOU,
    IBRAHIMA,
    IBRAHIMA_PROPERTIES,
    LEASE_123,
    MOUSSA,
    RENT_123,
    VILLA_789,
)

ZERO = {"properties": 0, "published": 0, "active_leases": 0, "revenue_this_month": 0, "pending_payments": 0, "payments_to_review": 0, "upcoming_visits": 0}


def dashboard(as_user, user):
    with as_user(user) as conn:
        figures = conn.execute("select owner_dashboard()").fetchone()[0]
    return figures


@pytest.mark.parametrize(
    "user, expected",
    [
        # Awa: 21 properties (18 published), lease 123 active, its current month unpaid,
        # Fatou's visit of property 102 ahead.
        (AWA, {"properties": AWA_PROPERTIES, "published": 18, "active_leases": 1, "revenue_this_month": 0, "pending_payments": 0, "payments_to_review": 0, "upcoming_visits": 1}),
        # Ibrahima: 28 properties (26 published), only an ended lease.
        (IBRAHIMA, {"properties": IBRAHIMA_PROPERTIES, "published": 26, "active_leases": 0, "revenue_this_month": 0, "pending_payments": 0, "payments_to_review": 0, "upcoming_visits": 0}),
        # Tenants own nothing: all zeros, not someone else's figures.
        (MOUSSA, ZERO),
        (FATOU, ZERO),
    ],
)
def test_the_dashboard_matches_the_seed(as_user, periods, user, expected):
    assert dashboard(as_user, user) == {**expected, "month": periods.current}


def pay(admin, lease_id, period, amount, status="completed"):
    admin.execute(
        "insert into rental_payments (lease_id, period, amount, status, paid_at) values (%s, %s, %s, %s, case when %s = 'completed' then now() end)",
        (lease_id, period, amount, status, status),
    )


def test_revenue_counts_completed_payments_of_the_current_dakar_month_only(as_user, admin, periods):
    admin.execute(
        "insert into leases (id, property_id, tenant_id, monthly_rent, status, starts_on) values (900, %s, %s, 1200000, 'active', '2026-01-01')",
        (VILLA_789, FATOU),
    )
    pay(admin, LEASE_123, periods.current, RENT_123)  # counts
    pay(admin, 900, periods.current, 1_200_000)  # counts: another lease of hers
    pay(admin, 900, periods.next, 1_200_000)  # paid in advance: next month's revenue
    pay(admin, 900, "2020-01", 1_200_000, "failed")  # not money
    figures = dashboard(as_user, AWA)
    assert figures["revenue_this_month"] == RENT_123 + 1_200_000
    assert figures["active_leases"] == 2
    assert dashboard(as_user, IBRAHIMA)["revenue_this_month"] == 0


def test_pending_payments_and_upcoming_visits_are_counted(as_user, admin, periods):
    pay(admin, LEASE_123, periods.current, RENT_123, "pending")
    admin.execute(
        """
        insert into visits (slot_id, property_id, visitor_id, starts_at, ends_at)
        select id, property_id, %s, starts_at, ends_at from visit_slots where property_id = %s order by starts_at limit 2
        """,
        (MOUSSA, VILLA_789),
    )  # the first slot is in the past: only one of the two is upcoming
    figures = dashboard(as_user, AWA)
    assert figures["pending_payments"] == 1
    assert figures["upcoming_visits"] == 2  # the seeded one and the new future one


def test_an_owner_who_is_also_a_tenant_sees_only_their_figures_as_owner(as_user, admin, periods):
    # Ibrahima rents Awa's villa and pays: that is Awa's revenue, not his.
    admin.execute(
        "insert into leases (id, property_id, tenant_id, monthly_rent, status, starts_on) values (900, %s, %s, 1200000, 'active', '2026-01-01')",
        (VILLA_789, IBRAHIMA),
    )
    pay(admin, 900, periods.current, 1_200_000)
    assert dashboard(as_user, IBRAHIMA)["revenue_this_month"] == 0
    assert dashboard(as_user, IBRAHIMA)["active_leases"] == 0
    assert dashboard(as_user, AWA)["revenue_this_month"] == 1_200_000

