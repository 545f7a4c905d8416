"""lib/web/http: routing, parsing, limits, error mapping, headers and the request log, on a real HTTP server."""

from __future__ import annotations

import ast
import importlib.util
import json
import socket
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel, ConfigDict, Field

from lib import context
from lib.errors import AlreadyPaid, InvalidFilter
from lib.web.http import MAX_BODY_BYTES, Endpoint, Reply
from tests.support import serve


class Payment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lease_id: int = Field(gt=0)
    period: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}$")
    note: str | None = None


class Filters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    city: str | None = None
    min_price: int | None = Field(default=None, ge=0)


class Things(Endpoint):
    path_param = "id"

    def get(self, req):
        context.set_cache_status("HIT")
        return {"id": req.path_id()}

    def patch(self, req):
        body = req.body_as(Payment)
        return Reply({"lease_id": body.lease_id, "id": req.path_id()}, 201, {"X-Extra": "yes"})


class Search(Endpoint):
    def get(self, req):
        filters = req.query_as(Filters, InvalidFilter)
        return {"filters": filters.model_dump(exclude_none=True)}

    def post(self, req):
        if req.json().get("boom"):
            raise RuntimeError("a bug with a secret-in-message")
        raise AlreadyPaid()


@pytest.fixture(scope="module")
def things():
    with serve(Things) as base, httpx.Client(base_url=base, timeout=5) as client:
        yield client


@pytest.fixture(scope="module")
def search():
    with serve(Search) as base, httpx.Client(base_url=base, timeout=5) as client:
        yield client


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["message"], "every error carries a French message"
    return body["error"]


def test_a_get_answers_json_with_the_contract_headers(things):
    response = things.get("/api/things/42?id=42")
    assert response.status_code == 200
    assert response.json() == {"id": 42}
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-cache"] == "HIT"
    assert "total;dur=" in response.headers["server-timing"]


def test_the_path_segment_wins_over_a_forged_id_query(things):
    assert things.get("/api/things/42?id=99").json() == {"id": 42}


@pytest.mark.parametrize("path", [
    "/api/things/abc",  # not a number
    "/api/things/0",  # ids start at 1
    "/api/things/-3",  # negative
    "/api/things/99999999999999999999999",  # beyond bigint
    "/api/things/%D9%A3",  # a non-ASCII digit
])
def test_an_id_that_is_not_a_positive_integer_is_a_404(things, path):
    response = things.get(path)
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_a_wrong_method_is_405_with_allow(things):
    response = things.post("/api/things/1", json={})
    assert response.status_code == 405
    assert error_of(response)["code"] == "method_not_allowed"
    assert response.headers["allow"] == "GET, HEAD, PATCH, OPTIONS"


def test_options_lists_the_methods_and_head_sends_no_body(things):
    options = things.options("/api/things/1")
    assert options.status_code == 204 and options.headers["allow"] == "GET, HEAD, PATCH, OPTIONS"
    head = things.head("/api/things/7")
    assert head.status_code == 200 and head.content == b""


def test_a_valid_body_is_parsed_into_the_model(things):
    response = things.patch("/api/things/5", json={"lease_id": 123, "period": "2026-11"})
    assert response.status_code == 201
    assert response.json() == {"lease_id": 123, "id": 5}
    assert response.headers["x-extra"] == "yes"


