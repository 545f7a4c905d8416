"""public/monitoring.js reads `#window=` from the URL fragment: whatever a link carries there, the page
still draws (a crafted value once built a CSS selector, threw, and left the page blank). Real headless
Chromium against the local stack, with the helpers of tests/integration/test_monitoring_page.py."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.integration import test_monitoring_page
from tests.integration.test_monitoring_page import Page, browse, page_url

chromium = test_monitoring_page.chromium  # the fixture: headless Chromium, or a skip (a failure on CI)


@pytest.mark.parametrize("window, label", [
    ("'", "dernière heure"),  # an unterminated CSS string: querySelector threw a SyntaxError
    ("']", "dernière heure"),
    ('"]), body', "dernière heure"),
    ("\\", "dernière heure"),
    ("last_24h'", "dernière heure"),  # close to a real value is not a real value
    ("last_24h", "dernières 24 heures"),  # a real one is still honoured
])
def test_a_crafted_window_in_the_fragment_leaves_the_page_working(stack, chromium, metrics_token, tmp_path, window,
                                                                    label):
    page = Page(browse(chromium, page_url(stack, f"#token={metrics_token}&window={quote(window)}"), tmp_path))
    assert page.state == "ready", (page.status, page.dom[-1500:])
    assert "dashboard" not in page.hidden and "login" in page.hidden
    assert f"({label})" in page.status
