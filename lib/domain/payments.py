"""Rent payments: start one (lock, reserve in the database, PayDunya invoice), list them (the IPN: lib/domain/settle).

Starting a payment, each step made safe (the database is the fence: docs/write-path.md):

    read the lease as the user (RLS)      404 not visible, 403 not the tenant, 422 not active
    lock dousell:lock:payment:lease{id}   409 payment_in_progress when busy; Redis down: no lock
    reserve_payment RPC (service role)    the fence: one pending and one completed row per
                                          lease and month at most (partial unique indexes)
      pending with a checkout_url         → 200 with it, no second invoice
      pending without one, young          → 409 payment_in_progress (another request is making it)
      pending without one, older than the lock TTL → abandoned by a crashed request:
                                          marked failed, reserved again
    PayDunya create (10 s at most)        failure → the row is marked failed, 502
    store token + checkout_url            only on a row still pending and without a url
    invalidate what the payment row shows invalidation.change_tags("rental_payments", ...): the lease's
                                          payments and the owner's dashboard; release, 201

A checkout_url reaches a user only once it is stored on a pending row, so an invoice made
by a request that lost its row (it outlived the lock and was declared abandoned) can never
be paid: nobody was shown it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from lib import config, db, keys
from lib.cache import aside, invalidation, outbox
from lib.domain import settle
from lib.domain.locking import LOCK_TTL, under_lock
from lib.edge import paydunya
from lib.errors import (
    AlreadyPaid,
    DousellError,
    LeaseNotActive,
    NotFound,
    NotYourLease,
    PaymentInProgress,
    PaymentProviderError,
    ValidationFailed,
)

if TYPE_CHECKING:  # only signed-in endpoints pay for the JWT imports
    from lib.auth import User

log = logging.getLogger(__name__)

# A pending row without a checkout_url older than this was left by a request that died
# (no live request holds a row that long: its work is bounded well under the lock's TTL).
ABANDONED_AFTER = timedelta(seconds=LOCK_TTL)
PAST_MONTHS = 24  # a period may be paid up to two years late...
AHEAD_MONTHS = 12  # ...and up to a year ahead; outside that it is a typo (422)
LIST_LIMIT = 200
PAYMENT_FIELDS = ("id", "lease_id", "period", "amount", "currency", "status", "checkout_url")
LIST_COLUMNS = "id,lease_id,period,amount,currency,status,review_reason,checkout_url,paid_at,created_at,updated_at"
LEASE_COLUMNS = "id,property_id,tenant_id,status,monthly_rent,starts_on,ends_on"
PERIOD_RE = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])$")
MONTHS_FR = ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre",
             "octobre", "novembre", "décembre")
# Where PayDunya sends the tenant's browser back (pages of the web app) and its IPN (us).
RETURN_PATH = "/paiement/retour"
CANCEL_PATH = "/paiement/annule"
IPN_PATH = "/api/paydunya/ipn"

# Replaceable in tests: the wall clock (UTC, aware).
now: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731


# -- periods -----------------------------------------------------------------------------------


def _dakar_tz() -> tzinfo:
    try:
        return ZoneInfo("Africa/Dakar")
    except ZoneInfoNotFoundError:  # no tz database in the runtime: Dakar is UTC+0 without daylight saving
        return timezone(timedelta(0), "Africa/Dakar")


def current_period() -> str:
    """This month in Africa/Dakar, `YYYY-MM`."""
    return now().astimezone(_dakar_tz()).strftime("%Y-%m")


def _month_index(period: str) -> int:
    return int(period[:4]) * 12 + int(period[5:7]) - 1


def period_label(period: str) -> str:
    """`2026-11` → `novembre 2026`."""
    return f"{MONTHS_FR[int(period[5:7]) - 1]} {period[:4]}"


def _bad_period(message: str) -> ValidationFailed:
    return ValidationFailed(details=[{"field": "period", "code": "period_out_of_range", "message": message}])


def check_period(period: str, lease: dict[str, Any] | None = None) -> None:
    """422 unless `period` is YYYY-MM, within 24 months back and 12 ahead, and not before the lease."""
    if not PERIOD_RE.match(period):
        raise ValidationFailed(details=[{"field": "period", "code": "string_pattern_mismatch",
                                         "message": "Période attendue au format AAAA-MM."}])
    month, today = _month_index(period), _month_index(current_period())
    if month < today - PAST_MONTHS or month > today + AHEAD_MONTHS:
        raise _bad_period(f"La période doit être comprise entre {PAST_MONTHS} mois en arrière "
                          f"et {AHEAD_MONTHS} mois à l'avance.")
    starts_on = (lease or {}).get("starts_on")
    if starts_on and month < _month_index(str(starts_on)[:7]):
        raise _bad_period("Cette période précède le début du bail.")


# -- starting a payment ------------------------------------------------------------------------


def public(payment: dict[str, Any]) -> dict[str, Any]:
    """The contract's payment body."""
    return {name: payment.get(name) for name in PAYMENT_FIELDS}


