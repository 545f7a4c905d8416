"""Every Redis key name, namespaced and escaped, with its family's TTL and tags, and the one map of what a change invalidates.

The names are the contract (API.md): an operator finds `dousell:properties:detail:123`.
User input reaches a key only through `escape()`, which keeps letters, digits and `-_.`
and percent-encodes the rest (`:`, `*`, spaces, braces...), so no input can name another
key, widen a pattern or change the key's shape.

`change_tags(table, old, new, owners)` at the bottom is the only list of invalidations:
the database webhook, the outbox drain and the API's own writes all call it.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lib import config

# The seed's TTL table, in seconds: one entry per data family, written once.
TTL = {
    "properties_list": 5 * 60,  # Liste propriétés: changes rarely, read 1000+ times a day
    "property_detail": 60 * 60,  # Détail propriété: changed once a week at most
    "dashboard": 30 * 60,  # Stats dashboard: no need for real time
    "search": 10 * 60,  # Résultats recherche: dynamic filters
    "profile": 60 * 60,  # Profil utilisateur: rarely changed
    "visit_slots": 2 * 60,  # Créneaux visite: must be fresh
    "notifications": 60,  # Notifications: near real time
    "payments": 5 * 60,  # Historique paiements bail
    "visits": 60,  # GET /api/visits: a user's bookings, near real time
    "lease_parties": 60 * 60,  # who the tenant and owner of a lease are: changes never in practice
}
# How long the API remembers that it has itself applied a change (lib/outbox): far beyond the
# time the webhook or the cron takes to reach that change in the outbox.
APPLIED_CHANGE_TTL = 60 * 60


def escape(part: object) -> str:
    """A key segment from any value: safe characters kept, everything else percent-encoded."""
    out = []
    for char in str(part):
        if char.isalnum() or char in "-_.":
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
    return "".join(out) or "%00"


def name(*parts: object) -> str:
    """`dousell:<part>:<part>`; parts are trusted literals or already escaped."""
    return ":".join((config.namespace(), *map(str, parts)))


def tag_key(tag: str) -> str:
    return name("meta", "tag", tag)


def fill_lock_key(key: str) -> str:
    return name("meta", "fill", key.split(":", 1)[1])


@dataclass(frozen=True)
class CacheKey:
    """One cached entry: its Redis key, family (for TTL and metrics) and the tags that invalidate it."""

    key: str
    family: str
    tags: tuple[str, ...]

    @property
    def ttl(self) -> int:
        return TTL[self.family]


# -- the families ------------------------------------------------------------------------------


def properties_all() -> CacheKey:
    return CacheKey(name("properties", "all_public"), "properties_list", ("properties:public",))


def properties_city(city: str) -> CacheKey:
    """`city` is the canonical name (`Dakar`); the tag is its folded form, so a row stored as `dakar`
    or `DAKAR` (the web app writes what owners type) invalidates the list that shows it."""
    return CacheKey(name("properties", "city", escape(city)), "properties_list", (city_tag(city),))


def property_detail(property_id: int) -> CacheKey:
    return CacheKey(name("properties", "detail", int(property_id)), "property_detail", (f"property:{int(property_id)}",))


def search(filters: dict) -> CacheKey:
    """Digest of the canonical filters: however the query string was ordered, one key."""
    canonical = json.dumps(filters, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]
    return CacheKey(name("search", digest), "search", ("search",))


def visit_slots(property_id: int) -> CacheKey:
    pid = int(property_id)
    return CacheKey(name("visits", "available_slots", pid), "visit_slots", (f"slots:{pid}",))


def dashboard(owner_id: str) -> CacheKey:
    owner = escape(owner_id)
    return CacheKey(name("dashboard", f"owner_{owner}"), "dashboard", (f"dashboard:{owner}",))


def profile(user_id: str) -> CacheKey:
    user = escape(user_id)
    return CacheKey(name("profile", user), "profile", (f"profile:{user}",))


def notifications(user_id: str) -> CacheKey:
    user = escape(user_id)
    return CacheKey(name("notifications", user), "notifications", (f"notifications:{user}",))


def payments(lease_id: int) -> CacheKey:
    lid = int(lease_id)
    return CacheKey(name("payments", "lease", lid), "payments", (f"payments:lease:{lid}",))


def user_visits(user_id: str) -> CacheKey:
    """GET /api/visits (API.md): the user's bookings, as visitor and as owner."""
    user = escape(user_id)
    return CacheKey(name("visits", "user", user), "visits", (f"visits:user:{user}",))


def lease_parties(lease_id: int) -> CacheKey:
    """`{"tenant_id", "owner_id"}` of a lease, or None: who may read its payments. `leases:parties`
    is bumped when a property changes hands (its leases' owner changes without a lease row changing)."""
    lid = int(lease_id)
    return CacheKey(name("meta", "lease", lid), "lease_parties", (f"lease:{lid}", "leases:parties"))


# -- helper keys -------------------------------------------------------------------------------


def metrics_bucket(kind: str, number: int) -> str:
    """`dousell:meta:metrics:m:<epoch minute>` or `...:h:<epoch hour>`: one hash of counters (lib/metrics)."""
    return name("meta", "metrics", kind, int(number))


def idempotency(user_id: str, header: str) -> str:
    """`dousell:meta:idem:{user}:{sha256(header)}`: the `Idempotency-Key` header never reaches a key unhashed."""
    return name("meta", "idem", escape(user_id), hashlib.sha256(header.encode("utf-8")).hexdigest())


def applied_change(change_id: str) -> str:
    """`dousell:meta:applied:{id}`: the tags the API bumped itself for one of its writes (lib/outbox)."""
    return name("meta", "applied", escape(change_id))


