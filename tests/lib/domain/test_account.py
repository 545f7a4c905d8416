"""lib/domain/account against the real stand-ins: a user's profile, notifications and dashboard, cached per user,
read with the user's own token (RLS), and shown changed at once after the user's own update."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest
import redis

from lib import auth, keys
from lib.cache import aside, invalidation
from lib.domain import account
from lib.errors import Forbidden, NotFound
from tests.sql.demo import AWA, FATOU, IBRAHIMA, MOUSSA, USERS

pytestmark = pytest.mark.usefixtures("configured")
SignIn = Callable[[str], auth.User]


def notify(admin: psycopg.Connection, user_id: str, title: str, minutes_ago: int = 0) -> None:
    admin.execute("insert into notifications (user_id, kind, title, body, created_at) "
                  "values (%s, 'test', %s, 'corps', now() - make_interval(mins => %s))", (user_id, title, minutes_ago))


def webhook(table: str, row: dict[str, object]) -> None:
    """What the database webhook does after a write made behind the API's back (lib/cache/outbox)."""
    aside.invalidate(invalidation.change_tags(table, None, row))


# -- the profile -------------------------------------------------------------------------------


def test_a_user_reads_their_own_profile(signed_in: SignIn) -> None:
    found = account.profile(signed_in(MOUSSA))
    email, full_name, role = USERS[MOUSSA]
    assert (found["id"], found["email"], found["full_name"], found["role"]) == (MOUSSA, email, full_name, role)
    assert set(found) == set(account.PROFILE_COLUMNS.split(","))


def test_the_profile_is_cached_under_the_users_own_key(signed_in: SignIn, admin: psycopg.Connection,
                                                         configured: redis.Redis) -> None:
    account.profile(signed_in(MOUSSA))
    assert configured.exists(keys.profile(MOUSSA).key)
    admin.execute("update profiles set full_name = 'Changé en base' where id = %s", (MOUSSA,))
    assert account.profile(signed_in(MOUSSA))["full_name"] == "Moussa Diop", "served from the cache"
    webhook("profiles", {"id": MOUSSA})
    assert account.profile(signed_in(MOUSSA))["full_name"] == "Changé en base"


def test_two_users_never_see_each_others_profile_through_the_cache(signed_in: SignIn) -> None:
    assert account.profile(signed_in(MOUSSA))["id"] == MOUSSA
    assert account.profile(signed_in(FATOU))["id"] == FATOU
    assert account.profile(signed_in(MOUSSA))["id"] == MOUSSA


def test_a_user_without_a_profile_row_gets_a_404(signed_in: SignIn, admin: psycopg.Connection) -> None:
    admin.execute("delete from profiles where id = %s", (FATOU,))
    with pytest.raises(NotFound):
        account.profile(signed_in(FATOU))


def test_an_update_answers_the_new_profile_and_shows_it_at_once(signed_in: SignIn, admin: psycopg.Connection) -> None:
    moussa = signed_in(MOUSSA)
    account.profile(moussa)  # cached as it was

    after = account.update_profile(moussa, {"full_name": "Moussa D. Diop", "phone": "+221 77 000 00 00"})

    assert (after["full_name"], after["phone"]) == ("Moussa D. Diop", "+221 77 000 00 00")
    assert set(after) == set(account.PROFILE_COLUMNS.split(","))
    assert admin.execute("select full_name from profiles where id = %s", (MOUSSA,)).fetchone() == ("Moussa D. Diop",)
    assert account.profile(moussa)["full_name"] == "Moussa D. Diop", "no stale profile after the user's own update"


def test_an_update_of_a_missing_profile_is_a_404_and_writes_nothing(signed_in: SignIn,
                                                                     admin: psycopg.Connection) -> None:
    admin.execute("delete from profiles where id = %s", (FATOU,))
    with pytest.raises(NotFound):
        account.update_profile(signed_in(FATOU), {"full_name": "Quelqu'un"})
    assert admin.execute("select count(*) from profiles where full_name = 'Quelqu''un'").fetchone() == (0,)


# -- notifications -----------------------------------------------------------------------------


def test_notifications_are_the_users_own_newest_first(signed_in: SignIn, admin: psycopg.Connection) -> None:
    notify(admin, FATOU, "ancienne", minutes_ago=60)
    notify(admin, FATOU, "récente", minutes_ago=1)
    notify(admin, MOUSSA, "pas pour Fatou")

    found = account.notifications(signed_in(FATOU))

    assert [n["title"] for n in found][:2] == ["récente", "ancienne"]
    assert "pas pour Fatou" not in [n["title"] for n in found]
    assert set(found[0]) == set(account.NOTIFICATION_COLUMNS.split(","))


def test_at_most_fifty_notifications_are_shown(signed_in: SignIn, admin: psycopg.Connection) -> None:
    for n in range(account.NOTIFICATIONS_SHOWN + 5):
        notify(admin, FATOU, f"n{n}", minutes_ago=n)
    found = account.notifications(signed_in(FATOU))
    assert len(found) == account.NOTIFICATIONS_SHOWN
    assert found[0]["title"] == "n0"


def test_a_new_notification_shows_once_its_tag_is_bumped(signed_in: SignIn, admin: psycopg.Connection) -> None:
    fatou = signed_in(FATOU)
    before = account.notifications(fatou)
    notify(admin, FATOU, "nouvelle")
    assert account.notifications(fatou) == before, "served from the cache"
    webhook("notifications", {"user_id": FATOU})
    assert account.notifications(fatou)[0]["title"] == "nouvelle"


# -- the owner's dashboard ---------------------------------------------------------------------


@pytest.mark.parametrize("owner", [AWA, IBRAHIMA])
def test_an_owner_gets_their_figures(signed_in: SignIn, admin: psycopg.Connection, owner: str) -> None:
    figures = account.dashboard(signed_in(owner))
    properties, published = admin.execute(
        "select count(*), count(*) filter (where status = 'published') from properties where owner_id = %s",
        (owner,)).fetchone()
    assert (figures["properties"], figures["published"]) == (properties, published)
    assert {"active_leases", "revenue_this_month", "pending_payments", "upcoming_visits"} <= set(figures)


@pytest.mark.parametrize("tenant", [MOUSSA, FATOU])
def test_a_tenant_is_refused_the_dashboard(signed_in: SignIn, tenant: str) -> None:
    with pytest.raises(Forbidden) as refused:
        account.dashboard(signed_in(tenant))
    assert refused.value.message == "Le tableau de bord est réservé aux propriétaires."


def test_a_tenant_who_becomes_an_owner_gets_the_dashboard_once_the_profile_change_is_announced(
        signed_in: SignIn, admin: psycopg.Connection) -> None:
    fatou = signed_in(FATOU)
    with pytest.raises(Forbidden):
        account.dashboard(fatou)  # "not an owner" is cached too
    admin.execute("update profiles set role = 'owner' where id = %s", (FATOU,))
    with pytest.raises(Forbidden):
        account.dashboard(fatou)
    webhook("profiles", {"id": FATOU})
    assert account.dashboard(fatou)["properties"] == 0