def _lease_as(user: User, lease_id: int) -> dict[str, Any]:
    """The lease as the user sees it (RLS): 404 if they cannot, 403 if they are not its tenant."""
    client = db.as_user(user.token)
    rows = db.run(lambda: client.from_("leases").select(LEASE_COLUMNS).eq("id", lease_id).limit(1).execute()).data
    if not rows:
        raise NotFound("Ce bail est introuvable.")
    lease = rows[0]
    if lease.get("tenant_id") != user.id:
        raise NotYourLease("Seul le locataire de ce bail peut en payer le loyer.")
    if lease.get("status") != "active":
        raise LeaseNotActive()
    return lease


_RESERVE_ERRORS: dict[str, Callable[[], DousellError]] = {
    "lease_not_found": lambda: NotFound("Ce bail est introuvable."),
    "not_lease_tenant": lambda: NotYourLease("Seul le locataire de ce bail peut en payer le loyer."),
    "lease_not_active": LeaseNotActive,
    "already_paid": AlreadyPaid,
    "payment_in_progress": PaymentInProgress,
    "invalid_period": lambda: _bad_period("Période invalide."),
}


def _reserve(lease_id: int, tenant_id: str, period: str, writes: outbox.Writes) -> dict[str, Any]:
    params = {"p_lease_id": lease_id, "p_tenant_id": tenant_id, "p_period": period}
    return writes.rpc(db.service(), "reserve_payment", params, _RESERVE_ERRORS)


def _abandoned(payment: dict[str, Any]) -> bool:
    """A pending row whose invoice nobody is making any more (its request died)."""
    try:
        created = datetime.fromisoformat(str(payment["created_at"]))
    except (KeyError, ValueError):
        return False
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return now() - created > ABANDONED_AFTER


def _mark_failed(payment_id: int, writes: outbox.Writes) -> bool:
    """Fail a pending row that never got a checkout_url (ours, or an abandoned one). True if it changed."""
    client = db.service()
    try:
        rows = db.run(lambda: writes.stamp(client.from_("rental_payments").update({"status": "failed"})
                      .eq("id", payment_id).eq("status", "pending").is_("checkout_url", "null")).execute()).data
    except DousellError as exc:  # the database is down: the row is abandoned after ABANDONED_AFTER
        log.warning("payment %s could not be marked failed (%s)", payment_id, exc.code)
        return False
    return bool(rows)


def _invalidate_payment(writes: outbox.Writes, payment: dict[str, Any], owner_id: str | None) -> None:
    writes.applied(invalidation.change_tags("rental_payments", None, payment, [owner_id]))


@dataclass(frozen=True)
class Started:
    """What starting a payment gave: the contract's payment body, and whether it is new (the handler
    answers 201) or the pending one already there (200)."""

    payment: dict[str, Any]
    created: bool


def start(user: User, lease_id: int, period: str | None = None) -> Started:
    """POST /api/payments: a new checkout, or the pending one."""
    config.paydunya()  # a missing PayDunya setting is a 500 before any row exists
    base = config.public_base_url()
    lease = _lease_as(user, lease_id)
    period = period or current_period()
    check_period(period, lease)
    return under_lock(keys.payment_lock(lease_id), PaymentInProgress,
                      lambda: _reserve_and_invoice(user, lease_id, period, base))