@pytest.mark.parametrize("content", [
    b"{not json",  # malformed
    b"",  # empty
    b"[1, 2]",  # JSON but not an object
    b"\xff\xfe",  # not UTF-8
])
def test_a_body_that_is_not_a_json_object_is_400(things, content):
    response = things.patch("/api/things/5", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert error_of(response)["code"] == "malformed_json"


def test_invalid_fields_are_422_and_each_is_listed(things):
    response = things.patch("/api/things/5", json={"period": "novembre", "color": "blue"})
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "validation_error"
    by_field = {d["field"]: d for d in error["details"]}
    assert set(by_field) == {"lease_id", "period", "color"}
    assert by_field["lease_id"]["code"] == "missing"
    assert by_field["color"]["message"] == "Champ inconnu."


def test_a_body_over_64_kib_is_413_and_one_at_the_limit_is_read(things):
    filler = "x" * (MAX_BODY_BYTES - len(json.dumps({"lease_id": 1, "note": ""})))
    at_limit = json.dumps({"lease_id": 1, "note": filler}).encode()
    assert len(at_limit) == MAX_BODY_BYTES
    assert things.patch("/api/things/5", content=at_limit).status_code == 201
    response = things.patch("/api/things/5", content=at_limit + b" ")
    assert response.status_code == 413
    assert error_of(response)["code"] == "payload_too_large"


def raw_exchange(handler_cls: type, request: bytes) -> tuple[int, dict]:
    """Send bytes no HTTP client would send; the status and the JSON body of the answer."""
    with serve(handler_cls) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(request)
            raw = b"".join(iter(lambda: sock.recv(65536), b""))  # the server closes after an error
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize("value, status", [
    (b"abc", 400),
    (b"\xb2", 400),  # `²` (headers are read as Latin-1): str.isdigit() says yes, int() refuses it
    (b"1\xb9", 400),  # `1¹`
    (b"\xd9\xa3", 400),  # an Arabic-Indic three in UTF-8
    (b"-1", 400),
    (b"1e3", 400),
    (b"0x10", 400),
    (b"2, 2", 400),  # a list, as a proxy might fold two headers
    (b"9" * 5000, 413),  # more digits than int() converts: too large, not a crash
    (b"99999999999999999999", 413),
])
def test_a_content_length_that_is_not_ascii_digits_is_400_and_a_huge_one_413(value, status):
    request = b"PATCH /api/things/5 HTTP/1.1\r\nHost: x\r\nContent-Length: " + value + b"\r\n\r\n{}"
    answered, body = raw_exchange(Things, request)
    assert answered == status
    assert body["error"]["code"] == ("bad_request" if status == 400 else "payload_too_large")


def test_two_content_lengths_are_a_400():
    request = b"PATCH /api/things/5 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}"
    status, body = raw_exchange(Things, request)
    assert status == 400 and body["error"]["code"] == "bad_request"


def test_a_request_target_urlsplit_refuses_is_a_400_not_a_dropped_connection():
    status, body = raw_exchange(Things, b"GET http://[::1/api/things/5 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 400 and body["error"]["code"] == "bad_request"


def test_lib_errors_are_mapped_to_their_status_and_code(search):
    response = search.post("/api/search", json={})
    assert response.status_code == 409
    assert error_of(response) == {"code": "already_paid", "message": "Le loyer de cette période est déjà payé."}


def test_an_unexpected_exception_is_a_500_in_the_contract_shape_without_internals(search, capsys):
    response = search.post("/api/search", json={"boom": True})
    assert response.status_code == 500
    error = error_of(response)
    assert error["code"] == "internal_error"
    assert "secret-in-message" not in response.text and "Traceback" not in response.text
    logged = capsys.readouterr().err
    assert "RuntimeError" in logged  # the operator sees what broke


def test_query_strings_are_validated_with_the_error_class_given(search):
    assert search.get("/api/search?city=Dakar&min_price=10").json() == {"filters": {"city": "Dakar", "min_price": 10}}
    response = search.get("/api/search?min_price=-1&colour=red")
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "invalid_filter"
    assert {d["field"] for d in error["details"]} == {"min_price", "colour"}


@pytest.mark.parametrize("escaped", ["%FF%FE", "%ED%A0%80", "%C0%AF", "%"])  # invalid UTF-8, a surrogate, overlong, bare %
def test_percent_escapes_that_are_not_utf8_are_read_not_a_crash(search, escaped):
    response = search.get(f"/api/search?city={escaped}")
    assert response.status_code == 200
    assert "\ufffd" in response.json()["filters"]["city"] or escaped == "%"


def test_a_repeated_query_parameter_is_refused(search):
    response = search.get("/api/search?city=Dakar&city=Thies")
    assert response.status_code == 422
    assert error_of(response)["details"] == [{"field": "city", "code": "repeated", "message": "Paramètre répété."}]


def test_each_request_logs_one_json_line_without_token_body_or_query(things, capsys):
    capsys.readouterr()
    things.patch(
        "/api/things/5?q=secret-query",
        json={"lease_id": 1, "note": "secret-body"},
        headers={"Authorization": "Bearer secret-token"},
    )
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["method"] == "PATCH" and record["path"] == "/api/things/5" and record["status"] == 201
    assert isinstance(record["duration_ms"], float) and "cache" in record
    for secret in ("secret-query", "secret-body", "secret-token"):
        assert secret not in lines[0]


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "PROPFIND", "BREW"])
def test_a_method_http_server_does_not_know_is_a_405_in_the_contract_shape(things, method):
    response = things.request(method, "/api/things/1")
    assert response.status_code == 405
    assert error_of(response)["code"] == "method_not_allowed"
    assert response.headers["allow"] == "GET, HEAD, PATCH, OPTIONS"


