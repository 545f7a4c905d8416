"""lib/ops/cron: the cron's jobs run one after the other; a failure is a 503 after every job ran, a bug is never swallowed."""

from __future__ import annotations

import pytest

from lib.errors import DatabaseUnavailable, ServiceUnavailable
from lib.ops import cron


def test_every_job_runs_in_order_and_the_answer_holds_their_counts() -> None:
    ran: list[str] = []

    def job(name: str, counts: dict[str, int]) -> cron.Job:
        return name, lambda: ran.append(name) or counts

    answer = cron.run_jobs([job("invalidations", {"invalidated": 3}), job("payments", {"confirmed": 1})])

    assert ran == ["invalidations", "payments"]
    assert answer == {"jobs": {"invalidations": {"invalidated": 3}, "payments": {"confirmed": 1}}}


def test_a_failing_job_does_not_stop_the_next_and_the_answer_is_a_503(caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []

    def broken() -> dict[str, int]:
        raise DatabaseUnavailable()

    with pytest.raises(ServiceUnavailable) as failed:
        cron.run_jobs([("first", broken), ("second", lambda: ran.append("second") or {"ok": 1})])

    assert ran == ["second"]
    assert failed.value.status == 503 and failed.value.details is None, "nothing internal reaches the answer"
    assert "cron job first failed: database_unavailable" in caplog.text


def test_a_bug_in_a_job_is_raised_not_reported_as_a_failed_job() -> None:
    def buggy() -> dict[str, int]:
        raise KeyError("table_name")

    with pytest.raises(KeyError):
        cron.run_jobs([("buggy", buggy)])


def test_no_job_is_an_empty_answer() -> None:
    assert cron.run_jobs([]) == {"jobs": {}}
