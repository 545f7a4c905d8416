"""Schemathesis drives every operation of openapi.json against the local stack (vercel dev), signed out,
as a tenant and as an owner: its explicit examples, its coverage cases (boundaries, missing and wrong
parameters, unsupported methods) and random valid and invalid requests.

For every request: no 5xx (nothing is down here, so not even a documented 502/503), an answer the spec
documents (status, headers, body; errors in the contract's shape), and nothing written in the database
unless the request was an accepted (2xx) POST or PATCH: each request is bracketed by a digest of every
table an endpoint can write. The database is put back as the seed left it at the end (`pristine`).

Bounded and reproducible: a fixed number of examples per operation, derandomized, no example database.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

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
WRITES = ("POST", "PATCH")

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

