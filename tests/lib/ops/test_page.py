"""public/monitoring*: every key family the report lists has a French label; the page loads the uPlot it ships."""

from __future__ import annotations

import re
from pathlib import Path

from lib.ops import series

PUBLIC = Path(__file__).resolve().parents[3] / "public"


def labels() -> dict[str, str]:
    script = (PUBLIC / "monitoring.js").read_text(encoding="utf-8")
    block = re.search(r"var FAMILIES = \{(.*?)\};", script, re.S)
    assert block, "monitoring.js defines FAMILIES"
    return dict(re.findall(r"^\s*(\w+): \"([^\"]+)\"", block.group(1), re.M))


def test_every_family_the_report_lists_has_a_french_label():
    """`visits` was shown by its code name: the only family without a label."""
    assert sorted(set(series.FAMILIES) - set(labels())) == []
    assert labels()["visits"] == "Visites réservées"


def test_the_page_loads_the_pinned_uplot_it_ships_with_its_licence():
    page = (PUBLIC / "monitoring.html").read_text(encoding="utf-8")
    for asset in ("/vendor/uplot/uPlot.iife.min.js", "/vendor/uplot/uPlot.min.css"):
        assert asset in page
        assert (PUBLIC / asset.lstrip("/")).is_file()
    assert "(v1.6.32)" in (PUBLIC / "vendor/uplot/uPlot.iife.min.js").read_text(encoding="utf-8")[:80]
    assert "MIT License" in (PUBLIC / "vendor/uplot/LICENSE").read_text(encoding="utf-8")
    assert "https://" not in re.sub(r"<a [^>]*>", "", page), "no CDN: every asset is served from public/"
