"""host/routes: one route per api/ file, named as Vercel names its function (compared with `vercel build`'s
own table in tests/test_vercel_build.py)."""

from __future__ import annotations

import re
from pathlib import Path

from host.routes import Routes, api_files, pattern_of

ROOT = Path(__file__).resolve().parents[2]


def test_every_api_file_is_one_route_reached_by_its_own_paths():
    routes = Routes.load()
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "api").rglob("*.py") if "__" not in str(p))
    assert sorted(r.file for r in routes.routes) == files == api_files()
    for route in routes.routes:
        sample = re.sub(r"\[\w+\]", "42", route.pattern)
        assert routes.match(sample) is route and routes.match(sample + "/") is route, sample


def test_a_fixed_name_wins_over_a_dynamic_segment_beside_it():
    routes = Routes.load()
    assert routes.match("/api/visits/slots").file == "api/visits/slots.py"
    assert routes.match("/api/visits/slots2").file == "api/visits/[id].py"
    assert routes.match("/api/properties/index").file == "api/properties/index.py"


def test_a_dynamic_segment_is_one_segment_and_nothing_else_is_a_route():
    routes = Routes.load()
    for path in ("/api/properties/1/2", "/api/nowhere", "/api", "/", "/api/properties//", "/api/health.py"):
        assert routes.match(path) is None, path


def test_patterns_are_the_files_without_index_or_suffix():
    assert pattern_of("api/properties/index.py") == "/api/properties"
    assert pattern_of("api/properties/[id].py") == "/api/properties/[id]"
    assert pattern_of("api/health.py") == "/api/health"
