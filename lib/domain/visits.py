"""Visits: the free slots of a property (cached), a user's visits (cached), booking and cancelling one.

Booking a slot:

    free_slots(property_id)               cached 2 min: a fast "no" for a slot that is not
                                          free (404 if the property is not published)
    lock dousell:lock:visit:prop{id}:{UTC stamp}   409 booking_in_progress when busy;
                                          Redis down: no lock
    book_visit RPC (service role)         the fence: a unique index per slot, an exclusion
                                          constraint on overlapping booked visits, and the cap
                                          (3 future visits per property, 10 in all: 409
                                          too_many_bookings), counted under the visitor's row lock
    invalidate what the visit row shows   invalidation.change_tags("visits", ...): the slots, the owner's
                                          dashboard, both parties' visit lists; release, 201

A slot that is not in the free list, and the RPC's `slot_taken` and `slot_not_found`, all
answer 409 `slot_taken` ("ce créneau n'est plus disponible"): to the visitor a slot that was
just booked, removed or has started is the same thing, and telling them apart would cost a
database read per refused click. The cached list is invalidated by every change to a slot or
a visit, whoever makes it (the database's outbox and webhook, docs/invalidation.md).

Cancelling (`cancel_visit` RPC): the visitor or the property's owner, before the visit starts
(409 visit_started after: it took place, or is taking place); anyone else gets 404, as for a
visit that does not exist. Cancelling twice answers the cancelled visit again. The slot is free
at once: the same tags as a booking are bumped before the answer (slots, both parties' visit
lists, the owner's dashboard), and the other party's notifications.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from lib import db, keys
from lib.cache import aside, invalidation, outbox
from lib.errors import BookingInProgress, DousellError, NotFound, SlotTaken, TooManyBookings, VisitStarted

if TYPE_CHECKING:  # only signed-in endpoints pay for the JWT imports
    from lib.auth import User

log = logging.getLogger(__name__)


# The soonest free slots shown (a month of hourly slots; ~21 KB cached): a busy agency's listing can
# hold thousands, and PostgREST's max-rows would cut an unbounded read at 1,000 without a word.
SLOTS_SHOWN = 300


def free_slots(property_id: int) -> list[dict[str, Any]]:
    """The SLOTS_SHOWN soonest future unbooked slots of a published property (404 if no such property)."""
    def load() -> list[dict[str, Any]] | None:
        client = db.anon()
        found = db.run(lambda: client.from_("properties").select("id").eq("id", property_id)
                       .eq("status", "published").limit(1).execute()).data
        if not found:
            return None  # cached too: a missing property is answered from Redis next time
        return db.run(lambda: client.rpc("available_slots", {"p_property_id": property_id})
                      .limit(SLOTS_SHOWN).execute()).data

    slots = aside.fetch(keys.visit_slots(property_id), load)
    if slots is None:
        raise NotFound("Ce bien est introuvable ou n'est plus publié.")
    return slots


def _instant(value: Any) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def is_free(property_id: int, starts_at: datetime) -> bool:
    """True if a free slot of the property starts at this instant (from the cached list); a slot past
    the list's SLOTS_SHOWN is left to the database's fence (book_visit), which has the last word."""
    slots = free_slots(property_id)
    if len(slots) >= SLOTS_SHOWN and (last := _instant(slots[-1].get("starts_at"))) and starts_at > last:
        return True
    return any(_instant(slot.get("starts_at")) == starts_at for slot in slots)


_BOOK_ERRORS: dict[str, Callable[[], DousellError]] = {
    "property_not_found": lambda: NotFound("Ce bien est introuvable ou n'est plus publié."),
    "slot_not_found": SlotTaken,
    "slot_taken": SlotTaken,
    "visitor_not_found": lambda: NotFound("Profil introuvable."),
    "too_many_bookings": TooManyBookings,
}
_CANCEL_ERRORS: dict[str, Callable[[], DousellError]] = {
    "visit_not_found": lambda: NotFound("Cette visite est introuvable."),
    "visit_started": VisitStarted,
}


def _owner_of(property_id: int) -> str | None:
    """The property's owner, from its cached detail; None if it cannot be had (the outbox row of the
    visit carries the owner, so the drain bumps their dashboard instead)."""
    from lib.domain import properties

    try:
        return properties.get_public(property_id).get("owner_id")
    except DousellError as exc:
        log.warning("visit booked on %s but its owner is unknown (%s): its dashboard is left to the outbox",
                    property_id, exc.code)
        return None


def book(user: User, property_id: int, starts_at: datetime) -> dict[str, Any]:
    """POST /api/visits: book the slot starting at `starts_at` for the user; the visit row."""
    from lib.domain.locking import under_lock  # not on the slots read path

    if not is_free(property_id, starts_at):
        raise SlotTaken()

    def work() -> dict[str, Any]:
        writes = outbox.Writes()
        try:
            params = {"p_property_id": property_id, "p_starts_at": starts_at.isoformat(), "p_visitor_id": user.id}
            data = writes.rpc(db.service(), "book_visit", params, _BOOK_ERRORS)
        except SlotTaken:  # slot_taken or slot_not_found: our cached list said free, it was wrong
            aside.invalidate(keys.visit_slots(property_id).tags)
            raise
        visit = data["visit"]
        writes.applied(invalidation.change_tags("visits", None, visit, [_owner_of(property_id)]))
        return visit

    return under_lock(keys.visit_lock(property_id, starts_at), BookingInProgress, work)


def list_for(user: User) -> list[dict[str, Any]]:
    """GET /api/visits: the user's visits as visitor and as owner (RLS), upcoming first; cached 1 min."""
    def load() -> list[dict[str, Any]]:
        client = db.as_user(user.token)
        return db.run(lambda: client.rpc("user_visits", {}).execute()).data

    return aside.fetch(keys.user_visits(user.id), load)


def cancel(user: User, visit_id: int) -> dict[str, Any]:
    """DELETE /api/visits/{id}: cancel a future visit as its visitor or the property's owner; the visit row."""
    writes = outbox.Writes()
    result = writes.rpc(db.service(), "cancel_visit", {"p_visit_id": visit_id, "p_user_id": user.id}, _CANCEL_ERRORS)
    visit = result["visit"]
    if result.get("changed"):
        tags = set(invalidation.change_tags("visits", None, visit, [result.get("owner_id")]))
        if result.get("notified"):
            tags |= set(invalidation.change_tags("notifications", None, {"user_id": result["notified"]}))
        writes.applied(tags)
    return visit
