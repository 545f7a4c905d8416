"""Every Redis key name, namespaced and escaped, with its family's TTL and tags, and the one map of what a change invalidates.

The names are the contract (docs/api.md): an operator finds `dousell:properties:detail:123`.
User input reaches a key only through `escape()`, which keeps letters, digits and `-_.`
and percent-encodes the rest (`:`, `*`, spaces, braces...), so no input can name another
key, widen a pattern or change the key's shape.

What a change invalidates (table + old/new row → these tags) is lib/cache/invalidation.py, the one list of
invalidations: the database webhook, the outbox drain and the API's own writes all call it.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
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
# How long the API remembers that it has itself applied a change (lib/cache/outbox): far beyond the
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


def load_estimate(family: str) -> str:
    """`dousell:meta:load:<family>`: how long a load of the family takes (smoothed, with its
    deviation), so a request waiting for another's fill wakes when it should land (lib/cache/entries)."""
    return name("meta", "load", escape(family))


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


# The page size of the lists' first page, whose keys keep the seed's names (`properties:all_public`).
LIST_PER_PAGE = 20


def _page(base: str, page: int, per_page: int) -> str:
    """`base` for the first page at the default size, `base:page:{n}:{per_page}` for any other: each
    page of a list is its own entry, so a hit moves one page, whatever the catalogue's size."""
    page, per_page = int(page), int(per_page)
    return base if (page, per_page) == (1, LIST_PER_PAGE) else f"{base}:page:{page}:{per_page}"


def properties_all(page: int = 1, per_page: int = LIST_PER_PAGE) -> CacheKey:
    """A page of the public list; every page carries the list's tag, so one bump voids them all."""
    return CacheKey(_page(name("properties", "all_public"), page, per_page), "properties_list",
                    ("properties:public",))


def properties_city(city: str, page: int = 1, per_page: int = LIST_PER_PAGE) -> CacheKey:
    """A page of a city's list. `city` is the canonical name (`Dakar`); the tag is its folded form,
    so a row stored as `dakar` or `DAKAR` (the web app writes what owners type) invalidates every
    page of the list that shows it."""
    return CacheKey(_page(name("properties", "city", escape(city)), page, per_page), "properties_list",
                    (city_tag(city),))


def property_detail(property_id: int) -> CacheKey:
    return CacheKey(name("properties", "detail", int(property_id)), "property_detail", (f"property:{int(property_id)}",))


def search(filters: dict[str, Any]) -> CacheKey:
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
    """GET /api/visits (docs/api.md): the user's bookings, as visitor and as owner."""
    user = escape(user_id)
    return CacheKey(name("visits", "user", user), "visits", (f"visits:user:{user}",))


def lease_parties(lease_id: int) -> CacheKey:
    """`{"tenant_id", "owner_id"}` of a lease, or None: who may read its payments. `leases:parties`
    is bumped when a property changes hands (its leases' owner changes without a lease row changing)."""
    lid = int(lease_id)
    return CacheKey(name("meta", "lease", lid), "lease_parties", (f"lease:{lid}", "leases:parties"))


# -- helper keys -------------------------------------------------------------------------------


def metrics_bucket(kind: str, number: int) -> str:
    """`dousell:meta:metrics:m:<epoch minute>`, `...:f:<epoch 5 minutes>` or `...:h:<epoch hour>`: one
    hash of counters (lib/ops/recorder)."""
    return name("meta", "metrics", kind, int(number))


def alerts_state() -> str:
    """`dousell:meta:alerts`: each alert's state, as JSON (lib/ops/alerts writes it, the report reads it)."""
    return name("meta", "alerts")


def idempotency(user_id: str, header: str) -> str:
    """`dousell:meta:idem:{user}:{sha256(header)}`: the `Idempotency-Key` header never reaches a key unhashed."""
    return name("meta", "idem", escape(user_id), hashlib.sha256(header.encode("utf-8")).hexdigest())


def applied_change(change_id: str) -> str:
    """`dousell:meta:applied:{id}`: the tags the API bumped itself for one of its writes (lib/cache/outbox)."""
    return name("meta", "applied", escape(change_id))


def payment_recheck(payment_id: int) -> str:
    """`dousell:meta:recheck:payment:{id}`: a tenant's read re-confirmed it with PayDunya (TTL 60 s, lib/domain/settle)."""
    return name("meta", "recheck", "payment", int(payment_id))


def ratelimit_prefix(limit: str) -> str:
    """`dousell:ratelimit:{limit}`: upstash-ratelimit appends `:{escaped identifier}:{window}` (lib/web/ratelimit)."""
    return name("ratelimit", escape(limit))


# -- locks -------------------------------------------------------------------------------------


def payment_lock(lease_id: int) -> str:
    return name("lock", "payment", f"lease{int(lease_id)}")


def slot_stamp(starts_at: datetime) -> str:
    """A slot's start in compact UTC (`20261127T140000Z`): one spelling per instant."""
    return starts_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def visit_lock(property_id: int, starts_at: datetime) -> str:
    return name("lock", "visit", f"prop{int(property_id)}", slot_stamp(starts_at))


def lock_kind(key: str) -> str:
    """`payment` or `visit` for a lock key made above, `other` for anything else (lib/metrics)."""
    prefix = name("lock", "")
    kind = key[len(prefix):].split(":", 1)[0] if key.startswith(prefix) else ""
    return kind if kind in ("payment", "visit") else "other"


def city_tag(city: str) -> str:
    """`properties:city:<folded>`: case, accents and spacing removed. PostgREST's `ilike` (how a city
    list is read) matches case-insensitively, so every row a list can show folds to the list's tag."""
    return f"properties:city:{escape(fold(' '.join(str(city).split())))}"


def fold(text: str) -> str:
    """`text` without case or accents ("Thiès" and "THIES" fold alike): how a city is matched, and tagged."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
