"""What a change invalidates: the one map from a table and a row's old and new versions to the tags it bumps.

Key names and tags are lib/keys.py's; this is their other half. The database webhook, the outbox
drain (lib/cache/outbox) and the API's own writes all call `change_tags`, so one list is reviewed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lib import keys

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
    return keys.escape(value) if isinstance(value, str) and value else None


def _property(row: Row, owners: Iterable[str]) -> set[str]:
    tags = {"properties:public", "search"}
    if row.get("city"):
        tags.add(keys.city_tag(row["city"]))
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
UNKNOWN_TABLE = frozenset({"properties:public", "search"})


def change_tags(table: str, old: Row | None, new: Row | None, owners: Iterable[str | None] = ()) -> list[str]:
    """Every tag the row can appear under, before (`old`) and after (`new`) the change, sorted.

    Rows are taken raw, as the database stored them (any city spelling, any status): the tags
    of both versions are bumped, so whatever showed the old row and whatever will show the new
    one are invalidated. A property that is a draft or archived on both sides leaves the
    public lists and searches alone; a row without a status counts as public. A table not in
    TABLES (a new one the map does not know yet) voids every public list and search.
    """
    if table not in _BY_TABLE:
        return sorted(UNKNOWN_TABLE)
    rows = [row for row in (old, new) if row]
    named = [o for o in owners if o]
    tags: set[str] = set()
    for row in rows:
        tags |= _BY_TABLE[table](row, named)
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