def payment_recheck(payment_id: int) -> str:
    """`dousell:meta:recheck:payment:{id}`: a tenant's read re-confirmed it with PayDunya (TTL 60 s, lib/settle)."""
    return name("meta", "recheck", "payment", int(payment_id))


def ratelimit_prefix(limit: str) -> str:
    """`dousell:ratelimit:{limit}`: upstash-ratelimit appends `:{escaped identifier}:{window}` (lib/ratelimit)."""
    return name("ratelimit", escape(limit))


# -- locks -------------------------------------------------------------------------------------


def payment_lock(lease_id: int) -> str:
    return name("lock", "payment", f"lease{int(lease_id)}")


def slot_stamp(starts_at: datetime) -> str:
    """A slot's start in compact UTC (`20261127T140000Z`): one spelling per instant."""
    return starts_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def visit_lock(property_id: int, starts_at: datetime) -> str:
    return name("lock", "visit", f"prop{int(property_id)}", slot_stamp(starts_at))


# -- what a change invalidates -----------------------------------------------------------------
#
# One function per table whose rows the API shows: the tags under which one row (old or new)
# can appear. `owners` are the owners of the property the row belongs to, which leases,
# payments and visits do not carry themselves (the outbox trigger looks them up).

Row = Mapping[str, Any]


def _int(value: Any) -> int | None:
    """A row's id as an int; None for anything else (a map must never fail on a row)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _uid(value: Any) -> str | None:
    return escape(value) if isinstance(value, str) and value else None


def city_tag(city: str) -> str:
    """`properties:city:<folded>`: case, accents and spacing removed. PostgREST's `ilike` (how a city
    list is read) matches case-insensitively, so every row a list can show folds to the list's tag."""
    decomposed = unicodedata.normalize("NFKD", " ".join(str(city).split()))
    folded = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return f"properties:city:{escape(folded)}"


def _property(row: Row, owners: Iterable[str]) -> set[str]:
    tags = {"properties:public", "search"}
    if row.get("city"):
        tags.add(city_tag(row["city"]))
    pid = _int(row.get("id"))
    if pid is not None:
        tags |= {f"property:{pid}", f"slots:{pid}"}
    return tags | _dashboards([row.get("owner_id"), *owners])


def _never_public(rows: list[Row]) -> bool:
    """Both versions carry a status and neither is `published`: no public list or search showed
    the row, nor will (RLS serves published rows only)."""
    return all("status" in row and row["status"] != "published" for row in rows)


def _lease(row: Row, owners: Iterable[str]) -> set[str]:
    lid = _int(row.get("id"))
    return ({f"lease:{lid}"} if lid is not None else {"leases:parties"}) | _dashboards(owners)


def _payment(row: Row, owners: Iterable[str]) -> set[str]:
    lid = _int(row.get("lease_id"))
    return ({f"payments:lease:{lid}"} if lid is not None else set()) | _dashboards(owners)


def _visit(row: Row, owners: Iterable[str]) -> set[str]:
    pid = _int(row.get("property_id"))
    users = [row.get("visitor_id"), *owners]
    return ({f"slots:{pid}"} if pid is not None else set()) | _dashboards(owners) | {
        f"visits:user:{u}" for u in map(_uid, users) if u}


def _slot(row: Row, owners: Iterable[str]) -> set[str]:
    pid = _int(row.get("property_id"))
    return {f"slots:{pid}"} if pid is not None else set()


def _profile(row: Row, owners: Iterable[str]) -> set[str]:
    # The dashboard caches "not an owner" (None) for a tenant: a role change must reach it.
    uid = _uid(row.get("id"))
    return {f"profile:{uid}", f"dashboard:{uid}"} if uid else set()


def _notification(row: Row, owners: Iterable[str]) -> set[str]:
    uid = _uid(row.get("user_id"))
    return {f"notifications:{uid}"} if uid else set()


def _dashboards(owners: Iterable[Any]) -> set[str]:
    return {f"dashboard:{u}" for u in map(_uid, owners) if u}


_BY_TABLE = {
    "properties": _property,
    "leases": _lease,
    "rental_payments": _payment,
    "visits": _visit,
    "visit_slots": _slot,
    "profiles": _profile,
    "notifications": _notification,
}
TABLES = tuple(_BY_TABLE)  # the tables whose rows the API shows: each has the outbox trigger


def change_tags(table: str, old: Row | None, new: Row | None, owners: Iterable[str | None] = ()) -> list[str]:
    """Every tag the row can appear under, before (`old`) and after (`new`) the change, sorted.

    Rows are taken raw, as the database stored them (any city spelling, any status): the tags
    of both versions are bumped, so whatever showed the old row and whatever will show the new
    one are invalidated. A property that is a draft or archived on both sides leaves the
    public lists and searches alone; a row without a status counts as public. `KeyError` for
    a table not in TABLES.
    """
    rows = [row for row in (old, new) if row]
    owners = [o for o in owners if o]
    tags: set[str] = set()
    for row in rows:
        tags |= _BY_TABLE[table](row, owners)
    if table == "properties":
        if rows and _never_public(rows):
            tags = {t for t in tags if t not in ("properties:public", "search") and not t.startswith("properties:city:")}
        if old and new and old.get("owner_id") != new.get("owner_id"):
            tags.add("leases:parties")  # its leases changed owner without a lease row changing
    return sorted(tags)


def property_changed(property_id: int, owner_id: str, cities: Iterable[str]) -> list[str]:
    """`change_tags` for a published property known by id, owner and cities (bench/strategies.py)."""
    rows = [{"id": property_id, "owner_id": owner_id, "city": city} for city in cities if city]
    return sorted({tag for row in rows or [{"id": property_id, "owner_id": owner_id}]
                   for tag in change_tags("properties", None, row)})
