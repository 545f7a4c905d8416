"""Listings: the public list, a city's list, one property, the search, and an owner's update.

Reads go through the cache (lib/cache/aside) with the anon client, so RLS shows published rows
only; an update goes through the owner's own token (RLS checks ownership again) and
invalidates, before it answers, every key that can show the property (invalidation.change_tags,
the map the database webhook uses too).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from lib import config, db, keys
from lib.cache import aside, invalidation, outbox, refill
from lib.errors import Forbidden, InvalidFilter, NotFound, ValidationFailed

if TYPE_CHECKING:  # only signed-in endpoints pay for the JWT imports
    from lib.auth import User

COLUMNS = "id,owner_id,title,description,city,district,type,price,currency,bedrooms,status,created_at,updated_at"
PropertyType = Literal["apartment", "house", "villa", "studio", "land", "office"]  # as the CHECK constraint

# Known cities, spelled as the data spells them; a query matches them ignoring case and accents.
CITIES = (
    "Dakar", "Thiès", "Saint-Louis", "Mbour", "Saly", "Rufisque", "Touba", "Kaolack", "Ziguinchor",
    "Pikine", "Guédiawaye", "Diamniadio", "Somone", "Louga", "Tambacounda", "Kolda", "Fatick", "Matam",
)


_CITY_BY_FOLD = {keys.fold(city): city for city in CITIES}
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
    known = _CITY_BY_FOLD.get(keys.fold(text))
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
#
# Public reads go through `published_properties` (supabase/migrations/20261202000030_scale.sql):
# the published rows, whose filters reach the partial indexes (through the table, RLS keeps
# `ilike` off the trigram indexes). Lists and searches come one page at a time, newest first
# (created_at, then id: a total order, so a page boundary never drops or repeats a row between two
# equal dates), each page its own cache entry under the list's tags.

PUBLIC = "published_properties"
LIST_PER_PAGE = keys.LIST_PER_PAGE
MAX_PER_PAGE = 100
# Paging reaches the first 1,000 listings of a list or a search: past that, an OFFSET walks (or
# sorts) every row before the page, 100-400 ms at 50,000 listings; a tenant narrows the search
# instead (city, type, price). Never above the project's max-rows: PostgREST answers 416 for an
# offset past `total`, and an estimated total is only known to be above max-rows.
MAX_DEPTH = 1_000
# `total` is exact up to max-rows (1,000) and the planner's estimate above (`Prefer:
# count=estimated`): an exact count of 50,000 rows costs 50-80 ms on every miss.
ESTIMATED_ABOVE = 1_000
# The shortest `q` a search takes: pg_trgm's indexes serve `ilike '%q%'` from three characters on.
MIN_QUERY = 3


def refuse_too_deep(page: int, per_page: int) -> None:
    """422 `invalid_filter` for a page that ends past MAX_DEPTH listings, naming the last one reachable."""
    if page * per_page > MAX_DEPTH:
        raise InvalidFilter(details=[{
            "field": "page", "code": "page_too_deep",
            "message": f"Au-delà des {MAX_DEPTH} premières annonces, affinez la recherche (ville, type, prix) : "
                       f"dernière page à {per_page} par page : {MAX_DEPTH // per_page}.",
        }])


def _published(columns: str = COLUMNS, *, count: str | None = None) -> Any:
    return db.anon().from_(PUBLIC).select(columns, count=count)


def _page(matching: Callable[..., Any], page: int, per_page: int, rows: str) -> dict[str, Any]:
    """`{rows: [...], "total", "total_estimated"}`: one page of `matching(columns, count=...)`, newest first."""
    start = (page - 1) * per_page
    query = matching(COLUMNS, count="estimated").order("created_at", desc=True).order("id", desc=True)
    try:
        response = db.run(query.range(start, start + per_page - 1).execute)
        found, total = response.data, response.count or 0
    except db.PageOutOfRange:  # past the end: an empty page, with the count asked for separately
        found, total = [], db.run(matching("id", count="estimated").limit(1).execute).count or 0
    return {rows: found, "total": total, "total_estimated": total > ESTIMATED_ABOVE}


def list_public(city: str | None = None, page: int = 1, per_page: int = LIST_PER_PAGE) -> dict[str, Any]:
    """One page of the published properties, newest first; one city's when `city` is given
    (canonical name, matched ignoring case). `{"properties", "count", "page", "per_page", "total",
    "total_estimated"}`."""
    def matching(columns: str, count: str | None = None) -> Any:
        query = _published(columns, count=count)
        return query.eq("city_lower", city.lower()) if city else query

    entry = keys.properties_city(city, page, per_page) if city else keys.properties_all(page, per_page)
    found = aside.fetch(entry, lambda: _page(matching, page, per_page, "properties"))
    return {"properties": found["properties"], "count": len(found["properties"]), "page": page,
            "per_page": per_page, "total": found["total"], "total_estimated": found["total_estimated"]}


def get_public(property_id: int) -> dict[str, Any]:
    """One published property (404 otherwise); a missing one is cached too, so probing ids costs Redis only."""
    def load() -> dict[str, Any] | None:
        rows = db.run(lambda: _published().eq("id", property_id).limit(1).execute()).data
        return rows[0] if rows else None

    found = aside.fetch(keys.property_detail(property_id), load)
    if found is None:
        raise NotFound("Ce bien est introuvable ou n'est plus publié.")
    return found


def search(filters: dict[str, Any]) -> dict[str, Any]:
    """Published properties matching canonical `filters` (see api/search.py), one page of them."""
    page, per_page = filters["page"], filters["per_page"]

    def matching(columns: str, count: str | None = None) -> Any:
        query = _published(columns, count=count)
        if "city" in filters:
            query = query.eq("city_lower", filters["city"].lower())
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

    found = aside.fetch(keys.search(filters), lambda: _page(matching, page, per_page, "results"))
    return {"results": found["results"], "page": page, "per_page": per_page, "total": found["total"],
            "total_estimated": found["total_estimated"]}


# -- the owner's update -----------------------------------------------------------------------


def update(user: User, property_id: int, changes: dict[str, Any]) -> dict[str, Any]:
    """Apply `changes` as the owner, then invalidate every key that can show the property.

    Whatever can refuse the request does so before the write: once the row is changed the answer
    is the changed row, never an error (the owner would retry a change that was made).
    """
    config.require_cache()  # no cache configured is a 500 before the write, not after it
    client = db.as_user(user.token)
    rows = db.run(lambda: client.from_("properties").select(COLUMNS).eq("id", property_id).limit(1).execute()).data
    if not rows:
        raise NotFound("Ce bien est introuvable.")
    before = rows[0]
    if before["owner_id"] != user.id:
        raise Forbidden("Seul le propriétaire de ce bien peut le modifier.")
    if "city" in changes:  # a copy: the caller's dict stays as it gave it
        changes = {**changes, "city": canonical_city(changes["city"], error=ValidationFailed)}
    seen = refill.watch(keys.property_detail(property_id).tags)  # lets the refill tell if another write slipped in
    writes = outbox.Writes()
    updated = db.run(lambda: writes.stamp(client.from_("properties").update(changes).eq("id", property_id)).execute()).data
    if not updated:  # RLS refused it after all (ownership changed meanwhile)
        raise Forbidden("Seul le propriétaire de ce bien peut le modifier.")
    after = updated[0]
    writes.applied(invalidation.change_tags("properties", before, after), refills=refills_after(before, after), seen=seen)
    return {name: after.get(name) for name in COLUMNS.split(",")}  # not the table's internal columns (city_lower)


# -- what the writer refills ------------------------------------------------------------------


def refills_after(before: dict[str, Any], after: dict[str, Any]) -> list[refill.Refill]:
    """The hot keys a property's update can fill itself (lib/cache/refill), so their readers hit at once:
    its detail page, from the row the UPDATE returned; the first page of the public list and of its
    city's list, patched from the page as it was, when the change cannot move the row into, out of
    or within them (same status, city and creation date). Anything else is left to the next reader."""
    try:
        row = {column: after[column] for column in COLUMNS.split(",")}
    except KeyError:  # the UPDATE did not return the whole row: nothing to tell
        return []
    shown = row if row["status"] == "published" else None  # what the detail's loader reads (RLS: published only)
    out: list[refill.Refill] = [refill.Fresh(keys.property_detail(row["id"]), shown)]
    if any(before.get(column) != row[column] for column in ("status", "city", "created_at")):
        return out
    # A list page is `{"properties": [...], "total", ...}` (`_page`), or a whole list written before paging.
    out.append(refill.Patch(keys.properties_all(), row, rows="properties"))
    city = listed_under(row["city"])
    if city:
        out.append(refill.Patch(keys.properties_city(city), row, rows="properties"))
    return out
