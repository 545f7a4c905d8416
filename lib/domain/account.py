"""A signed-in user's own data: profile, notifications, and an owner's dashboard.

The cache key is built from the verified token's `sub` before any cache read, and the
loader reads with the user's own token (RLS), so one user's data never reaches another.
"""

from __future__ import annotations

from typing import Any

from lib import db, keys
from lib.auth import User
from lib.cache import aside, invalidation, outbox
from lib.errors import Forbidden, NotFound

PROFILE_COLUMNS = "id,email,full_name,phone,role,created_at,updated_at"
NOTIFICATION_COLUMNS = "id,kind,title,body,data,read_at,created_at"
NOTIFICATIONS_SHOWN = 50


def _own_profile(user: User) -> dict[str, Any] | None:
    client = db.as_user(user.token)
    rows = db.run(lambda: client.from_("profiles").select(PROFILE_COLUMNS).eq("id", user.id).limit(1).execute()).data
    return rows[0] if rows else None


def profile(user: User) -> dict[str, Any]:
    found = aside.fetch(keys.profile(user.id), lambda: _own_profile(user))
    if found is None:
        raise NotFound("Profil introuvable.")
    return found


def update_profile(user: User, changes: dict[str, Any]) -> dict[str, Any]:
    client = db.as_user(user.token)
    writes = outbox.Writes()
    rows = db.run(lambda: writes.stamp(client.from_("profiles").update(changes).eq("id", user.id)).execute()).data
    if not rows:
        raise NotFound("Profil introuvable.")
    writes.applied(invalidation.change_tags("profiles", None, rows[0]))
    return {name: rows[0].get(name) for name in PROFILE_COLUMNS.split(",")}


def notifications(user: User) -> list[dict[str, Any]]:
    def load() -> list[dict[str, Any]]:
        client = db.as_user(user.token)
        return db.run(lambda: client.from_("notifications").select(NOTIFICATION_COLUMNS).eq("user_id", user.id)
                      .order("created_at", desc=True).order("id", desc=True).limit(NOTIFICATIONS_SHOWN).execute()).data

    return aside.fetch(keys.notifications(user.id), load)


def dashboard(user: User) -> dict[str, Any]:
    """The owner's figures (403 for a user who is not an owner)."""
    def load() -> dict[str, Any] | None:
        found = _own_profile(user)
        if found is None or found.get("role") != "owner":
            return None
        client = db.as_user(user.token)
        return db.run(lambda: client.rpc("owner_dashboard", {}).execute()).data

    figures = aside.fetch(keys.dashboard(user.id), load)
    if figures is None:
        raise Forbidden("Le tableau de bord est réservé aux propriétaires.")
    return figures
