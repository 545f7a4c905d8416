"""Every Redis key name, namespaced and escaped, with its family's TTL and invalidation tags.

The names are the contract (API.md): an operator finds `dousell:properties:detail:123`.
User input reaches a key only through `escape()`, which keeps letters, digits and `-_.`
and percent-encodes the rest (`:`, `*`, spaces, braces...), so no input can name another
key, widen a pattern or change the key's shape.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime

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
}


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
    deviation), so a request waiting for another's fill wakes when it should land (lib/entries)."""
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


def properties_all() -> CacheKey:
    return CacheKey(name("properties", "all_public"), "properties_list", ("properties:public",))


def properties_city(city: str) -> CacheKey:
    city = escape(city)
    return CacheKey(name("properties", "city", city), "properties_list", (f"properties:city:{city}",))


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


# -- locks -------------------------------------------------------------------------------------


def payment_lock(lease_id: int) -> str:
    return name("lock", "payment", f"lease{int(lease_id)}")


def slot_stamp(starts_at: datetime) -> str:
    """A slot's start in compact UTC (`20261127T140000Z`): one spelling per instant."""
    return starts_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def visit_lock(property_id: int, starts_at: datetime) -> str:
    return name("lock", "visit", f"prop{int(property_id)}", slot_stamp(starts_at))


# -- what a change invalidates -----------------------------------------------------------------


def property_changed(property_id: int, owner_id: str, cities: set[str] | list[str]) -> list[str]:
    """Tags to bump when a property changes: the public list, its detail, its old and new city
    lists, every search, its owner's dashboard, and its visit slots (shown only while published)."""
    pid = int(property_id)
    tags = ["properties:public", f"property:{pid}", "search", f"dashboard:{escape(owner_id)}", f"slots:{pid}"]
    tags += [f"properties:city:{escape(city)}" for city in sorted({c for c in cities if c})]
    return tags


# -- the Redis edge's own keys (issue 11): monitoring buckets, Idempotency-Key records ----------


def metrics_bucket(kind: str, number: int) -> str:
    """`dousell:meta:metrics:m:<epoch minute>` or `...:h:<epoch hour>`: one hash of counters."""
    return name("meta", "metrics", kind, int(number))


def idempotency(user_id: str, header: str) -> str:
    """`dousell:meta:idem:{user}:{sha256(header)}`: the header never reaches a key unhashed."""
    return name("meta", "idem", escape(user_id), hashlib.sha256(header.encode("utf-8")).hexdigest())
