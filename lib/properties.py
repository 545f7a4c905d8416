"""Listings: the public list, a city's list, one property, the search, and an owner's update.

Reads go through the cache (lib/cache) with the anon client, so RLS shows published rows
only; an update goes through the owner's own token (RLS checks ownership again) and
invalidates, before it answers, every key that can show the property (keys.change_tags,
the map the database webhook uses too).
"""

from __future__ import annotations

import unicodedata
from typing import Any

from lib import cache, config, db, keys, outbox
from lib.errors import Forbidden, InvalidFilter, NotFound, ValidationFailed

COLUMNS = "id,owner_id,title,description,city,district,type,price,currency,bedrooms,status,created_at,updated_at"
TYPES = ("apartment", "house", "villa", "studio", "land", "office")

# Known cities, spelled as the data spells them; a query matches them ignoring case and accents.
CITIES = (
    "Dakar", "Thiès", "Saint-Louis", "Mbour", "Saly", "Rufisque", "Touba", "Kaolack", "Ziguinchor",
    "Pikine", "Guédiawaye", "Diamniadio", "Somone", "Louga", "Tambacounda", "Kolda", "Fatick", "Matam",
)


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


_CITY_BY_FOLD = {_fold(city): city for city in CITIES}
_NAME_CHARS = set(" -'’")


def clean_words(text: str, *, field: str, max_length: int, error: type[ValidationFailed] = InvalidFilter) -> str:
    """Trimmed text of letters, digits, spaces, hyphens and apostrophes; anything else is a 422."""
    text = " ".join(unicodedata.normalize("NFC", text).split())
    if not text or len(text) > max_length or not all(c.isalnum() or c in _NAME_CHARS for c in text):
        raise error(details=[{
            "field": field, "code": "invalid_characters",
            "message": f"Lettres, chiffres, espaces, tirets et apostrophes uniquement ({max_length} au plus).",
        }])
    return text.replace("’", "'")


def canonical_city(city: str, *, field: str = "city", error: type[ValidationFailed] = InvalidFilter) -> str:
    """`dakar`, ` DAKAR `, `thies` → `Dakar`, `Thiès`; an unknown city gets its words capitalised."""
    text = clean_words(city, field=field, max_length=60, error=error)
    known = _CITY_BY_FOLD.get(_fold(text))
    if known:
        return known
    return "-".join(" ".join(w[:1].upper() + w[1:].lower() for w in part.split(" ")) for part in text.split("-"))


def listed_under(stored: str | None) -> str | None:
    """The city whose list (`?city=`) can show a row stored with this city, or None for a spelling no
    query can name. Never raises: rows come from anyone (the web app writes `St. Louis`; `?city=`
    refuses the dot, so no list matches it), and invalidating must not depend on them being tidy."""
    try:
        return canonical_city(stored) if stored else None
    except InvalidFilter:
        return None


# -- reads ------------------------------------------------------------------------------------


def _published():
    return db.anon().from_("properties").select(COLUMNS).eq("status", "published")


def list_public(city: str | None = None) -> list[dict[str, Any]]:
    """Published properties, newest first; one city when `city` is given (canonical name)."""
    def load() -> list[dict[str, Any]]:
        query = _published()
        if city:
            query = query.ilike("city", city)
        return db.run(lambda: query.order("created_at", desc=True).order("id", desc=True).execute()).data

    return cache.fetch(keys.properties_city(city) if city else keys.properties_all(), load)


def get_public(property_id: int) -> dict[str, Any]:
    """One published property (404 otherwise); a missing one is cached too, so probing ids costs Redis only."""
    def load() -> dict[str, Any] | None:
        rows = db.run(lambda: _published().eq("id", property_id).limit(1).execute()).data
        return rows[0] if rows else None

    found = cache.fetch(keys.property_detail(property_id), load)
    if found is None:
        raise NotFound("Ce bien est introuvable ou n'est plus publié.")
    return found


def search(filters: dict[str, Any]) -> dict[str, Any]:
    """Published properties matching canonical `filters` (see api/search.py), one page of them."""
    page, per_page = filters["page"], filters["per_page"]

    def matching(columns: str):
        query = db.anon().from_("properties").select(columns, count="exact").eq("status", "published")
        if "city" in filters:
            query = query.ilike("city", filters["city"])
        if "type" in filters:
            query = query.eq("type", filters["type"])
        if "min_price" in filters:
            query = query.gte("price", filters["min_price"])
        if "max_price" in filters:
            query = query.lte("price", filters["max_price"])
        if "bedrooms" in filters:
            query = query.gte("bedrooms", filters["bedrooms"])
        if "q" in filters:
            # `q` holds only letters, digits, spaces, hyphens, apostrophes: nothing PostgREST's or=() parses.
            pattern = f"*{filters['q']}*"
            query = query.or_(f"title.ilike.{pattern},description.ilike.{pattern},district.ilike.{pattern}")
        return query

    def load() -> dict[str, Any]:
        start = (page - 1) * per_page
        query = matching(COLUMNS).order("created_at", desc=True).order("id", desc=True)
        try:
            response = db.run(query.range(start, start + per_page - 1).execute)
        except db.PageOutOfRange:  # past the end: an empty page, with the count asked for separately
            return {"results": [], "total": db.run(matching("id").limit(1).execute).count or 0}
        return {"results": response.data, "total": response.count or 0}

    found = cache.fetch(keys.search(filters), load)
    return {"results": found["results"], "page": page, "per_page": per_page, "total": found["total"]}


# -- the owner's update -----------------------------------------------------------------------


def update(user: Any, property_id: int, changes: dict[str, Any]) -> dict[str, Any]:
    """Apply `changes` as the owner, then invalidate every key that can show the property.

    Whatever can refuse the request does so before the write: once the row is changed the answer
    is the changed row, never an error (the owner would retry a change that was made).
    """
    config.upstash()  # no cache configured is a 500 before the write, not after it
    client = db.as_user(user.token)
    rows = db.run(lambda: client.from_("properties").select(COLUMNS).eq("id", property_id).limit(1).execute()).data
    if not rows:
        raise NotFound("Ce bien est introuvable.")
    before = rows[0]
    if before["owner_id"] != user.id:
        raise Forbidden("Seul le propriétaire de ce bien peut le modifier.")
    if "city" in changes:
        changes["city"] = canonical_city(changes["city"], error=ValidationFailed)
    writes = outbox.Writes()
    updated = db.run(lambda: writes.stamp(client.from_("properties").update(changes).eq("id", property_id)).execute()).data
    if not updated:  # RLS refused it after all (ownership changed meanwhile)
        raise Forbidden("Seul le propriétaire de ce bien peut le modifier.")
    after = updated[0]
    writes.applied(keys.change_tags("properties", before, after))
    return after
