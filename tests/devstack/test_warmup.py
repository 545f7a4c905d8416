"""`make dev` builds and wakes every function before it says "ready" (devstack/warmup.py)."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from devstack import warmup
from tests.support import serve

REPO = Path(__file__).resolve().parents[2]


def test_every_api_file_is_a_function_with_a_concrete_route():
    found = {fn.route: fn for fn in warmup.functions()}
    files = sorted(p for p in (REPO / "api").rglob("*.py") if not p.name.startswith("_"))
    assert len(found) == len(files)
    assert {fn.path for fn in found.values()} == set(files)
    assert "/api/properties" in found  # index.py is its folder's route
    assert "/api/properties/1" in found  # [id] filled with a concrete id
    assert all("[" not in route and not route.endswith(".py") for route in found)


@pytest.mark.parametrize(("route", "method"), [
    ("/api/properties", "GET"),  # a read: its own GET
    ("/api/payments", "GET"),  # GET and POST: the read, which writes nothing
    ("/api/paydunya/ipn", "POST"),  # POST only: a body it refuses before writing anything
    ("/api/visits", "GET"),  # GET (the user's visits) and POST
    ("/api/visits/1", "DELETE"),  # DELETE only: the stack wakes it as Moussa, who has no visit 1 (404)
])
def test_each_function_is_woken_by_a_request_that_writes_nothing(route, method):
    found = {fn.route: fn for fn in warmup.functions()}
    assert found[route].method == method


def test_functions_sharing_a_build_folder_are_never_built_at_once():
    # @vercel/python builds each function in .vercel/cache/<file name>_py: the two index.py share one.
    groups = warmup._by_build_folder(warmup.functions())
    names = [{fn.path.name for fn in group} for group in groups]
    assert all(len(n) == 1 for n in names)
    assert len({next(iter(n)) for n in names}) == len(groups)
    index = next(group for group in groups if group[0].path.name == "index.py")
    assert {fn.route for fn in index} >= {"/api/properties", "/api/visits"}


def _api(answer):
    """A stand-in for vercel dev: `answer(method, path)` → (status, content type, body)."""
    seen: list[tuple[str, str, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def _any(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            seen.append((self.command, self.path, self.headers.get("Authorization")))
            status, kind, body = answer(self.command, self.path)
            payload = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = _any

        def log_message(self, *args):
            pass

    return Handler, seen


def test_every_function_answers_once_with_the_signed_in_token():
    handler, seen = _api(lambda method, path: (200, "application/json", json.dumps({"ok": path})))
    with serve(handler) as url:
        results = warmup.warm(url, "a-token", timeout=10)
    routes = {fn.route for fn in warmup.functions()}
    assert {route for route, *_ in results} == routes
    assert sorted(path for _, path, _ in seen) == sorted(routes)
    assert {auth for *_, auth in seen} == {"Bearer a-token"}
    assert "\n".join(warmup.report(results)).count("\n") == len(routes) - 1


def test_a_4xx_from_the_function_is_an_answer():
    handler, _ = _api(lambda method, path: (422, "application/json", '{"error": {"code": "validation_error"}}'))
    with serve(handler) as url:
        results = warmup.warm(url, None, timeout=10)
    assert {status for _, _, status, _ in results} == {422}


def test_vercel_devs_own_error_page_fails_the_warmup_naming_the_function():
    def answer(method, path):
        if path == "/api/search":
            return 502, "text/plain", "An error occurred with this application.\n\nNO_RESPONSE_FROM_FUNCTION"
        return 200, "application/json", "{}"

    handler, _ = _api(answer)
    with serve(handler) as url, pytest.raises(warmup.WarmupFailed, match=r"(?s)GET /api/search: HTTP 502 .*NO_RESPONSE"):
        warmup.warm(url, None, timeout=10)
