"""pg_net's background worker for the Supabase stand-in: sends the requests `net.http_post` queued, after commit.

On hosted Supabase the pg_net extension's worker takes rows from the UNLOGGED table
`net.http_request_queue` (a batch, oldest first, deleted as it takes them), sends each with
curl, and logs the answer in `net._http_response` (kept 6 hours); a request that fails or
times out is not retried (supabase/pg_net, src/core.c and README). Database Webhooks ride
on it, so a webhook can be lost.

Here `net.http_post` is bootstrap.sql's (same table, same signature) and this worker does the
rest: it LISTENs on `devstack_pg_net` (bootstrap's `net.wake()`, a NOTIFY PostgreSQL
delivers at commit, so a rolled-back change sends nothing), also polls every second (as
pg_net's worker wakes on its own), takes the queue with the same DELETE ... RETURNING, and
POSTs each request with its headers, its body's bytes unchanged (the database signs them:
X-Dousell-Signature) and its timeout, `User-Agent: pg_net/devstack`.

Drill switch `mode`: `deliver` (default), `drop` (take and lose every request, logged as
errors in net._http_response, what a lost webhook is), `hold` (leave them queued, as a
stopped worker would; they go out when the mode is back to `deliver`).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
from psycopg.types.json import Jsonb

log = logging.getLogger("devstack.supabase.net")

CHANNEL = "devstack_pg_net"
MODES = ("deliver", "drop", "hold")
BATCH_SIZE = 200  # pg_net.batch_size's default
POLL_SECONDS = 1.0
RESPONSE_TTL = "6 hours"  # pg_net.ttl's default
USER_AGENT = "pg_net/devstack"

_TAKE = """
with rows as (select id from net.http_request_queue order by id limit %s)
delete from net.http_request_queue q using rows where q.id = rows.id
returning q.id, q.method, q.url, q.headers, q.body, q.timeout_milliseconds
"""
_LOG = """
insert into net._http_response (id, status_code, content_type, headers, content, timed_out, error_msg)
values (%s, %s, %s, %s, %s, %s, %s)
"""


def has_pg_net(conn: psycopg.Connection) -> bool:
    """True if the database has the queue (bootstrap.sql's stand-in, or pg_net itself)."""
    return conn.execute("select to_regclass('net.http_request_queue') is not null").fetchone()[0]


def configure_webhook(dsn: str, url: str, secret: str) -> None:
    """What an operator does on hosted Supabase (docs/invalidation.md): the webhook's URL and secret
    as Vault secrets, created or replaced."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name, value in (("dousell_database_webhook_url", url), ("dousell_database_webhook_secret", secret)):
            found = conn.execute("select id from vault.secrets where name = %s", (name,)).fetchone()
            if found:
                conn.execute("select vault.update_secret(%s, %s)", (found[0], value))
            else:
                conn.execute("select vault.create_secret(%s, %s)", (value, name))


class NetWorker:
    """The worker thread; `start()`, `stop()`, `mode`, `stats()`."""

    def __init__(self, dsn: str, *, batch_size: int = BATCH_SIZE, senders: int = 8):
        self.dsn = dsn
        self.batch_size = batch_size
        self._mode = "deliver"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(senders, thread_name_prefix="pg_net-send")
        self._http = httpx.Client()
        self._lock = threading.Lock()
        self._stats = {"looks": 0, "taken": 0, "delivered": 0, "failed": 0, "dropped": 0}

    # -- control ---------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        self._mode = value

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"mode": self._mode, **self._stats}

    def start(self) -> NetWorker:
        self._thread = threading.Thread(target=self._run, name="pg_net-worker", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._http.close()

    # -- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, application_name="pg_net worker") as conn:
                    if not has_pg_net(conn):
                        log.info("pg_net stand-in: no net.http_request_queue in this database; no worker")
                        return
                    conn.execute(f"listen {CHANNEL}")
                    self._serve(conn)
            except psycopg.Error as exc:
                log.warning("pg_net stand-in: database unreachable (%s); retrying", str(exc).strip()[:200])
                self._stop.wait(1.0)

    def _serve(self, conn: psycopg.Connection) -> None:
        while not self._stop.is_set():
            if self._mode != "hold":
                while self._take(conn) == self.batch_size:
                    pass
            self._count("looks")  # a test waits on it to know the queue was looked at
            # A commit that queued a request notifies; otherwise look again within a second.
            for _ in conn.notifies(timeout=POLL_SECONDS, stop_after=1):
                pass

    def _take(self, conn: psycopg.Connection) -> int:
        with conn.transaction() as taking:
            rows = conn.execute(_TAKE, (self.batch_size,)).fetchall()
            # `hold` set while this look was under way: the rows go back. Checked after the DELETE saw
            # them, so a request queued after `hold` was set is never taken (the drill's contract).
            if self._mode == "hold":
                rows = []
                raise psycopg.Rollback(taking)
        if not rows:
            return 0
        with self._lock:
            self._stats["taken"] += len(rows)
        if self._mode == "drop":
            for row in rows:
                self._log(conn, row[0], None, None, None, None, False, "dropped by the devstack drill switch")
            with self._lock:
                self._stats["dropped"] += len(rows)
            return len(rows)
        for answer in self._pool.map(self._send, rows):
            self._log(conn, *answer)
        conn.execute(f"delete from net._http_response where created < now() - interval '{RESPONSE_TTL}'")
        return len(rows)

    def _send(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        request_id, method, url, headers, body, timeout_ms = row
        sent = {str(k): str(v) for k, v in (headers or {}).items()}
        sent["User-Agent"] = USER_AGENT
        try:
            response = self._http.request(method.upper(), url, headers=sent, content=bytes(body or b""),
                                          timeout=timeout_ms / 1000)
        except httpx.TimeoutException:
            self._count("failed")
            return request_id, None, None, None, None, True, f"Timeout of {timeout_ms} ms reached"
        except httpx.HTTPError as exc:
            self._count("failed")
            return request_id, None, None, None, None, False, f"{type(exc).__name__}: {exc}"[:500]
        self._count("delivered")
        return (request_id, response.status_code, response.headers.get("content-type"),
                Jsonb(dict(response.headers)), response.text[:10_000], False, None)

    def _count(self, name: str) -> None:
        with self._lock:
            self._stats[name] += 1

    @staticmethod
    def _log(conn: psycopg.Connection, *answer: Any) -> None:
        try:
            conn.execute(_LOG, answer)
        except psycopg.Error as exc:
            log.warning("pg_net stand-in: response %s not logged (%s)", answer[0], exc)
