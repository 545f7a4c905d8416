"""GET /api/properties on a real loopback server, the list itself stubbed: the query as the endpoint reads it,
each bad parameter a 422 `invalid_filter` in French; and what its file loads at cold start (no pydantic)."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from lib.domain import properties
from tests.support import ROOT, api_module, serve

index = api_module("api/properties/index.py")


@pytest.fixture
def api(monkeypatch):
    asked: list[tuple[str | None, int, int]] = []

    def list_public(city: str | None = None, page: int = 1, per_page: int = properties.LIST_PER_PAGE) -> dict:
        asked.append((city, page, per_page))
        return {"properties": [], "count": 0, "page": page, "per_page": per_page, "total": 0, "total_estimated": False}

    monkeypatch.setattr(properties, "list_public", list_public)
    with serve(index.handler) as base, httpx.Client(base_url=base, timeout=5) as client:
        yield client, asked


@pytest.mark.parametrize("query, asked", [
    ("", (None, 1, 20)),
    ("?city=%20dakar%20&page=2&per_page=5", ("Dakar", 2, 5)),
    ("?page=%2B5&per_page=10.0", (None, 5, 10)),  # pydantic's lax ints, as clients had them
    ("?page=%205%20&per_page=1_0", (None, 5, 10)),
    ("?page=50", (None, 50, 20)),  # the last page within the first 1,000 listings
])
def test_a_good_query_reaches_the_list_as_numbers(api, query, asked):
    client, seen = api
    response = client.get(f"/api/properties{query}")
    assert response.status_code == 200, response.text
    assert seen == [asked]
    assert (response.json()["page"], response.json()["per_page"]) == asked[1:]


@pytest.mark.parametrize("query, details", [
    ("page=0", [("page", "greater_than_equal", "Valeur trop petite.")]),
    ("page=abc", [("page", "int_parsing", "Doit être un nombre entier.")]),
    ("page=", [("page", "int_parsing", "Doit être un nombre entier.")]),
    ("per_page=0", [("per_page", "greater_than_equal", "Valeur trop petite.")]),
    ("per_page=101", [("per_page", "less_than_equal", "Valeur trop grande.")]),
    ("page=51", [("page", "page_too_deep", "Au-delà des 1000 premières annonces")]),
    ("page=99999999999999999999999", [("page", "page_too_deep", "Au-delà des 1000 premières annonces")]),
    ("page=1&page=2", [("page", "repeated", "Paramètre répété.")]),
    ("sort=price", [("sort", "extra_forbidden", "Champ inconnu.")]),
    ("city=", [("city", "invalid_characters", "Lettres, chiffres")]),
    ("page=0&per_page=x&town=Dakar", [("page", "greater_than_equal", "Valeur trop petite."),
                                      ("per_page", "int_parsing", "Doit être un nombre entier."),
                                      ("town", "extra_forbidden", "Champ inconnu.")]),
])
def test_a_bad_query_is_a_422_naming_each_parameter_in_french(api, query, details):
    client, seen = api
    response = client.get(f"/api/properties?{query}")
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_filter" and error["message"]
    assert [(d["field"], d["code"]) for d in error["details"]] == [(field, code) for field, code, _ in details]
    for detail, (_, _, message) in zip(error["details"], details, strict=True):
        assert detail["message"].startswith(message), detail
    assert seen == []


# Loaded by path as Vercel loads a function (bench/importtime.py, row 5, measures the same load).
COLD_LOAD = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("vc_handler_module", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
print(" ".join(sorted({name.split(".")[0] for name in sys.modules} & {"pydantic", "pydantic_core", "supabase",
                                                                       "postgrest", "jwt"})))
"""


def test_its_file_loads_no_pydantic_at_cold_start():
    # lib/web/request.py's rule: pydantic is for the endpoints that take a body, never on the read path.
    loaded = subprocess.run([sys.executable, "-c", COLD_LOAD, "api/properties/index.py"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.split() == []
