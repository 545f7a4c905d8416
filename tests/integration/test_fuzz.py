"""Schemathesis drives every operation of openapi.json against the local stack (vercel dev), signed out,
as a tenant and as an owner: its explicit examples, its coverage cases (boundaries, missing and wrong
parameters, unsupported methods) and random valid and invalid requests.

For every request: no 5xx (nothing is down here, so not even a documented 502/503), an answer the spec
documents (status, headers, body; errors in the contract's shape), and nothing written in the database
unless the request was an accepted (2xx) POST or PATCH: each request is bracketed by a digest of every
table an endpoint can write. The database is put back as the seed left it at the end (`pristine`).

Bounded and reproducible: a fixed number of examples per operation, derandomized, no example database.

Beside the generated cases, a fixed corpus of the shapes that make Python itself raise (nesting past the
recursion limit, NaN and 1e999, integers past int()'s digit limit, lone surrogates, non-ASCII digits,
instants outside years 1-9999) is sent to every operation it can reach, with the same checks.
"""

from __future__ import annotations

import json
import socket
import tempfile
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    unsupported_method,
)

from devstack.__main__ import METRICS_TOKEN
from tests.integration.test_contract import AWA, MOUSSA, SPEC, Database, conform, undo
from tests.support import show

EXAMPLES = 25  # random examples per operation and identity, beside the explicit and coverage cases
SEED = 20261126
IDENTITIES = {"anonymous": None, "tenant": MOUSSA, "owner": AWA}
WRITES = ("POST", "PATCH", "DELETE")

# Hypothesis keeps caches (constants, unicode tables) in `.hypothesis/`: not in the work tree, which
# vercel dev bundles into every function.
set_hypothesis_home_dir(str(Path(tempfile.gettempdir()) / "dousell-hypothesis"))

# Filled as the fuzzer runs; printed after the module by `tally`: requests per operation and status.
TALLY: Counter = Counter()


@pytest.fixture(scope="module", autouse=True)
def tally(request) -> Iterator[None]:
    """What the fuzzer sent, whatever order the tests ran in (nothing when none ran)."""
    TALLY.clear()
    yield
    if TALLY:
        show(request, tally_table(TALLY))


@pytest.fixture(scope="module")
def database(stack) -> Iterator[Database]:
    db = Database(stack)
    try:
        yield db
    finally:
        db.close()


@pytest.fixture(scope="module", autouse=True)
def built(stack) -> None:
    """vercel dev builds a function at its first request (seconds): before the deadline below counts."""
    for path in SPEC["paths"]:
        stack.api.options(path.replace("{id}", "1"))


@pytest.fixture(scope="module", autouse=True)
def pristine(stack, database, built) -> Iterator[None]:
    before = database.digests()
    database.snapshot("fuzz_snapshot")
    yield
    undo(stack, database, "fuzz_snapshot")
    assert database.digests() == before


CONFIG = SchemathesisConfig.from_dict({
    "seed": SEED,
    "generation": {
        "max-examples": EXAMPLES,
        "deterministic": True,
        "database": "none",
        "with-security-parameters": False,  # the identity is chosen below, not generated
        "allow-x00": True,
    },
    "phases": {"stateful": {"enabled": False}},
})
# The stack's URL is known only at run time: each call is given it (`base_url=`).
schema = schemathesis.openapi.from_dict(SPEC, config=CONFIG)


def refused(response: httpx.Response, method: str, path: str) -> None:
    """An undocumented method: OPTIONS is 204 with `Allow`, HEAD answers as GET without a body, others 405."""
    allowed = {m.upper() for m in SPEC["paths"][path] if m != "parameters"} | {"OPTIONS"}
    allowed |= {"HEAD"} if "GET" in allowed else set()
    if method == "OPTIONS":
        assert response.status_code == 204 and not response.content, f"OPTIONS {path} → {response.status_code}"
    elif method == "HEAD" and "HEAD" in allowed:
        assert str(response.status_code) in SPEC["paths"][path]["get"]["responses"] and not response.content
        return
    else:
        conform(response, method, path)
        assert response.status_code == 405, f"{method} {path} → {response.status_code}"
    assert set(response.headers["allow"].split(", ")) == allowed, response.headers.get("allow")


