"""lib wired to the real stand-ins, for the lib tests that need the whole data path (fixtures of tests/lib).

The Supabase stand-in over a fresh copy of the seeded PostgreSQL (one per test), the Upstash one
over a real Valkey (tests/conftest.py: one per module, flushed here per test); lib's clients are the
test's own (tests/conftest.py's own_clients), the edge's breaker reset around each test.

    pytestmark = pytest.mark.usefixtures("configured")     # in a tests/lib module: lib on the stand-ins

    def test_x(signed_in, admin, configured): ...          # a user, SQL as superuser, Redis behind lib's back
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import pytest
import redis

from devstack import supabase
from devstack.redis_server import RedisServer
from lib import auth
from lib.edge import upstash
from tests.sql.demo import USERS
from tests.support import UPSTASH_TOKEN

ANON, SERVICE = "test-anon-key", "test-service-role-key"


@pytest.fixture
def standin(seeded_db: object) -> Iterator[supabase.SupabaseStandIn]:
    server, _ = supabase.serve_in_thread("127.0.0.1", 0, dsn=seeded_db.dsn(), anon_key=ANON,  # type: ignore[attr-defined]
                                         service_role_key=SERVICE, delay_ms=0)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch, standin: supabase.SupabaseStandIn, upstash_url: str,
               valkey: RedisServer) -> Iterator[redis.Redis]:
    """lib pointed at the stand-ins on clients of the test's own, an empty Redis (yielded, to look behind lib's back)."""
    for name, value in {"SUPABASE_URL": standin.url, "SUPABASE_ANON_KEY": ANON, "SUPABASE_SERVICE_ROLE_KEY": SERVICE,
                        "UPSTASH_REDIS_REST_URL": upstash_url, "UPSTASH_REDIS_REST_TOKEN": UPSTASH_TOKEN}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CACHE_NAMESPACE", raising=False)
    with redis.Redis(host=valkey.host, port=valkey.port, decode_responses=True) as direct:
        direct.flushdb()
        upstash.breaker.reset()
        yield direct
    upstash.breaker.reset()


@pytest.fixture
def admin(seeded_db: object, pg_connect: Callable[[str], psycopg.Connection]) -> psycopg.Connection:
    """The same database as superuser, autocommit: to change rows behind lib's back and look at them."""
    return pg_connect(seeded_db.dsn())  # type: ignore[attr-defined]


@pytest.fixture
def signed_in(standin: supabase.SupabaseStandIn) -> Callable[[str], auth.User]:
    """`signed_in(AWA)`: a demo user as lib sees them after auth, with a real access token of the stand-in's."""
    def user(user_id: str) -> auth.User:
        email = USERS[user_id][0]
        return auth.User(id=user_id, email=email, role="authenticated", token=standin.mint_token(user_id, email))

    return user
