"""host/server, the Dakar host as systemd runs it: `python -m host` with two workers over a real Valkey.

Requests are written on raw sockets where the bytes matter (keep-alive, a body left unread, a
request that is too large), with httpx elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis as redis_py

from devstack.redis_server import RedisServer, free_port
from tests.lib.edge.test_transports import Silent

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0


class Host:
    def __init__(self, env: dict[str, str], workers: int = 2) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "host", "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers)],
            cwd=ROOT, env={"PATH": os.environ.get("PATH", ""), **env},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.accepts():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the host did not start: {self.log()[-2000:]}")
            time.sleep(0.05)

    def accepts(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            # Every process's stacks to the log (faulthandler on SIGUSR1), then the log in the failure.
            for pid in [self.proc.pid, *_children(self.proc.pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGUSR1)
            time.sleep(1)
            self.proc.kill()
            self.proc.wait()
            assert self.proc.stderr is not None
            raise AssertionError("the host did not stop within 60 s of SIGTERM; its log:\n"
                                 + self.proc.stderr.read().decode("utf-8", "replace")[-20000:]) from None

    def log(self) -> str:
        self.stop()
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode("utf-8", "replace")


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.fixture
def start(valkey: RedisServer) -> Iterator[Callable[..., Host]]:
    started: list[Host] = []

    def run(**env: str) -> Host:
        host = Host({"VALKEY_URL": valkey.url, "PAYDUNYA_MASTER_KEY": "m", "PAYDUNYA_PRIVATE_KEY": "p",
                     "PAYDUNYA_TOKEN": "t", **env})
        started.append(host)
        return host

    yield run
    for host in started:
        host.stop()


def exchange(port: int, raw: bytes, *, expect: int) -> tuple[list[int], bool]:
    """Send `raw` on one connection; the statuses of the first `expect` answers, and whether the
    host then closed the connection (instead of waiting for another request)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        data = b""
        statuses: list[int] = []
        while len(statuses) < expect:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            statuses = _statuses(data)
        sock.settimeout(1.0)
        try:
            closed = sock.recv(65536) == b""
        except TimeoutError:
            closed = False
    return statuses, closed


def _statuses(data: bytes) -> list[int]:
    out, rest = [], data
    while rest.startswith(b"HTTP/1.1 ") and b"\r\n\r\n" in rest:
        head, _, rest = rest.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        if len(rest) < length:
            break
        out.append(int(head[9:12]))
        rest = rest[length:]
    return out


# -- routes and answers the host gives itself ------------------------------------------------------


def test_unknown_paths_and_methods_are_answered_in_the_contracts_shape(start):
    host = start()
    nowhere = httpx.get(f"{host.url}/api/nowhere")
    assert nowhere.status_code == 404 and nowhere.json()["error"]["code"] == "not_found"
    wrong = httpx.request("PATCH", f"{host.url}/api/search")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    assert wrong.headers["Allow"].startswith("GET, HEAD")
    odd = httpx.request("BREW", f"{host.url}/api/properties/7")
    assert odd.status_code == 405 and odd.json()["error"]["details"]["allowed"][0] == "GET"
    dynamic = httpx.options(f"{host.url}/api/properties/7")
    assert dynamic.status_code == 204 and "GET" in dynamic.headers["Allow"]


def test_public_is_served_at_the_root_and_nothing_outside_it(start):
    host = start()
    page = httpx.get(f"{host.url}/")
    assert page.status_code == 200 and page.content == (ROOT / "public" / "index.html").read_bytes()
    script = httpx.get(f"{host.url}/monitoring.js")
    assert script.status_code == 200 and "javascript" in script.headers["Content-Type"]
    for escape in ("/%2e%2e/requirements.txt", "/..%2frequirements.txt", "/%2e%2e/.env.example"):
        statuses, _ = exchange(host.port, f"GET {escape} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), expect=1)
        assert statuses == [404], escape
    assert httpx.post(f"{host.url}/monitoring.js").status_code == 405


# -- connections ------------------------------------------------------------------------------


def test_one_kept_alive_connection_serves_requests_to_different_functions(start):
    host = start()
    raw = b"".join(f"OPTIONS {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                   for path in ("/api/search", "/api/properties/3", "/api/nowhere", "/api/visits/slots"))
    statuses, closed = exchange(host.port, raw, expect=4)
    assert statuses == [204, 204, 404, 204] and not closed


def test_a_body_the_handler_never_read_is_not_taken_for_the_next_request(start):
    host = start()
    smuggled = b"GET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = (b"DELETE /api/search HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled)
           + b"OPTIONS /api/search HTTP/1.1\r\nHost: x\r\n\r\n")
    statuses, _ = exchange(host.port, raw, expect=2)
    assert statuses == [405, 204], "taken as a request, the body would have been answered 404 second"


def test_a_body_over_64_kib_is_refused_413_and_the_connection_closed(start):
    host = start()
    head = b"POST /api/payments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 70000\r\n\r\n"
    statuses, closed = exchange(host.port, head + b"{" * 1000, expect=1)
    assert statuses == [413] and closed


# -- the client's address -----------------------------------------------------------------------------


def counted_addresses(valkey: RedisServer) -> set[str]:
    with redis_py.Redis(host=valkey.host, port=valkey.port, decode_responses=True) as direct:
        return {key.split(":")[3] for key in direct.keys("dousell:ratelimit:ipn:*")}