def credentials(stack, who: str | None, path: str) -> dict[str, str]:
    if who is None:
        return {}
    if path == "/api/metrics":
        return {"Authorization": f"Bearer {METRICS_TOKEN}"}
    return stack.auth(who)


# A deadline per example (its request, the digests and the checks' own requests), generous for a busy
# machine; each request also times out after 30 s, and pytest-timeout bounds each operation's run.
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, derandomize=True, deadline=timedelta(seconds=20), database=None,
                         suppress_health_check=list(HealthCheck))


@schema.parametrize()
@FUZZ_SETTINGS
def test_fuzz_signed_out(case, stack, database):
    fuzz(case, "anonymous", stack, database)


@schema.parametrize()
@FUZZ_SETTINGS
def test_fuzz_as_a_tenant(case, stack, database):
    fuzz(case, "tenant", stack, database)


@schema.parametrize()
@FUZZ_SETTINGS
def test_fuzz_as_an_owner(case, stack, database):
    fuzz(case, "owner", stack, database)


def fuzz(case, identity: str, stack, database: Database) -> None:
    headers = credentials(stack, IDENTITIES[identity], case.operation.path)
    before = database.digests()
    base_url = str(stack.api.base_url).rstrip("/")
    response = case.call(base_url=base_url, headers=headers, timeout=30)
    after = database.digests()
    method, path = case.method.upper(), case.operation.path
    TALLY[(method, path, identity, response.status_code)] += 1
    repro = f"\n{case.as_curl_command(headers={**(case.headers or {}), **headers})}\n→ {response.status_code} " \
            f"{response.text[:500]}"

    assert response.status_code < 500, f"server error for {identity}:{repro}"
    changed = sorted(table for table in before if before[table] != after[table])
    if changed:
        assert method in WRITES and 200 <= response.status_code < 300, f"{changed} written by a refused request:{repro}"

    answer = httpx.Response(response.status_code, content=response.content,
                            headers=[(name, value) for name, values in response.headers.items() for value in values])
    try:
        if method.lower() in SPEC["paths"][path]:
            conform(answer, method, path)
        else:  # a method the path does not document (the coverage phase tries them)
            refused(answer, method, path)
    except AssertionError as exc:
        raise AssertionError(f"{exc}{repro}") from None

    # Schemathesis' own checks that send or judge more than the answer above: invalid input refused,
    # required headers, undocumented methods answered 405 with Allow, auth not ignored.
    case.validate_response(response, checks=[negative_data_rejection, missing_required_header, unsupported_method,
                                             ignored_auth], headers=headers,
                           transport_kwargs={"base_url": base_url, "headers": headers, "timeout": 30})
    assert database.digests() == after, f"a request sent by schemathesis' checks wrote:{repro}"


def tally_table(tally: Counter) -> list[str]:
    """Requests per operation and status, as printed after the module."""
    by_operation: dict[tuple[str, str], Counter] = {}
    for (method, path, _identity, status), n in tally.items():
        by_operation.setdefault((method, path), Counter())[status] += n
    lines = [f"{'operation':<32} {'requests':>8}  statuses"]
    for (method, path), statuses in sorted(by_operation.items(), key=lambda item: item[0][1]):
        spread = " ".join(f"{status}×{n}" for status, n in sorted(statuses.items()))
        lines.append(f"{method + ' ' + path:<32} {sum(statuses.values()):>8}  {spread}")
    lines.append(f"{'total':<32} {sum(tally.values()):>8}")
    return lines


# -- shapes that make Python itself raise ----------------------------------------------------------
# Schemathesis draws valid JSON and URL-safe text; these are the requests that once made Python raise
# (RecursionError, OverflowError, ValueError from int() or from an encoder) and their relatives. Each is
# sent to every operation it can reach; each must get a documented 4xx in the contract's shape and write
# nothing.

