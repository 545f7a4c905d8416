"""public/monitoring.html in real headless Chromium (Debian's `chromium`) against the local stack.

The page is opened as a person would, with the token in the URL fragment (`#token=...`, which
the page moves to sessionStorage). Chromium runs until the page is idle (`--virtual-time-budget`:
virtual time stands still while a fetch is pending), then prints the DOM or a screenshot. Every
figure the page draws carries its raw value in `data-value`, compared here with `/api/metrics`;
each chart says in `data-points` how many points it drew. The two screenshots of docs/monitoring.md
(docs/monitoring.png, docs/monitoring-alert.png) are taken here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, Drain

DOCS = ROOT / "docs"
BUDGET_MS = 4000  # virtual time: one load and one fetch; less than the page's 5 s refresh


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        message = "headless Chromium is needed for the monitoring page test: apt-get install chromium"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it (.ci/run): a missing browser is a broken setup there
        pytest.skip(message)
    return path


class Page:
    """What Chromium rendered: the figures (data-figure → data-value and text), the state, the status line."""

    def __init__(self, dom: str):
        self.dom = dom
        self.figures: dict[str, tuple[str, str]] = {}
        self.state = ""
        self.status = ""
        self.hidden: set[str] = set()
        self.charts: dict[str, int] = {}  # data-chart → data-points
        self.sparklines: dict[str, int] = {}  # family → data-points
        self.alerts: list[str] = []  # data-alert of each alert shown
        self.states: dict[str, str] = {}  # KPI → data-state
        _Reader(self).feed(dom)

    def value(self, name: str) -> float | None:
        raw = self.figures[name][0]
        return None if raw == "null" else float(raw)

    def text(self, name: str) -> str:
        return self.figures[name][1]


class _Reader(HTMLParser):
    def __init__(self, page: Page):
        super().__init__()
        self.page = page
        self.open: list[tuple[str, str]] = []  # (kind, name) of elements whose text we collect

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.page.state = attrs.get("data-state", "")
        if "hidden" in attrs and attrs.get("id"):
            self.page.hidden.add(attrs["id"])
        if "data-chart" in attrs and "data-points" in attrs:
            self.page.charts[attrs["data-chart"]] = int(attrs["data-points"])
        if "data-sparkline" in attrs and "data-points" in attrs:
            self.page.sparklines[attrs["data-sparkline"]] = int(attrs["data-points"])
        if "data-alert" in attrs:
            self.page.alerts.append(attrs["data-alert"])
        if "data-kpi" in attrs:
            self.page.states[attrs["data-kpi"]] = attrs.get("data-state", "")
        if "data-figure" in attrs:
            self.page.figures[attrs["data-figure"]] = (attrs.get("data-value", ""), "")
            self.open.append(("figure", attrs["data-figure"]))
        elif attrs.get("id") == "status":
            self.open.append(("status", ""))

    def handle_endtag(self, tag):
        if self.open and tag in ("strong", "p"):
            self.open.pop()

    def handle_data(self, data):
        if not self.open:
            return
        kind, name = self.open[-1]
        if kind == "figure":
            value, text = self.page.figures[name]
            self.page.figures[name] = (value, text + data)
        else:
            self.page.status += data


def browse(chromium: str, url: str, tmp_path: Path, *, screenshot: Path | None = None, budget_ms: int = BUDGET_MS,
           size: str = "1280,2400") -> str:
    flags = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}", f"--virtual-time-budget={budget_ms}",
        f"--window-size={size}", "--hide-scrollbars",
    ]
    flags += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    result = subprocess.run([*flags, url], capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def page_url(stack, fragment: str = "") -> str:
    return f"http://127.0.0.1:{stack.ports.api}/monitoring.html{fragment}"


def drive_traffic(stack, metrics_token):
    """Some hits and misses over three families, and a refused payment (a lock blocked); then every
    function it drove has written its metrics (they write at most every 5 s)."""
    drain = Drain.clean(stack, metrics_token)
    for path, times in (("/api/properties/123", 6), ("/api/properties", 4), ("/api/visits/slots?property_id=789", 3)):
        for _ in range(times):
            assert stack.api.get(path).status_code == 200
    stack.redis("SET", "dousell:lock:payment:lease123", "another-request", "PX", 30_000)
    try:
        stack.api.post("/api/payments", headers=stack.auth("moussa.diop@example.sn"), json={"lease_id": 123})
    finally:
        stack.redis("DEL", "dousell:lock:payment:lease123")
    drain("/api/properties/[id]", "/api/properties", "/api/visits/slots", "/api/payments")


# Figures that do not move between the test's read and the page's (the page's own requests are
# not counted); Redis memory does, a little, and is checked loosely below.
STABLE = [
    "cache.hit_rate", "cache.hits", "cache.stale", "cache.misses", "cache.bypasses",
    "latency.api.p50_ms", "latency.api.p95_ms", "latency.api.count",
    "latency.upstash.p50_ms", "latency.upstash.count",
    "locks.prevented_rate", "locks.acquired", "locks.blocked", "locks.expired",
    "redis.max_memory_bytes", "database.queries_served", "database.queries_avoided", "metrics.lost_writes",
]


def lookup(body: dict, dotted: str):
    node = body
    for part in dotted.split("."):
        node = node[part]
    return node


def test_the_page_shows_the_figures_api_metrics_returns(stack, chromium, metrics_token, tmp_path):
    drive_traffic(stack, metrics_token)
    expected = stack.api.get("/api/metrics", headers={"Authorization": f"Bearer {metrics_token}"}).json()
    assert expected["cache"]["hits"] > 0 and expected["locks"]["blocked"] == 1

    page = Page(browse(chromium, page_url(stack, f"#token={metrics_token}"), tmp_path))
    assert page.state == "ready", (page.status, page.dom[-1500:])
    assert "dashboard" not in page.hidden and "login" in page.hidden
    for name in STABLE:
        assert page.value(name) == lookup(expected, name), name
    for family, figures in expected["cache"]["families"].items():
        assert page.value(f"families.{family}.hit_rate") == figures["hit_rate"], family
        assert page.value(f"families.{family}.hits") == figures["hits"], family
    for endpoint, figures in expected["latency"]["api"]["endpoints"].items():
        assert page.value(f"endpoints.{endpoint}.count") == figures["count"], endpoint
    assert page.value("redis.used_memory_bytes") == pytest.approx(expected["redis"]["used_memory_bytes"], rel=0.2)
    assert page.value("redis.keys") == pytest.approx(expected["redis"]["keys"], abs=3)

    # Written as a person reads it, in French, next to each bar.
    rate = expected["cache"]["hit_rate"] * 100
    assert page.text("cache.hit_rate") == f"{rate:.1f}".replace(".", ",") + "\u00a0%"
    assert page.text("locks.blocked") == "1"
    assert page.text("latency.api.p50_ms").endswith(("\u00a0ms", "\u00a0s"))


def points(values) -> int:
    return sum(v is not None for v in values)


def test_the_charts_are_drawn_from_the_series_api_metrics_returns(stack, chromium, metrics_token, tmp_path):
    drive_traffic(stack, metrics_token)
    expected = stack.api.get("/api/metrics", headers={"Authorization": f"Bearer {metrics_token}"}).json()
    series = expected["series"]
    assert series["step_seconds"] == 60 and len(series["t"]) == 60 and points(series["hit_rate"]) >= 1

    DOCS.mkdir(exist_ok=True)
    shot = DOCS / "monitoring.png"
    shot.unlink(missing_ok=True)
    browse(chromium, page_url(stack, f"#token={metrics_token}"), tmp_path, screenshot=shot)
    assert shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = Page(browse(chromium, page_url(stack, f"#token={metrics_token}"), tmp_path))
    assert page.state == "ready", (page.status, page.dom[-1500:])
    # The page's own requests are not counted, so the points it drew are the ones read here.
    assert page.charts["hit_rate"] == points(series["hit_rate"])
    assert page.charts["latency"] == points(series["p50_ms"])
    assert page.charts["traffic"] == sum(1 for n in series["requests"] if n)
    assert page.charts["locks"] >= 1, "the refused payment is a locked operation of the window"
    for family, values in series["families"].items():
        assert page.sparklines[family] == points(values), family
    assert page.dom.count('class="uplot') >= 5, "uPlot drew the charts (no chart is an empty box)"


def test_the_wrong_figures_are_gone(stack, chromium, metrics_token, tmp_path):
    """Seen on the page before: the locks card "pas encore de données" beside "11 acquis · 0 bloqués";
    P50 "5 000,0 ms" (the last bucket's bound); the family `visits` shown by its code name."""
    drive_traffic(stack, metrics_token)
    expected = stack.api.get("/api/metrics", headers={"Authorization": f"Bearer {metrics_token}"}).json()
    page = Page(browse(chromium, page_url(stack, f"#token={metrics_token}"), tmp_path))
    if expected["locks"]["acquired"] + expected["locks"]["blocked"]:
        assert page.states["locks"] != "none" and page.value("locks.prevented_rate") is not None
    for endpoint, figures in expected["latency"]["api"]["endpoints"].items():
        text = page.text(f"endpoints.{endpoint}.p50_ms")
        assert text != "5\u202f000,0\u00a0ms" and "5 000,0" not in text, endpoint
        if figures["p50_above"]:
            assert text.startswith("> 30"), endpoint
    assert "Visites réservées" in page.dom and ">visits<" in page.dom  # the label, the code under it


def test_without_a_token_the_page_asks_for_it(stack, chromium, tmp_path):
    page = Page(browse(chromium, page_url(stack), tmp_path))
    assert page.state == "login"
    assert "login" not in page.hidden and "dashboard" in page.hidden
    assert "METRICS_TOKEN" in page.status


def test_a_refused_token_is_asked_for_again(stack, chromium, tmp_path):
    page = Page(browse(chromium, page_url(stack, "#token=not-the-token"), tmp_path))
    assert page.state == "login"
    assert "Jeton refusé" in page.status


def test_with_redis_stopped_the_page_says_redis_is_down(stack, chromium, metrics_token, tmp_path):
    stack.devstack("redis-stop")
    try:
        page = Page(browse(chromium, page_url(stack, f"#token={metrics_token}"), tmp_path,))
    finally:
        stack.devstack("redis-start")
    assert page.state == "unavailable"
    assert "Redis est indisponible" in page.status
    assert page.alerts == [], "one 503 is not yet an alert"


def test_redis_stopped_long_enough_raises_the_alert_at_the_top(stack, chromium, metrics_token, tmp_path):
    # `alert_after=4`: the page's alert after 4 s of 503s instead of 3 minutes; the page polls every
    # 5 s of Chromium's virtual time, so the second poll (t = 5 s) raises it.
    url = page_url(stack, f"#token={metrics_token}&alert_after=4")
    stack.devstack("redis-stop")
    try:
        page = Page(browse(chromium, url, tmp_path, budget_ms=9000))
        DOCS.mkdir(exist_ok=True)
        shot = DOCS / "monitoring-alert.png"
        shot.unlink(missing_ok=True)
        browse(chromium, url, tmp_path, screenshot=shot, budget_ms=9000, size="1280,1300")
    finally:
        stack.devstack("redis-start")
    assert page.state == "unavailable" and page.alerts == ["redis"]
    assert "alerts" not in page.hidden and "Redis injoignable" in page.dom
    assert shot.stat().st_size > 20_000
