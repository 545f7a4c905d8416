"""The integration tests that go through `vercel dev`, run against the Dakar host instead (`make dakar`).

The same test functions, imported from their modules; only `stack` is chosen here: `python -m
devstack dakar` on free ports (host/ with two workers, Valkey over TCP, no Upstash variable in its
environment, the same stand-ins and demo data). A selection, not the whole suite twice: the
concurrent payments and bookings (with Redis up and stopped), the read path's hits and its
Redis-down fallback, and a smoke set.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cached_property

import httpx
import pytest

from devstack import child
from tests.integration.conftest import STACK_ENV, START_TIMEOUT
from tests.integration.test_read_path import (  # noqa: F401  (collected here too, on the host)
    test_a_read_is_a_miss_then_a_hit_with_the_same_body,
    test_bad_reads_get_the_contract_error_and_never_a_500,
    test_with_redis_stopped_every_read_still_answers_and_hits_again_once_it_is_back,
)
from tests.integration.test_stack_smoke import (  # noqa: F401
    test_no_source_file_is_served,
    test_the_signed_in_user_reads_their_own_profile,
)
from tests.integration.test_write_path import (  # noqa: F401  (fixtures and tests, by name)
    built,
    concurrency_table,
    pd,
    redis_stopped,
    test_a_booking_shows_at_once_in_the_free_slots,
    test_fifty_simultaneous_bookings_of_one_slot_make_one_visit,
    test_fifty_simultaneous_bookings_with_redis_stopped_still_make_one_visit,
    test_fifty_simultaneous_payment_requests_make_one_invoice_and_one_pending_row,
    test_fifty_simultaneous_payment_requests_with_redis_stopped_still_make_one,
)


class DakarStack(child.ChildStack):
    @cached_property
    def api(self) -> httpx.Client:
        """A client to the Dakar host, closed by `stop()`."""
        return httpx.Client(base_url=self.url("dakar"), timeout=60)


@pytest.fixture(scope="module")
def stack() -> Iterator[DakarStack]:
    """The Dakar stack for this module's tests (every test above takes `stack`: this one)."""
    try:
        running = child.start(api=False, dakar=True, purpose="dakar", timeout=START_TIMEOUT, cls=DakarStack,
                              extra_env=STACK_ENV)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield running
    finally:
        running.stop()


def test_health_is_up_on_the_dakar_host_with_valkey_over_tcp(stack):
    response = stack.api.get("/api/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "redis": "up", "database": "up", "environment": "dakar",
                               "paydunya_mode": "test"}
    started = [json.loads(line) for line in (stack.state / "dakar.log").read_text().splitlines()
               if '"host-started"' in line]
    assert started and started[0]["redis"] == "valkey-tcp" and started[0]["workers"] == 2


def test_the_cron_reaches_the_host_with_its_secret(stack):
    from devstack.__main__ import CRON_SECRET

    refused = stack.api.get("/api/cron/reconcile")
    assert refused.status_code == 401
    ran = stack.api.get("/api/cron/reconcile", headers={"Authorization": f"Bearer {CRON_SECRET}"})
    assert ran.status_code == 200, ran.text