def test_a_request_line_too_long_is_a_4xx_in_the_contract_shape():
    status, body = raw_exchange(Things, b"GET /api/things/1?q=" + b"x" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 414
    assert body["error"]["code"] == "bad_request"


# -- under Vercel's Fluid launcher ----------------------------------------------------------------


def fluid_handler(app: type) -> type:
    """The class Vercel's Fluid launcher serves for `handler = app`, made from the launcher's own source
    (vercel_runtime/vc_init.py, the version the pinned CLI installs, see tests/test_vercel_build.py):
    its module-level imports, its `storage`, its `BaseHandler`, then `class Handler(BaseHandler, app_obj)`
    exactly as written there. Only its IPC socket is replaced: `send_message` keeps the messages."""
    source = Path(importlib.util.find_spec("vercel_runtime").origin).with_name("vc_init.py").read_text()
    tree = ast.parse(source)
    wanted = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    wanted += [node for node in tree.body if isinstance(node, ast.AnnAssign) and ast.unparse(node.target) == "storage"]
    classes = [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    base = next((node for node in classes if node.name == "BaseHandler"), None)
    handler = next((node for node in classes if node.name == "Handler"
                    and [ast.unparse(b) for b in node.bases] == ["BaseHandler", "app_obj"]), None)
    assert base and handler, "vc_init.py no longer builds Handler(BaseHandler, app_obj): compose it as it now does"
    namespace: dict = {"__name__": "vc_init_under_test", "app_obj": app, "send_message": lambda message: None}
    exec(compile(ast.Module(body=[*wanted, base, handler], type_ignores=[]), "vc_init.py", "exec"), namespace)
    return namespace["Handler"]


def test_under_vercels_fluid_launcher_the_json_line_is_still_the_only_log_line(capfd):
    launched = fluid_handler(Things)
    assert launched.__mro__[1].__name__ == "BaseHandler"  # the launcher's class comes before ours
    with serve(launched) as base, httpx.Client(base_url=base, timeout=5) as client:
        capfd.readouterr()
        response = client.get("/api/things/5?id=5&q=secret-query")
        assert response.status_code == 200 and response.json() == {"id": 5}
        refused = client.request("BREW", "/api/things/5?q=secret-query")  # http.server's own error path
        assert refused.status_code == 405
        out, err = capfd.readouterr()
    assert out == ""  # the launcher writes its request line to stdout: nothing there
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert [(line["method"], line["status"]) for line in lines] == [("GET", 200), ("BREW", 405)]
    assert "secret-query" not in err