DEEP = 5_000  # past the interpreter's recursion limit, inside the 64 KiB cap
HOSTILE_JSON = {
    "deep array": b"[" * 60_000,
    "deep object": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "deep inside a field": b'{"%s": ' + b"[" * DEEP + b"]" * DEEP + b"}",
    "NaN": b'{"%s": NaN}',
    "Infinity": b'{"%s": -Infinity}',
    "1e999": b'{"%s": 1e999}',
    "5000 digits": b'{"%s": ' + b"9" * 5_000 + b"}",
    "a 100-digit integer": b'{"%s": ' + b"9" * 100 + b"}",
    "a lone surrogate": b'{"%s": "Villa \\ud800"}',
    "a lone surrogate in a key": b'{"\\udfff": 1}',
    "NUL": b'{"%s": "a\\u0000b"}',
    "not UTF-8": b'{"%s": "\xff\xfe"}',
}
# operation, the field each shape goes into, who sends it (signed in, so the body is read)
JSON_OPERATIONS = [
    ("PATCH", "/api/properties/123", "/api/properties/{id}", "price", AWA),
    ("PATCH", "/api/properties/123", "/api/properties/{id}", "title", AWA),
    ("PATCH", "/api/profile", "/api/profile", "full_name", MOUSSA),
    ("POST", "/api/payments", "/api/payments", "lease_id", MOUSSA),
    ("POST", "/api/visits", "/api/visits", "property_id", MOUSSA),
    ("POST", "/api/visits", "/api/visits", "starts_at", MOUSSA),
]
EDGE_OF_THE_CALENDAR = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:30:00-01:00", "9999-12-31T23:59:59.999999-23:59",
                        "0000-01-01T00:00:00Z", "2026-02-30T10:00:00Z", "2026-11-27T25:00:00Z"]
HOSTILE_QUERY = {
    "5000 digits": "9" * 5_000,
    "a 30-digit number": "9" * 30,
    "superscript two": "\u00b2",
    "Arabic-Indic three": "\u0663",
    "full-width one": "\uff11",
    "NaN": "NaN",
    "-inf": "-inf",
    "1e999": "1e999",
    "NUL": "\x00",
    "long": "x" * 4_000,
    # Not here: percent-escapes that decode to invalid UTF-8 (`%FF`, `%ED%A0%80`). vercel dev's router
    # answers them itself, 500 "URI malformed" (decodeURIComponent in the CLI's parse-query-string.ts),
    # before any function runs; lib/web/http reads them (tests/lib/web/test_http.py).
}
QUERY_OPERATIONS = [  # one parameter of each (operation, parameter) the spec declares
    (path, parameter["name"]) for path, item in SPEC["paths"].items() for method, operation in item.items()
    if method == "get" for parameter in operation.get("parameters", []) if "name" in parameter
]


def hostile_json_cases():
    for method, url, path, field, who in JSON_OPERATIONS:
        for name, template in HOSTILE_JSON.items():
            body = template.replace(b"%s", field.encode()) if b"%s" in template else template
            yield pytest.param(method, url, path, who, body, id=f"{method} {url} {field}: {name}")
    for when in EDGE_OF_THE_CALENDAR:
        body = json.dumps({"property_id": 789, "starts_at": when}).encode()
        yield pytest.param("POST", "/api/visits", "/api/visits", MOUSSA, body, id=f"POST /api/visits {when}")


def signed(stack, path: str, who: str | None) -> dict[str, str]:
    if path == "/api/metrics":
        return {"Authorization": f"Bearer {METRICS_TOKEN}"}
    return stack.auth(who) if who else {}


def answered_unchanged(database: Database, send, *, refused: bool = True) -> httpx.Response:
    """The answer to `send()`: never a 5xx, a 4xx when `refused`, and nothing written either way."""
    before = database.digests()
    response = send()
    assert response.status_code < 500, response.text[:300]
    if refused:
        assert 400 <= response.status_code < 500, response.text[:300]
    assert database.digests() == before
    return response