def _reserve_and_invoice(user: User, lease_id: int, period: str, base: str) -> Started:
    writes = outbox.Writes()
    for _attempt in range(2):
        reserved = _reserve(lease_id, user.id, period, writes)
        payment, owner_id = reserved["payment"], reserved.get("owner_id")
        if reserved.get("created"):
            break
        if payment.get("checkout_url"):
            return Started(public(payment), created=False)
        if not _abandoned(payment):
            raise PaymentInProgress()
        log.warning("payment %s: pending without an invoice since %s; marked failed", payment["id"],
                    payment.get("created_at"))
        if _mark_failed(payment["id"], writes):
            _invalidate_payment(writes, payment, owner_id)
    else:
        raise PaymentInProgress()  # someone else reserved again between our two attempts

    pid = payment["id"]
    try:
        token, checkout_url = paydunya.create_invoice(
            payment["amount"],
            f"Loyer {period_label(period)} — bail n°{lease_id}",
            {"payment_id": pid, "lease_id": lease_id, "period": period},
            {
                "callback_url": f"{base}{IPN_PATH}",
                "return_url": f"{base}{RETURN_PATH}?payment_id={pid}",
                "cancel_url": f"{base}{CANCEL_PATH}?payment_id={pid}",
            },
        )
    except Exception as exc:
        _mark_failed(pid, writes)
        _invalidate_payment(writes, payment, owner_id)
        if isinstance(exc, PaymentProviderError):
            log.warning("payment %s: PayDunya failed (%s); marked failed", pid, exc.reason or "")
        raise

    client = db.service()
    stored = db.run(lambda: writes.stamp(client.from_("rental_payments")
                    .update({"provider_token": token, "checkout_url": checkout_url})
                    .eq("id", pid).eq("status", "pending").is_("checkout_url", "null")).execute()).data
    _invalidate_payment(writes, payment, owner_id)
    if not stored:
        # Our row was declared abandoned while we waited on PayDunya: the invoice just made is
        # never shown to anyone. The tenant's retry finds whatever is pending now.
        log.warning("payment %s: lost its row before its invoice %s was stored", pid, token[:12])
        raise PaymentInProgress()
    return Started(public(stored[0]), created=True)


# -- listing -----------------------------------------------------------------------------------


def _parties(lease_id: int) -> dict[str, Any] | None:
    """`{"tenant_id", "owner_id"}` of a lease (cached 1 h under dousell:meta:lease:{id}), None if none:
    a lease created later bumps `lease:{id}`, so the cached None goes with it."""
    def load() -> dict[str, Any] | None:
        client = db.service()
        leases = db.run(lambda: client.from_("leases").select("tenant_id,property_id")
                        .eq("id", lease_id).limit(1).execute()).data
        if not leases:
            return None
        props = db.run(lambda: client.from_("properties").select("owner_id")
                       .eq("id", leases[0]["property_id"]).limit(1).execute()).data
        return {"tenant_id": leases[0]["tenant_id"], "owner_id": props[0]["owner_id"] if props else None}

    return aside.fetch(keys.lease_parties(lease_id), load)


def list_for(user: User, lease_id: int) -> list[dict[str, Any]]:
    """GET /api/payments: the lease's payments, newest first, for its tenant or owner (403 otherwise).

    Who may read is settled before the payments' cache entry is touched; the entry itself is
    loaded with the user's token, so RLS checks the same thing again on a miss.
    """
    parties = _parties(lease_id)
    if not parties or user.id not in (parties.get("tenant_id"), parties.get("owner_id")):
        raise NotYourLease()

    def load() -> list[dict[str, Any]]:
        client = db.as_user(user.token)
        return db.run(lambda: client.from_("rental_payments").select(LIST_COLUMNS).eq("lease_id", lease_id)
                      .order("created_at", desc=True).order("id", desc=True).limit(LIST_LIMIT).execute()).data

    rows = aside.fetch(keys.payments(lease_id), load)
    if settle.recheck(rows):
        rows = aside.fetch(keys.payments(lease_id), load)  # the change bumped the entry's tags
    return rows
