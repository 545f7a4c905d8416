"""Settling payments with PayDunya's verdict, once, whoever learnt it: the IPN, the cron, or a tenant's read.

    settle.receive_ipn(raw, type)    POST /api/paydunya/ipn: check the hash, ask PayDunya, apply
    settle.apply(token, verdict)     confirm_payment with the rent amount; invalidates; logs a review
    settle.reconcile()               cron job: re-confirm pending invoices older than 10 minutes, and
                                     failed/cancelled ones for a week after they died
    settle.recheck(rows)             GET /api/payments: re-confirm one such row, once a minute at most

Why: the IPN is PayDunya's only push, and it can be lost (we answered 503 during a database
blip, or PayDunya gave up). A pending invoice older than `RECONCILE_AFTER` is asked about again,
so a tenant who paid never stays "pending"; a failed or cancelled one can still be paid at
PayDunya, so it is asked about too, every 30 minutes for a week (the database's choice:
payments_to_reconcile). Money that does not fit (a row already failed, cancelled or expired, a
month already paid, an amount that is not the rent) becomes `needs_review` in the database
(supabase/migrations/20261207000020_money.sql): never dropped, never left pending; both parties
are notified there, and it is logged here as an error for the operators.

An invoice PayDunya keeps calling pending (or answering a status we do not know: not settled,
lib/edge/paydunya) is asked about only for its life: PayDunya's `expire_date` when it sends one,
else `INVOICE_LIFE`; then the row becomes `expired` (expire_payment) and the checks stop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from lib import config, db, keys
from lib.cache import invalidation, outbox
from lib.edge import paydunya, upstash
from lib.errors import (
    AlreadyPaid,
    AmountMismatch,
    BadRequest,
    DousellError,
    InvalidSignature,
    NotFound,
    PaymentProviderError,
)

log = logging.getLogger(__name__)

RECONCILE_AFTER = timedelta(minutes=10)  # an IPN comes within seconds; after this it was lost
BATCH = 20  # invoices re-confirmed per cron run, least recently checked first (the RPC's order)
CRON_BUDGET = 20.0  # seconds of PayDunya calls per run; the rest waits for the next run (1 min)
RECHECK_EVERY = 60  # seconds: a tenant's reads re-confirm one payment at most this often
RECHECK_TIMEOUT = 3.0  # seconds: the most a re-check adds to GET /api/payments
# How long an invoice lives when PayDunya sends no expire_date, and the most it may live whatever
# it sends (private.invoice_deadline in the database decides; these only spare a needless call).
INVOICE_LIFE = timedelta(days=7)
INVOICE_LIFE_MAX = timedelta(days=30)

# Replaceable in tests: the wall clock (UTC, aware) and the monotonic clock of the cron's budget.
now: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731
monotonic: Callable[[], float] = time.monotonic

_CONFIRM_ERRORS: dict[str, Callable[[], DousellError]] = {
    "payment_not_found": lambda: NotFound("Paiement introuvable pour cette facture."),
    "amount_mismatch": AmountMismatch,
    "already_paid": AlreadyPaid,
}


def apply(token: str, verdict: dict[str, Any]) -> dict[str, Any]:
    """Apply PayDunya's `verdict` (lib/edge/paydunya.confirm) to the payment of `token`, once.

    The rent is compared with `rent_amount` (without PayDunya's fees when it says so). Returns
    confirm_payment's answer: `{"payment", "changed", "review", "tenant_id", "owner_id", "lease_id"}`.
    """
    amount = verdict.get("rent_amount")
    if amount is None:
        # Still applied: a completed verdict becomes needs_review (amount_mismatch) in the database.
        log.warning("invoice %s: PayDunya's amount is not a whole number of XOF", token[:12])
    params = {"p_token": token, "p_status": verdict["status"], "p_amount": amount}
    return _write("confirm_payment", params, token)


def expire(token: str, expire_date: datetime | None) -> dict[str, Any]:
    """expire_payment: the row of `token` becomes `expired` if its invoice's life is over (the
    database's clock decides). Same answer as `apply`."""
    params = {"p_token": token, "p_expire_date": expire_date.isoformat() if expire_date else None}
    result = _write("expire_payment", params, token)
    if result.get("changed"):
        log.info("payment %s: invoice %s never settled within its life; expired, checks stop",
                 result["payment"].get("id"), token[:12])
    return result


def expired(created_at: Any, verdict: dict[str, Any]) -> bool:
    """Whether the invoice's life is over on our clock: PayDunya's expire_date, else INVOICE_LIFE
    after `created_at`, never past INVOICE_LIFE_MAX (as private.invoice_deadline)."""
    created = _created({"created_at": created_at})
    if created is None:
        return False
    deadline = verdict.get("expire_date") or created + INVOICE_LIFE
    return now() >= min(deadline, created + INVOICE_LIFE_MAX)


def _write(function: str, params: dict[str, Any], token: str) -> dict[str, Any]:
    writes = outbox.Writes()
    result = writes.rpc(db.service(), function, params, _CONFIRM_ERRORS)
    payment = result["payment"]
    if result.get("review"):
        log.error("payment %s (invoice %s): PayDunya says paid, but the money does not fit (%s): "
                  "needs_review, tenant and owner notified; refund or validate it",
                  payment.get("id"), token[:12], payment.get("review_reason"))
    if result.get("changed"):
        # The payment row, and the notifications a completion or a review adds (one to each party).
        tenant_id, owner_id = result.get("tenant_id"), result.get("owner_id")
        tags = set(invalidation.change_tags("rental_payments", None, payment, [owner_id]))
        for who in (tenant_id, owner_id):
            tags |= set(invalidation.change_tags("notifications", None, {"user_id": who}))
        writes.applied(tags)
    return result


# -- PayDunya's push: the IPN ------------------------------------------------------------------

IPN_MAX_FIELDS = 500


def parse_ipn(raw: bytes, content_type: str | None) -> dict[str, str]:
    """The IPN's form fields (`data[hash]` → value); 400 unless a urlencoded form of single values."""
    if content_type and not content_type.lower().startswith("application/x-www-form-urlencoded"):
        raise BadRequest("Formulaire application/x-www-form-urlencoded attendu.")
    try:
        text = raw.decode("utf-8")
        fields = parse_qs(text, keep_blank_values=True, strict_parsing=True, max_num_fields=IPN_MAX_FIELDS)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("Notification illisible.") from exc
    if not fields:
        raise BadRequest("Notification vide.")
    out: dict[str, str] = {}
    for name, values in fields.items():
        if len(values) != 1:
            raise BadRequest(f"Champ répété : {name[:40]}.")
        out[name] = values[0]
    return out


def receive_ipn(raw: bytes, content_type: str | None) -> dict[str, Any]:
    """POST /api/paydunya/ipn: check the hash, ask PayDunya, apply its verdict once (lib/domain/settle, as the cron)."""
    form = parse_ipn(raw, content_type)
    if not paydunya.check_ipn_hash(form.get("data[hash]")):
        raise InvalidSignature()
    token = form.get("data[invoice][token]", "").strip()
    if not token or len(token) > 200:
        raise BadRequest("Jeton de facture manquant.")
    # The hash is the same on every callback (not a signature of this body): believe only
    # PayDunya's own answer for this token.
    verdict = paydunya.confirm(token)
    amount = verdict["total_amount"]
    claimed = form.get("data[invoice][total_amount]")
    if claimed is not None and paydunya.whole_amount(claimed) != amount:
        log.warning("IPN for %s: amount %r does not match PayDunya's %r", token[:12], claimed, amount)
        raise AmountMismatch()
    if form.get("data[status]") not in (None, verdict["status"]):
        log.info("IPN for %s says %s, PayDunya says %s: applying PayDunya's", token[:12],
                 form.get("data[status]"), verdict["status"])
    result = apply(token, verdict)
    return {"received": True, "status": result["payment"]["status"]}


# -- the cron job --------------------------------------------------------------------------------


def reconcile() -> dict[str, Any]:
    """GET /api/cron/reconcile's job: re-confirm up to BATCH invoices the database says are due.

    Due: pending invoices older than 10 minutes (each at most once a minute), and failed or
    cancelled ones for a week after they died (every 30 minutes: money can still arrive on them).
    The database hands out pending ones first, least recently checked first, and stamps them, so
    an invoice PayDunya keeps calling pending goes to the back and cannot starve the others; what
    is not reached this run (`left`) comes next run. A pending one past its life is `expired`.
    PayDunya failing on every call is a failure of the job (503 in the cron's log); some failures
    among successes are counted in `errors`. PAYDUNYA_MODE missing where it is required stops the
    job before any invoice is stamped (configuration_error, not a PayDunya failure).
    """
    config.paydunya_mode()
    client = db.service()
    due = db.run(lambda: client.rpc("payments_to_reconcile", {
        "p_limit": BATCH, "p_min_age": f"{int(RECONCILE_AFTER.total_seconds())} seconds"}).execute()).data
    batch = due.get("batch") or []
    counts = {"due": int(due.get("due", 0)), "checked": 0, "changed": 0, "needs_review": 0, "expired": 0,
              "errors": 0, "left": max(0, int(due.get("due", 0)) - len(batch))}
    deadline = monotonic() + CRON_BUDGET
    for i, row in enumerate(batch):
        remaining = deadline - monotonic()
        if remaining <= 0.5:
            counts["left"] += len(batch) - i  # stamped as checked: back in a minute
            break
        try:
            verdict = paydunya.confirm(row["provider_token"], timeout=min(paydunya.TOTAL_TIMEOUT, remaining))
            counts["checked"] += 1
            result = settle_row(row, verdict)
        except DousellError as exc:
            counts["errors"] += 1
            log.warning("reconcile: payment %s not settled (%s %s)", row.get("id"), exc.code,
                        exc.reason or "")
            continue
        if result is None or not result.get("changed"):
            continue
        counts["changed"] += 1
        status = result["payment"].get("status")
        counts["expired"] += status == "expired"
        counts["needs_review"] += bool(result.get("review"))
        if status != "expired":
            log.info("reconcile: payment %s is now %s (its IPN never came)", row.get("id"), status)
    if counts["errors"] and not counts["checked"]:
        raise PaymentProviderError()
    return counts


def settle_row(row: dict[str, Any], verdict: dict[str, Any]) -> dict[str, Any] | None:
    """What PayDunya's `verdict` does to a due `row` (`{"status", "provider_token", "created_at"}`);
    None when nothing is to be written.

    pending + pending (or unknown) within the invoice's life → nothing; past it → expire
    pending + anything else                                    → apply (completed, failed, cancelled, review)
    failed/cancelled + completed                               → apply (needs_review: money arrived late)
    failed/cancelled + anything else                           → nothing (the row says it already)
    """
    token = row["provider_token"]
    if row.get("status", "pending") == "pending":
        if verdict["status"] != "pending":
            return apply(token, verdict)
        return expire(token, verdict.get("expire_date")) if expired(row.get("created_at"), verdict) else None
    return apply(token, verdict) if verdict["status"] == "completed" else None


# -- a tenant's read -----------------------------------------------------------------------------


def _created(row: dict[str, Any]) -> datetime | None:
    try:
        created = datetime.fromisoformat(str(row.get("created_at")))
    except ValueError:
        return None
    return created if created.tzinfo else created.replace(tzinfo=UTC)


def overdue(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pending rows with an invoice, older than RECONCILE_AFTER, oldest first."""
    limit = now() - RECONCILE_AFTER
    found = [(created, row) for row in rows if row.get("status") == "pending" and row.get("checkout_url")
             and (created := _created(row)) is not None and created < limit]
    return [row for _, row in sorted(found, key=lambda pair: pair[0])]


def recheck(rows: list[dict[str, Any]]) -> bool:
    """Re-confirm with PayDunya the oldest overdue row that nobody re-checked in the last minute.

    At most one PayDunya call (RECHECK_TIMEOUT) per read; the minute is a Redis key with a TTL
    (`keys.payment_recheck`): Redis down → no re-check (the cron still does it). Any failure
    leaves the list as it is. True if a payment changed (the caller reloads the list).
    """
    for row in overdue(rows)[:3]:
        try:
            won = upstash.execute(["SET", keys.payment_recheck(row["id"]), "1", "NX", "EX", RECHECK_EVERY])
        except upstash.RedisError as exc:
            log.info("no payment re-check while Redis fails (%s)", type(exc).__name__)
            return False
        if won is None:
            continue  # checked within the minute by another read: try the next overdue one
        return _recheck_one(row)
    return False


def _recheck_one(row: dict[str, Any]) -> bool:
    client = db.service()
    try:
        found = db.run(lambda: client.from_("rental_payments").select("provider_token,status,created_at")
                       .eq("id", row["id"]).eq("status", "pending").limit(1).execute()).data
        if not found or not found[0].get("provider_token"):
            return False
        verdict = paydunya.confirm(found[0]["provider_token"], timeout=RECHECK_TIMEOUT)
        result = settle_row(found[0], verdict)
        return bool(result and result.get("changed"))
    except DousellError as exc:
        log.warning("re-check of payment %s failed (%s %s); the cron will retry", row.get("id"),
                    exc.code, exc.reason or "")
        return False
