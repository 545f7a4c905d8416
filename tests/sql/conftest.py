"""Fixtures of the SQL tests: connections to this test's seeded database, in the roles PostgREST uses."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import psycopg
import pytest

Session = Callable[..., AbstractContextManager[psycopg.Connection]]


@pytest.fixture
def admin(seeded_db, pg_connect) -> psycopg.Connection:
    """Superuser connection (autocommit): set up and check state behind RLS's back."""
    return pg_connect(seeded_db.dsn())


@pytest.fixture
def api(seeded_db, pg_connect) -> psycopg.Connection:
    """Connection as `authenticator`, PostgREST's login role (autocommit between requests)."""
    return pg_connect(seeded_db.dsn("authenticator"))


@pytest.fixture
def api_conns(seeded_db, pg_connect) -> Callable[[int], list[psycopg.Connection]]:
    """`api_conns(n)`: n more authenticator connections, for races."""
    return lambda n: [pg_connect(seeded_db.dsn("authenticator")) for _ in range(n)]


@pytest.fixture
def as_user(api, act_as) -> Session:
    """`with as_user(AWA) as conn:` one request as that signed-in user."""
    return lambda sub, conn=None: act_as(conn or api, "authenticated", sub=sub)


@pytest.fixture
def as_anon(api, act_as) -> Session:
    """`with as_anon() as conn:` one request with the anon key."""
    return lambda conn=None: act_as(conn or api, "anon")


@pytest.fixture
def as_service(api, act_as) -> Session:
    """`with as_service() as conn:` one request with the service_role key (the API server)."""
    return lambda conn=None: act_as(conn or api, "service_role")


@dataclass(frozen=True)
class Periods:
    """Months ('YYYY-MM') relative to the database's now() in Africa/Dakar."""

    current: str
    previous: str  # paid in the seed for lease 123
    next: str


@pytest.fixture
def periods(admin) -> Periods:
    row = admin.execute(
        """
        select to_char(d, 'YYYY-MM'), to_char(d - interval '1 month', 'YYYY-MM'), to_char(d + interval '1 month', 'YYYY-MM')
        from (select now() at time zone 'Africa/Dakar' as d) as x
        """
    ).fetchone()
    return Periods(*row)
