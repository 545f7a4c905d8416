"""public/monitoring.js when Upstash's request quota is used up: the page says so at once, with its end.

/api/metrics answers 503 `metrics_unavailable` with `details.redis_quota` while the edge holds Redis off
for a used-up quota (lib/ops/report). Holding the real stack's functions off would last until midnight
UTC, so here the page is served by a small local server whose /api/metrics gives that answer, built by
lib's own error class; real headless Chromium draws it (the helpers of test_monitoring_page).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler
from typing import Any

import pytest

from lib.errors import MetricsUnavailable
from tests.integration import test_monitoring_page
from tests.integration.conftest import ROOT
from tests.integration.test_monitoring_page import Page, browse
from tests.support import serve

chromium = test_monitoring_page.chromium  # the fixture: headless Chromium, or a skip (a failure on CI)

QUOTA = {"quota": "daily", "until": "2026-12-08T00:00:00Z"}


def quota_answer() -> bytes:
    error = MetricsUnavailable("Les métriques sont indisponibles : le quota de requêtes Redis est atteint.",
                               details={"redis_quota": QUOTA})
    return json.dumps(error.to_body()).encode("utf-8")


class Site(SimpleHTTPRequestHandler):
    """public/ as the API serves it, and /api/metrics answering the quota's 503."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, directory=str(ROOT / "public"), **kwargs)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path.startswith("/api/metrics"):
            body = quota_answer()
            self.send_response(503)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
        pass


@pytest.fixture
def site() -> Iterator[str]:
    with serve(Site) as url:
        yield url


def test_a_used_up_quota_is_an_alert_at_once_with_the_time_it_ends_in_dakar(site, chromium, tmp_path):
    page = Page(browse(chromium, f"{site}/monitoring.html#token=t", tmp_path))
    assert page.state == "unavailable"
    assert page.alerts == ["upstash_quota"], "no need to wait alert_after: a quota is known at once"
    assert "alerts" not in page.hidden
    assert "Quota quotidien de commandes Upstash atteint" in page.dom
    assert "8 déc." in page.dom and "00:00" in page.dom, "midnight UTC is midnight in Dakar (UTC+0)"
    assert "Quota quotidien" in page.status and "Redis est indisponible" not in page.status
