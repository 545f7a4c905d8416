"""Drills 12-15: money and visits that cannot get stuck (issue 13), through the real API on the local stack.

12. IPN lost: paid at PayDunya with no callback; the stack's own cron caller settles it.
13. IPN "completed" after the row failed: needs_review, both parties notified once, never dropped.
14. One account hoarding slots: stopped at the cap; a cancelled slot is free at once and bookable.
15. A burst of 200 writes from one user, and forged IPNs from one address: 429s, nothing lost or doubled.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg

from drills.report import progress
from drills.runs import LEASE, OWNER, OWNER2, STRANGER, TENANT, Context, Row, tally

CRON_WAIT = 90.0  # seconds: the stack's cron caller ticks every DEVSTACK_CRON_SECONDS (60 by default)


def _sql(ctx: Context) -> psycopg.Connection:
    return psycopg.connect(f"postgresql://postgres@127.0.0.1:{ctx.stack.ports.postgres}/dousell", autocommit=True)


def _start(ctx: Context, row: Row, period: str) -> tuple[dict, str] | None:
    a = ctx.call(row, "POST", "/api/payments", TENANT, json_body={"lease_id": LEASE, "period": period})
    if not row.expect(a, {201}, f"payment {period}"):
        return None
    payment = a.json()["payment"]
    return payment, payment["checkout_url"].rstrip("/").rsplit("/", 1)[-1]


def _pay(ctx: Context, token: str, **params) -> dict:
    r = ctx.stack.admin.post(f"{ctx.stack.paydunya_url}/checkout/{token}/complete", json=params,
                             headers={"Accept": "application/json"})
    r.raise_for_status()
    return r.json()


def _kinds(ctx: Context, payment_id: int) -> Counter:
    found = ctx.stack.rows("notifications", "user_id,kind,data")
    return Counter((n["user_id"], n["kind"]) for n in found if (n.get("data") or {}).get("payment_id") == payment_id)


def _fresh_allowances(ctx: Context) -> None:
    for key in ctx.stack.redis("KEYS", "dousell:ratelimit:*") or []:
        ctx.stack.redis("DEL", key)


# ------------------------------------------------------------------------------------------------
# 12. The IPN lost


def ipn_lost(ctx: Context, row: Row) -> None:
    period = "2027-05"
    started = _start(ctx, row, period)
    if started is None:
        return
    payment, token = started
    ipn = _pay(ctx, token, send_ipn=False)["ipn"]
    with _sql(ctx) as sql:  # its IPN never came, and it is now older than the 10 minutes the IPN gets
        sql.execute("update rental_payments set created_at = now() - interval '11 minutes' where id = %s",
                    (payment["id"],))
    t0 = time.monotonic()
    status = "pending"
    while time.monotonic() - t0 < CRON_WAIT and status == "pending":
        time.sleep(1.0)
        status = ctx.stack.rows("rental_payments", "status", id=f"eq.{payment['id']}")[0]["status"]
    waited = time.monotonic() - t0
    listed = ctx.call(row, "GET", f"/api/payments?lease_id={LEASE}", TENANT)
    shown = next((p["status"] for p in listed.json().get("payments", []) if p["id"] == payment["id"]), None) \
        if listed.status == 200 else None
    kinds = _kinds(ctx, payment["id"])
    owner_id, tenant_id = ctx.ids[OWNER], ctx.ids[TENANT]
    if status != "completed" or shown != "completed":
        row.lost_or_doubled += 1
    if kinds != Counter({(tenant_id, "payment_completed"): 1, (owner_id, "rent_received"): 1}):
        row.lost_or_doubled += 1
    row.notes += [f"paid at PayDunya, IPN {ipn}; row aged 11 min; the stack's cron settled it after {waited:.0f} s "
                  f"(its caller ticks every minute): row {status}, tenant's list {shown}",
                  f"notifications {dict(Counter(k for _, k in kinds.elements()))}"]


# ------------------------------------------------------------------------------------------------
# 13. The IPN "completed" after the row failed


def paid_after_failed(ctx: Context, row: Row) -> None:
    period = "2027-06"
    before = ctx.call(row, "GET", "/api/dashboard", OWNER)
    started = _start(ctx, row, period)
    if started is None:
        return
    payment, token = started
    with _sql(ctx) as sql:  # the attempt was given up and marked failed; the tenant pays the old page anyway
        sql.execute("update rental_payments set status = 'failed' where id = %s", (payment["id"],))
    ipn = _pay(ctx, token)["ipn"]
    resent = ctx.stack.paydunya("POST", f"ipn/{token}/resend", {})["ipn"]  # PayDunya insists: still once
    rows = ctx.stack.rows("rental_payments", "status,review_reason", id=f"eq.{payment['id']}")
    kinds = _kinds(ctx, payment["id"])
    owner_id, tenant_id = ctx.ids[OWNER], ctx.ids[TENANT]
    after = ctx.call(row, "GET", "/api/dashboard", OWNER)
    review = (after.json()["dashboard"]["payments_to_review"] - before.json()["dashboard"]["payments_to_review"]
              if before.status == after.status == 200 else None)
    listed = ctx.call(row, "GET", f"/api/payments?lease_id={LEASE}", TENANT)
    shown = next((p["status"] for p in listed.json().get("payments", []) if p["id"] == payment["id"]), None)
    again = ctx.call(row, "POST", "/api/payments", TENANT, json_body={"lease_id": LEASE, "period": period})
    row.expect(again, {409}, "a second invoice for a month whose money is under review")
    if rows != [{"status": "needs_review", "review_reason": "paid_after_failed"}] or shown != "needs_review":
        row.lost_or_doubled += 1
    if kinds != Counter({(tenant_id, "payment_needs_review"): 1, (owner_id, "payment_needs_review"): 1}):
        row.lost_or_doubled += 1
    if review != 1:
        row.lost_or_doubled += 1
    row.notes += [f"IPN {ipn.get('status_code')} {ipn.get('body', '')[:60]}, resent {resent.get('status_code')}",
                  f"row {rows}, tenant's list {shown}, owner's dashboard payments_to_review +{review}",
                  f"notifications {dict(Counter(k for _, k in kinds.elements()))}; retry {again.status} {again.code}"]


# ------------------------------------------------------------------------------------------------
# 14. One account hoarding every free slot


def hoarding(ctx: Context, row: Row) -> None:
    hoarder = OWNER2
    free = {}
    for pid in (789, 102, 201):
        a = ctx.call(row, "GET", f"/api/visits/slots?property_id={pid}")
        free[pid] = [s["starts_at"] for s in a.json()["slots"]] if a.status == 200 else []
    total = sum(len(s) for s in free.values())
    answers = []
    for pid, slots in free.items():
        for starts_at in slots:
            answers.append((pid, ctx.call(row, "POST", "/api/visits", hoarder,
                                          json_body={"property_id": pid, "starts_at": starts_at})))
    booked = [(pid, a.json()["visit"]) for pid, a in answers if a.status == 201]
    codes = tally(a.code or a.status for _, a in answers)
    per_property = Counter(pid for pid, _ in booked)
    if any(n > 3 for n in per_property.values()) or len(booked) > 10:
        row.lost_or_doubled += 1
    for _, a in answers:
        row.expect(a, {201, 409}, "a hoarding booking")
    # The owner cancels one of them: the slot is free at once and someone else books it.
    pid, visit = booked[0] if booked else (None, None)
    freed_at_once = rebooked = None
    if visit:
        c = ctx.call(row, "DELETE", f"/api/visits/{visit['id']}", OWNER if pid != 201 else OWNER2)
        row.expect(c, {200}, "cancel")
        slots = ctx.call(row, "GET", f"/api/visits/slots?property_id={pid}")
        freed_at_once = visit["starts_at"] in [s["starts_at"] for s in slots.json()["slots"]]
        b = ctx.call(row, "POST", "/api/visits", STRANGER, json_body={"property_id": pid, "starts_at": visit["starts_at"]})
        rebooked = b.status == 201
        if not (freed_at_once and rebooked):
            row.lost_or_doubled += 1
        if rebooked:
            ctx.call(row, "DELETE", f"/api/visits/{b.json()['visit']['id']}", STRANGER)
    for _, v in booked[1:]:
        ctx.call(row, "DELETE", f"/api/visits/{v['id']}", hoarder)
    left = ctx.stack.rows("visits", "id", visitor_id=f"eq.{ctx.ids[hoarder]}", status="eq.booked")
    row.notes += [f"{hoarder.split('@')[0]} tried all {total} free future slots: {len(booked)} booked "
                  f"({dict(per_property)} per property), answers {codes}",
                  f"cancelled by the owner: free at once {freed_at_once}, rebooked by another user {rebooked}; "
                  f"hoarder's bookings left after cancelling {len(left)}"]


# ------------------------------------------------------------------------------------------------
# 15. A burst of 200 writes from one user; forged IPNs from one address


def burst(ctx: Context, row: Row) -> None:
    period = "2027-07"
    _fresh_allowances(ctx)
    body = {"lease_id": LEASE, "period": period}
    ctx.stack.token(TENANT)
    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: ctx.call(row, "POST", "/api/payments", TENANT, json_body=body), range(200)))
    seconds = time.monotonic() - t0
    statuses = Counter(a.status for a in answers)
    limited = [a for a in answers if a.status == 429]
    retry = sorted({int(a.headers.get("retry-after", "0")) for a in limited})
    for a in answers:
        row.expect(a, {200, 201, 409, 429}, "a burst payment")
    pending = [p for p in ctx.payments(period) if p["status"] == "pending"]
    invoices = [i for i in ctx.stack.paydunya("GET", "invoices")["invoices"]
                if i.get("custom_data", {}).get("period") == period]
    shown = {a.json()["payment"]["id"] for a in answers if a.status in (200, 201)}
    if len(pending) != 1 or len(invoices) != 1 or len(shown) != 1:
        row.lost_or_doubled += abs(len(pending) - 1) + abs(len(invoices) - 1) + abs(len(shown) - 1) or 1
    if not limited or any(a.code != "rate_limited" or not a.headers.get("retry-after") for a in limited):
        row.notes.append("UNEXPECTED: the burst was not limited in the contract's shape")
    others = ctx.call(row, "PATCH", "/api/profile", STRANGER, json_body={"full_name": "Fatou Sarr"})
    row.expect(others, {200}, "another user during the burst")
    row.notes += [f"200 POST /api/payments by one tenant in {seconds:.1f} s (8 threads): {tally(a.status for a in answers)}; "
                  f"Retry-After {retry[0] if retry else '-'}-{retry[-1] if retry else '-'} s",
                  f"pending rows {len(pending)}, PayDunya invoices {len(invoices)}, payments shown {len(shown)}; "
                  f"another user meanwhile {others.status}"]

    # Forged callbacks from one address, then PayDunya's genuine one from the same address.
    payment = next(iter(shown), None)
    token = next((i["token"] for i in invoices), None)
    forged = f"data[hash]={'0' * 128}&data[invoice][token]={token}&data[status]=completed".encode()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    guesses = [ctx.call(row, "POST", "/api/paydunya/ipn", content=forged, headers=form) for _ in range(20)]
    for a in guesses:
        row.expect(a, {403, 429}, "a forged IPN")
    ipn = _pay(ctx, token)["ipn"] if token else {}
    status = ctx.stack.rows("rental_payments", "status", id=f"eq.{payment}")[0]["status"] if payment else None
    if status != "completed":
        row.lost_or_doubled += 1
    row.notes.append(f"20 forged IPNs from one address: {tally(a.status for a in guesses)}; PayDunya's own IPN then "
                     f"{ipn.get('status_code')}, payment {status}")
    progress(f"  burst: {json.dumps(dict(statuses))}")


DRILLS = [
    ("IPN lost: settled by the next cron run", ipn_lost),
    ("IPN completed after the row failed", paid_after_failed),
    ("One account hoarding slots", hoarding),
    ("Burst of 200 writes; forged IPNs", burst),
]
