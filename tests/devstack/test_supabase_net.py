"""The Supabase stand-in's pg_net worker (devstack/supabase_net.py) over the seeded PostgreSQL: what
`net.http_post` queues is sent after commit, once, with its headers, body (byte for byte) and timeout, and logged in
net._http_response; a rolled-back change sends nothing; `drop` loses and `hold` keeps, as the drills need."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from devstack import supabase_net
from devstack.supabase_net import NetWorker, configure_webhook
from lib import signature
from tests.support import serve, wait_for


class Receiver(BaseHTTPRequestHandler):
    """Records every request; sleeps `delay` seconds first when the path says `/slow`."""

    received: list[dict] = []
    lock = threading.Lock()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/slow":
            time.sleep(1.0)
        with self.lock:
            self.received.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body),
                                  "raw": body})
        self.send_response(204 if self.path == "/empty" else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    Receiver.received = []
    with serve(Receiver) as url:
        yield url


@pytest.fixture
def worker(seeded_db):
    started = NetWorker(seeded_db.dsn()).start()
    yield started
    started.stop()


@pytest.fixture
def sql(seeded_db, pg_connect):
    return pg_connect(seeded_db.dsn())


def looked_twice(worker):
    """Wait until the worker has looked at the queue twice more: what it would send, it has sent."""
    seen = worker.stats()["looks"]
    wait_for(lambda: worker.stats()["looks"] >= seen + 2, timeout=10, what="two looks at the queue")


def post(conn, url, body=None, headers=None, timeout_ms=5000):
    conn.execute("select net.http_post(%s, %s::jsonb, '{}'::jsonb, %s::jsonb, %s)",
                 (url, json.dumps(body or {"n": 1}), json.dumps(headers or {"Content-Type": "application/json"}),
                  timeout_ms))


def responses(conn):
    return conn.execute("select id, status_code, timed_out, error_msg from net._http_response order by id").fetchall()


def test_a_committed_request_is_sent_once_with_its_headers_and_body_and_logged(worker, sql, receiver):
    post(sql, f"{receiver}/hook", {"type": "INSERT"}, {"Content-Type": "application/json", "Authorization": "Bearer x"})
    wait_for(lambda: responses(sql), timeout=10, what="the response log")
    [got] = Receiver.received
    assert got["body"] == {"type": "INSERT"}
    assert got["headers"]["Authorization"] == "Bearer x" and got["headers"]["User-Agent"] == "pg_net/devstack"
    assert [(status, timed_out) for _, status, timed_out, _ in responses(sql)] == [(200, False)]
    assert sql.execute("select count(*) from net.http_request_queue").fetchone()[0] == 0
    looked_twice(worker)  # looking again must not send it again
    assert len(Receiver.received) == 1


def test_nothing_is_sent_before_commit_nor_after_a_rollback(worker, sql, receiver):
    with sql.transaction():
        post(sql, f"{receiver}/kept")
        looked_twice(worker)  # the uncommitted row is invisible to it
        assert Receiver.received == []
    with pytest.raises(RuntimeError), sql.transaction():
        post(sql, f"{receiver}/rolled-back")
        raise RuntimeError("roll back")
    wait_for(lambda: Receiver.received, timeout=10, what="the committed request")
    looked_twice(worker)
    assert [r["path"] for r in Receiver.received] == ["/kept"]


def test_a_request_past_its_timeout_is_logged_as_timed_out_and_not_retried(worker, sql, receiver):
    post(sql, f"{receiver}/slow", timeout_ms=200)
    wait_for(lambda: responses(sql), timeout=10, what="the timeout")
    [(_, status, timed_out, error)] = responses(sql)
    assert (status, timed_out) == (None, True) and "200 ms" in error
    assert sql.execute("select count(*) from net.http_request_queue").fetchone()[0] == 0


def test_an_unreachable_url_is_logged_as_an_error(worker, sql):
    from devstack.redis_server import free_port

    post(sql, f"http://127.0.0.1:{free_port()}/nobody")
    wait_for(lambda: responses(sql), timeout=10, what="the error")
    [(_, status, timed_out, error)] = responses(sql)
    assert status is None and not timed_out and "ConnectError" in error


def test_drop_loses_the_request_and_hold_keeps_it_queued(worker, sql, receiver):
    worker.mode = "drop"
    post(sql, f"{receiver}/dropped")
    wait_for(lambda: worker.stats()["dropped"] == 1, timeout=10, what="the drop")
    worker.mode = "hold"
    post(sql, f"{receiver}/held")
    looked_twice(worker)
    assert Receiver.received == [] and sql.execute("select count(*) from net.http_request_queue").fetchone()[0] == 1
    worker.mode = "deliver"
    wait_for(lambda: Receiver.received, timeout=10, what="the held request")
    assert [r["path"] for r in Receiver.received] == ["/held"]
    stats = worker.stats()
    assert {k: stats[k] for k in ("mode", "taken", "delivered", "failed", "dropped")} == {
        "mode": "deliver", "taken": 2, "delivered": 1, "failed": 0, "dropped": 1}
    with pytest.raises(ValueError):
        worker.mode = "sometimes"


def test_requests_queued_while_the_worker_was_down_go_out_when_it_starts(seeded_db, sql, receiver):
    post(sql, f"{receiver}/early")  # no worker yet: pg_net's queue simply waits
    started = NetWorker(seeded_db.dsn()).start()
    try:
        wait_for(lambda: Receiver.received, timeout=10, what="the queued request")
    finally:
        started.stop()


def test_http_post_refuses_what_pg_net_refuses(sql):
    with pytest.raises(Exception, match="Content-Type"):
        post(sql, "http://x", headers={"Content-Type": "text/plain"})
    with pytest.raises(Exception, match="params"):
        sql.execute("select net.http_post('http://x', '{}'::jsonb, '{\"a\": \"1\"}'::jsonb)")


def test_the_databases_signed_webhook_arrives_byte_for_byte_and_verifies(worker, sql, seeded_db, receiver):
    # What makes the signature work end to end: the stand-in sends the queued bytes unchanged, as pg_net does.
    configure_webhook(seeded_db.dsn(), f"{receiver}/api/hooks/database", "s3cret")
    sql.execute("update properties set title = 'Villa « Téranga » vue mer' where id = 789")
    wait_for(lambda: Receiver.received, timeout=10, what="the webhook")
    [got] = Receiver.received
    assert got["body"]["record"]["title"] == "Villa « Téranga » vue mer" and "s3cret" not in json.dumps(got["headers"])
    signature.require_signature(got["headers"]["X-Dousell-Signature"], got["raw"], "s3cret", "test")


def test_configuring_the_webhook_twice_replaces_its_settings(seeded_db, sql):
    configure_webhook(seeded_db.dsn(), "http://one/api/hooks/database", "first")
    configure_webhook(seeded_db.dsn(), "http://two/api/hooks/database", "second")
    rows = sql.execute("select name, decrypted_secret from vault.decrypted_secrets order by name").fetchall()
    assert rows == [("dousell_database_webhook_secret", "second"), ("dousell_database_webhook_url",
                                                                   "http://two/api/hooks/database")]


def test_a_database_without_the_queue_leaves_the_worker_idle(pg_cluster, seeded_db):
    dsn = pg_cluster.dsn("postgres")
    idle = NetWorker(dsn).start()
    try:
        wait_for(lambda: not idle._thread.is_alive(), timeout=10, what="the idle worker to return")
    finally:
        idle.stop()
    assert supabase_net.CHANNEL == "devstack_pg_net"
