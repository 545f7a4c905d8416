"""lib/edge/breaker: closed, open for a growing interval, one probe when half-open."""

from __future__ import annotations

import pytest

from lib.edge import breaker as breaker_module
from lib.edge.breaker import Breaker


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(breaker_module, "clock", fake)
    return fake


def test_a_closed_breaker_lets_every_call_through():
    breaker = Breaker()
    assert all(breaker.allow() for _ in range(10))


def test_a_failure_opens_it_for_the_base_interval(clock):
    breaker = Breaker(base=1.0)
    breaker.failure()
    assert (breaker.state, breaker.interval) == ("open", 1.0)
    assert breaker.allow() is False
    clock.now += 0.99
    assert breaker.allow() is False


def test_only_one_caller_probes_while_half_open(clock):
    breaker = Breaker()
    breaker.failure()
    clock.now += 1.0
    assert breaker.allow() is True
    assert breaker.allow() is False
    assert breaker.state == "half-open"


def test_a_failed_probe_reopens_it_for_twice_as_long_and_a_good_one_closes_it(clock):
    breaker = Breaker()
    breaker.failure()
    clock.now += 1.0
    assert breaker.allow()
    breaker.failure()
    assert (breaker.state, breaker.interval) == ("open", 2.0)
    clock.now += 2.0
    assert breaker.allow()
    breaker.success()
    assert (breaker.state, breaker.interval) == ("closed", 0.0)


def test_the_interval_is_capped(clock):
    breaker = Breaker(base=1.0, cap=30.0)
    for _ in range(10):
        breaker.failure()
        clock.now += breaker.interval
        breaker.allow()
    assert breaker.interval == 30.0


def test_a_hold_opens_it_for_a_known_time_then_one_probe_decides(clock):
    breaker = Breaker(base=1.0)
    assert breaker.hold(3600.0, "monthly_quota") == clock.now + 3600
    assert (breaker.state, breaker.reason, breaker.seconds_left()) == ("open", "monthly_quota", 3600.0)
    clock.now += 3599
    assert breaker.allow() is False
    clock.now += 1
    assert breaker.allow() is True and breaker.allow() is False  # one probe
    breaker.failure()  # an outage now: the back-off starts afresh, at its base
    assert (breaker.state, breaker.interval, breaker.reason) == ("open", 1.0, "outage")
    clock.now += 1
    assert breaker.allow()
    breaker.success()
    assert (breaker.state, breaker.reason, breaker.seconds_left()) == ("closed", None, 0.0)


def test_closed_and_probing_say_what_callers_ask(clock):
    breaker = Breaker(base=1.0)
    assert breaker.closed and not breaker.probing
    breaker.failure()
    assert not breaker.closed and not breaker.probing  # open: calls are skipped
    clock.now += 1.0
    assert breaker.allow()
    assert not breaker.closed and breaker.probing  # this caller's probe is out
    breaker.success()
    assert breaker.closed and not breaker.probing