def refused_ipn(host: Host, **headers: str) -> int:
    return httpx.post(f"{host.url}/api/paydunya/ipn", content=b"data%5Bhash%5D=guess",
                      headers={"Content-Type": "application/x-www-form-urlencoded", **headers}).status_code


def test_x_forwarded_for_counts_only_from_a_trusted_proxy(start, valkey):
    with redis_py.Redis(host=valkey.host, port=valkey.port) as direct:
        direct.flushall()
    untrusted = start()
    assert refused_ipn(untrusted, **{"X-Forwarded-For": "198.51.100.9"}) in (401, 403)
    assert counted_addresses(valkey) == {"127.0.0.1"}, "a caller cannot choose the address it is counted under"
    behind_proxy = start(TRUSTED_PROXIES="127.0.0.1/32")
    assert refused_ipn(behind_proxy, **{"X-Forwarded-For": "6.6.6.6, 198.51.100.9"}) in (401, 403)
    assert counted_addresses(valkey) == {"127.0.0.1", "198.51.100.9"}


def test_a_bad_trusted_proxies_entry_stops_the_start_with_its_name(valkey):
    with pytest.raises(RuntimeError, match="TRUSTED_PROXIES"):
        Host({"VALKEY_URL": valkey.url, "TRUSTED_PROXIES": "10.0.0.300"})


# -- stopping ---------------------------------------------------------------------------------------


def test_sigterm_lets_the_request_in_flight_finish_and_accepts_nothing_new(start):
    hung = Silent()  # the database never answers: /api/health's probe holds the request ~1 s
    try:
        host = start(SUPABASE_URL=f"http://127.0.0.1:{hung.port}", SUPABASE_ANON_KEY="a",
                     SUPABASE_SERVICE_ROLE_KEY="s")
        answer: dict[str, httpx.Response | BaseException] = {}

        def ask() -> None:
            try:
                answer["health"] = httpx.get(f"{host.url}/api/health", timeout=10)
            except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
                answer["health"] = exc

        asking = threading.Thread(target=ask)
        asking.start()
        deadline = time.monotonic() + 10
        while not hung.held:  # the request is inside a worker: its probe reached the database
            assert time.monotonic() < deadline, "the health request never reached the database"
            time.sleep(0.01)
        host.proc.send_signal(signal.SIGTERM)
        asking.join(15)
        response = answer["health"]
        assert isinstance(response, httpx.Response), response
        assert response.json()["database"] == "down", "the request in flight was answered whole"
        deadline = time.monotonic() + 10
        while host.accepts():
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.05)
        assert host.proc.wait(30) == 0
        events = [json.loads(line) for line in host.log().splitlines() if '"event"' in line]
        assert [e["event"] for e in events].count("worker-stopped") == 2
        assert events[-1]["event"] == "host-stopped" and events[-1]["killed"] == 0
    finally:
        hung.close()


def workers_of(host: Host) -> set[int]:
    return set(_children(host.proc.pid))


def test_a_worker_that_dies_is_replaced_and_the_service_goes_on(start):
    host = start()
    deadline = time.monotonic() + 20
    while len(before := workers_of(host)) < 2:  # the socket accepts as soon as the master binds it
        assert time.monotonic() < deadline, f"workers {before}"
        time.sleep(0.05)
    dead = min(before)
    os.kill(dead, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while not (len(now := workers_of(host)) == 2 and dead not in now):
        assert time.monotonic() < deadline, f"workers {now} after {dead} was killed"
        time.sleep(0.05)
    for _ in range(10):  # whichever worker takes it
        assert httpx.get(f"{host.url}/api/nowhere").status_code == 404
    events = [json.loads(line)["event"] for line in host.log().splitlines() if '"event"' in line]
    assert "worker-died" in events



GRACE_AND_MARGIN = 45  # the master's own grace (25 s) before it kills a worker, and a margin


def _bound(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 404
    except httpx.TransportError:
        return False


def _ask_until_stopped(url: str, answered: list[int]) -> None:
    while True:
        try:
            answered.append(httpx.get(url, timeout=5).status_code)
        except httpx.TransportError:
            return  # refused: the host no longer accepts


@pytest.mark.parametrize("moment", ["starting", "started", "busy"])
def test_a_sigterm_at_any_moment_stops_the_host_whole(valkey, moment):
    """Starting (its socket bound, the workers not yet forked or ready), started, or while requests keep coming:
    the host stops in order, status 0, no worker killed. A stop signal taken by a Python handler
    that sets a threading.Event can deadlock the thread inside that Event's wait (its lock is not
    reentrant): the host then never exited, and one that arrived before the handler was installed
    killed the master outright."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/nowhere"
    proc = subprocess.Popen([sys.executable, "-m", "host", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
                            cwd=ROOT, env={"PATH": os.environ.get("PATH", ""), "VALKEY_URL": valkey.url},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    answered: list[int] = []
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (_bound(port) if moment == "starting" else _answers(url)):
            assert proc.poll() is None and time.monotonic() < deadline, "the host did not start"
            time.sleep(0.01)
        asking = threading.Thread(target=_ask_until_stopped, args=(url, answered))
        if moment == "busy":
            asking.start()
            while len(answered) < 20:
                time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(GRACE_AND_MARGIN) == 0
        if moment == "busy":
            asking.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert set(answered) <= {404}, "every request answered before the stop was answered whole"
    assert proc.stderr is not None
    events = [json.loads(line) for line in proc.stderr.read().decode().splitlines() if '"event"' in line]
    assert events and events[-1]["event"] == "host-stopped" and events[-1]["killed"] == 0, events
