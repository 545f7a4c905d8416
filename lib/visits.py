"""Visits: the free slots of a property (cached), and booking one (the write path)."""

from __future__ import annotations

from typing import Any

from lib import cache, db, keys
from lib.errors import NotFound


def free_slots(property_id: int) -> list[dict[str, Any]]:
    """Future unbooked slots of a published property, soonest first (404 if no such property)."""
    def load() -> list[dict[str, Any]] | None:
        client = db.anon()
        found = db.run(lambda: client.from_("properties").select("id").eq("id", property_id)
                       .eq("status", "published").limit(1).execute()).data
        if not found:
            return None  # cached too: a missing property is answered from Redis next time
        return db.run(lambda: client.rpc("available_slots", {"p_property_id": property_id}).execute()).data

    slots = cache.fetch(keys.visit_slots(property_id), load)
    if slots is None:
        raise NotFound("Ce bien est introuvable ou n'est plus publié.")
    return slots
