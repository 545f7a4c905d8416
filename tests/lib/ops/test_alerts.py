"""lib/ops/alerts: fires after a few minutes, holds, clears the same way, no storm; one POST per alert."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler

import httpx
import pytest

from lib import metrics
from lib.edge import upstash
from lib.ops import alerts, recorder, report
from tests.fakes import fake_upstash
from tests.support import serve

NOW = 1_800_000_030.0  # 30 s into an epoch minute
MINUTE = int(NOW) // 60


# == the state machine, pure ===================================================================


def run_minutes(pattern, state=None, start=MINUTE):
    """`pattern` one condition per minute (True holds, False absent, None unknown): the events, in order."""
    state = {} if state is None else state
    events = []
    for i, holds in enumerate(pattern):
        condition = None if holds is None else (holds, "message")
        events += [(i, e.kind) for e in alerts.step(state, {"hit_rate": condition}, start + i)]
    return events, state


def test_an_alert_fires_once_its_condition_held_three_minutes_in_a_row():
    events, state = run_minutes([True, True, True, True, True])
    assert events == [(2, "fired")], "fired at the third minute, then holds without a new event"
    assert state["hit_rate"]["firing"] and state["hit_rate"]["since"] == MINUTE * 60, "since the first minute"


def test_it_clears_once_the_condition_is_gone_three_minutes_in_a_row():
    events, _ = run_minutes([True] * 3 + [False, False, True, False, False, False])
    assert events == [(2, "fired"), (8, "cleared")], "one good minute among bad ones does not clear it"


def test_a_flapping_condition_is_no_storm():
    events, _ = run_minutes([True, False] * 10 + [True, True, False] * 5)
    assert events == []


def test_a_minute_evaluated_twice_counts_once():
    state: dict = {}
    for _ in range(5):  # the cron retried within the same minute
        assert alerts.step(state, {"hit_rate": (True, "m")}, MINUTE) == []
    assert state["hit_rate"]["streak"] == 1


def test_an_unknown_condition_leaves_the_alert_as_it_is():
    events, state = run_minutes([True, True, True, None, None, None, None])
    assert events == [(2, "fired")] and state["hit_rate"]["firing"]


# == the rules: one condition each =============================================================


def totals(**fields):
    return {name.replace("__", ":"): n for name, n in fields.items()}


@pytest.mark.parametrize("rule, signals, holds", [
    # hit rate: 90 % is a miss (the objective is "more than 90 %"); too few reads say nothing
    ("hit_rate", alerts.Signals(totals(search__HIT=9, search__LOAD=1)), True),
    ("hit_rate", alerts.Signals(totals(search__HIT=95, search__LOAD=5)), False),
    ("hit_rate", alerts.Signals(totals(search__LOAD=4)), False),
    # p50 at or over 10 ms
    ("latency_p50", alerts.Signals({"lat:api:GET /x:25": 10}), True),
    ("latency_p50", alerts.Signals({"lat:api:GET /x:3": 10}), False),
    # locks: one expired under its holder is a miss of 100 %; none taken is no miss
    ("locks", alerts.Signals({"lock:payment:acquired": 11, "lock:payment:expired": 1}), True),
    ("locks", alerts.Signals({"lock:payment:acquired": 11}), False),
    ("locks", alerts.Signals({}), False),
    # Redis memory from 80 % of its maximum
    ("redis_memory", alerts.Signals({}, memory_ratio=0.8), True),
    ("redis_memory", alerts.Signals({}, memory_ratio=0.5), False),
    # Redis unusable: unreachable, or requests served while the breaker skipped it; the quota is its own alert
    ("redis", alerts.Signals(None, redis_error="Upstash did not answer: ConnectError"), True),
    ("redis", alerts.Signals({"breaker:open": 3}), True),
    ("redis", alerts.Signals(None, redis_error="ERR max daily request limit exceeded"), False),
    ("upstash_quota", alerts.Signals(None, redis_error="ERR max daily request limit exceeded"), True),
    ("upstash_quota", alerts.Signals({}), False),
    # the edge holds Redis off for the quota: the cron's call is skipped by the breaker, still the quota's alert
    ("upstash_quota", alerts.Signals(None, redis_error="Upstash skipped: the circuit breaker is open",
                                     quota={"quota": "daily", "until": "2026-12-08T00:00:00Z"}), True),
    ("redis", alerts.Signals(None, redis_error="Upstash skipped: the circuit breaker is open",
                             quota={"quota": "monthly", "until": "2026-12-08T00:00:00Z"}), False),
    ("upstash_quota", alerts.Signals(None, redis_error="ERR max requests limit exceeded"), True),  # monthly
    # the outbox: changes waiting five minutes or more
    ("outbox_backlog", alerts.Signals({}, outbox={"pending": 4, "oldest_seconds": 400}), True),
    ("outbox_backlog", alerts.Signals({}, outbox={"pending": 4, "oldest_seconds": 20}), False),
    ("payments_needs_review", alerts.Signals({}, needs_review=2), True),
    ("payments_needs_review", alerts.Signals({}, needs_review=0), False),
    # 5xx: 5 % of the requests
    ("errors_5xx", alerts.Signals({"lat:api:GET /x:3": 20, "http:5xx": 1}), True),
    ("errors_5xx", alerts.Signals({"lat:api:GET /x:3": 100, "http:5xx": 1}), False),
])
def test_each_rule_is_one_condition(rule, signals, holds):
    condition = alerts.RULES[rule](signals)
    assert condition is not None and condition[0] is holds
    if holds:
        assert condition[1], "a firing alert says what is wrong, in French"


def test_rules_that_read_counters_know_nothing_while_redis_is_unreachable():
    blind = alerts.Signals(None, redis_error="Upstash did not answer")
    assert [name for name, rule in alerts.RULES.items() if rule(blind) is None] == [
        "hit_rate", "latency_p50", "locks", "redis_memory", "outbox_backlog", "payments_needs_review", "errors_5xx"]


# == the cron's job: a local receiver sees one POST per alert ==================================


class Receiver(BaseHTTPRequestHandler):
    bodies: list[dict] = []
    lock = threading.Lock()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            self.bodies.append(body)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver(monkeypatch):
    Receiver.bodies = []
    with serve(Receiver) as url:
        monkeypatch.setenv("ALERT_WEBHOOK_URL", f"{url}/hooks/alerts")
        yield Receiver.bodies


@pytest.fixture
def clock(monkeypatch):
    now = {"t": NOW}
    monkeypatch.setattr(metrics, "clock", lambda: now["t"])
    monkeypatch.setattr(alerts, "_state", {})
    for name in ("SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY"):  # no database here: its signals are unknown
        monkeypatch.delenv(name, raising=False)
    return now


@pytest.fixture
def redis(monkeypatch, clock):
    with fake_upstash(monkeypatch, local=True) as fake:
        yield fake


def minute_of_misses(redis, minute):
    names, args = recorder.write_arguments({(minute, "search:LOAD"): 20, (minute, "search:HIT"): 1})
    upstash.run(recorder.WRITE, names, args)


def test_an_alert_held_for_minutes_is_posted_once_logged_once_and_shown(redis, receiver, clock, caplog):
    caplog.set_level(logging.ERROR, logger="lib.ops.alerts")
    for i in range(6):  # six bad minutes, the cron every minute (twice in one of them)
        minute_of_misses(redis, MINUTE + i)
        clock["t"] = NOW + 60 * i
        alerts.run()
        if i == 3:
            alerts.run()
    assert [body["text"] for body in receiver] == [
        "[Dousell Immo] Alerte hit_rate : Taux de succès du cache à 4,8 % sur 5 minutes (objectif : plus de 90 %)."]
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["alert hit_rate fired"]
    shown = report.report("1h")["alerts"]
    assert [(a["name"], a["since"]) for a in shown] == [("hit_rate", "2027-01-15T08:00:00Z")]

    for i in range(6, 14):  # traffic healthy again: the five-minute look-back forgets the misses, then clears
        names, args = recorder.write_arguments({(MINUTE + i, "search:HIT"): 1000})
        upstash.run(recorder.WRITE, names, args)
        clock["t"] = NOW + 60 * i
        alerts.run()
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["alert hit_rate fired", "alert hit_rate cleared"]
    assert len(receiver) == 1, "a clear is logged and leaves the page; it is not posted"
    assert report.report("1h")["alerts"] == []


def test_redis_unreachable_fires_from_the_instances_memory_and_is_posted(redis, receiver, clock):
    redis.down = httpx.ConnectError("refused")
    for i in range(4):
        clock["t"] = NOW + 60 * i
        upstash.breaker.reset()  # each minute's cron tries Redis again
        assert alerts.run()["firing"] == ([] if i < 2 else ["redis"])
    assert [body["text"].split(" :")[0] for body in receiver] == ["[Dousell Immo] Alerte redis"]


def test_redis_back_the_alert_fired_meanwhile_is_neither_fired_nor_posted_again(redis, receiver, clock):
    redis.down = httpx.ConnectError("refused")
    for i in range(3):
        clock["t"] = NOW + 60 * i
        upstash.breaker.reset()
        alerts.run()
    redis.down = None
    upstash.breaker.reset()
    for i in range(3, 6):  # back, with requests served meanwhile while the breaker was open
        names, args = recorder.write_arguments({(MINUTE + i, "breaker:open"): 2})
        upstash.run(recorder.WRITE, names, args)
        clock["t"] = NOW + 60 * i
        assert alerts.run()["firing"] == ["redis"]
    assert len(receiver) == 1 and [a["name"] for a in report.report("1h")["alerts"]] == ["redis"]


def test_a_webhook_down_fails_nothing_and_is_tried_again_next_minute(redis, clock, monkeypatch):
    sent = []

    def flaky(url, body):
        sent.append(body)
        if len(sent) == 1:
            raise httpx.ConnectError("refused")

    monkeypatch.setenv("ALERT_WEBHOOK_URL", "http://127.0.0.1:9/hooks")
    for i in range(5):
        minute_of_misses(redis, MINUTE + i)
        clock["t"] = NOW + 60 * i
        alerts.run(post=flaky)
    assert len(sent) == 2, "failed at the firing minute, delivered the next, then nothing more"