@pytest.mark.parametrize("method, url, path, who, body", list(hostile_json_cases()))
def test_a_body_python_cannot_take_is_a_documented_4xx_and_writes_nothing(stack, database, method, url, path, who,
                                                                           body):
    response = answered_unchanged(database, lambda: stack.api.request(
        method, url, content=body, headers={**stack.auth(who), "Content-Type": "application/json"}))
    conform(response, method, path)


@pytest.mark.parametrize("path, parameter", QUERY_OPERATIONS)
@pytest.mark.parametrize("shape", list(HOSTILE_QUERY))
def test_a_query_value_python_cannot_take_is_a_documented_4xx_and_writes_nothing(stack, database, path, parameter,
                                                                                  shape):
    # A city or a search text may well be `NaN`: an answer, documented, is all that is asked of those.
    query = urlencode({parameter: HOSTILE_QUERY[shape]})
    who = MOUSSA if path == "/api/payments" else None
    response = answered_unchanged(database, lambda: stack.api.get(f"{path}?{query}", headers=signed(stack, path, who)),
                                  refused=parameter not in ("city", "q"))
    conform(response, "GET", path)


@pytest.mark.parametrize("url, path", [
    ("/api/search?" + "[a]" * 500 + "=1", "/api/search"),  # a deep name, as frameworks nest them
    ("/api/search?" + "&".join(f"city[{i}]=Dakar" for i in range(100)), "/api/search"),
    ("/api/properties/%D9%A3", "/api/properties/{id}"),  # ٣
    ("/api/properties/%C2%B2", "/api/properties/{id}"),  # ²
    ("/api/properties/1e3", "/api/properties/{id}"),
    ("/api/properties/" + "9" * 5_000, "/api/properties/{id}"),
])
def test_a_path_or_query_shape_python_cannot_take_is_a_documented_4xx(stack, database, url, path):
    conform(answered_unchanged(database, lambda: stack.api.get(url)), "GET", path)


@pytest.mark.parametrize("form", [
    b"data[hash]=x&" + b"data" + b"[a]" * 5_000 + b"=1",
    b"data[hash]=%FF%FE&data[invoice][token]=t",  # in the body, not the URL: it reaches us
    b"data[invoice][total_amount]=1e999&data[invoice][token]=t&data[hash]=x",
    b"data[invoice][total_amount]=NaN&data[invoice][token]=t&data[hash]=x",
    b"data[invoice][total_amount]=" + b"9" * 5_000 + b"&data[invoice][token]=t&data[hash]=x",
    b"data[invoice][token]=%ED%A0%80&data[hash]=x",
])
def test_an_ipn_python_cannot_take_is_a_documented_4xx(stack, database, form):
    response = answered_unchanged(database, lambda: stack.api.post(
        "/api/paydunya/ipn", content=form, headers={"Content-Type": "application/x-www-form-urlencoded"}))
    conform(response, "POST", "/api/paydunya/ipn")


@pytest.mark.parametrize("length", [b"\xb2", b"1\xb9", b"\xd9\xa3", b"9" * 5_000, b"-1", b"2, 2"])
def test_a_content_length_that_is_not_ascii_digits_never_reaches_a_5xx(stack, database, length):
    # Through vercel dev, Node's parser sees the header first; either way: a 4xx, nothing written.
    request = (b"PATCH /api/properties/123 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
               b"Authorization: " + stack.auth(AWA)["Authorization"].encode() + b"\r\n"
               b"Content-Type: application/json\r\nContent-Length: " + length + b"\r\n\r\n{}")
    before = database.digests()
    with socket.create_connection(("127.0.0.1", stack.ports.api), timeout=30) as sock:
        sock.sendall(request)
        raw = b"".join(iter(lambda: sock.recv(65536), b""))
    status = int(raw.split(b" ", 2)[1])
    assert 400 <= status < 500, raw[:300]
    assert database.digests() == before
