"""Test helpers: load an api/ file, serve an `Endpoint` on a real loopback HTTP server, wait with a deadline, a fake clock, print a table."""

from __future__ import annotations

import contextlib
import importlib.util
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

UPSTASH_TOKEN = "test-upstash-token"  # the token of the Upstash stand-ins the tests start (tests/conftest.py)
ROOT = Path(__file__).resolve().parents[1]


def api_module(relative: str) -> ModuleType:
    """The module of an api/ file by its path (`api/visits/[id].py`: file routing names are not importable)."""
    name = "api_file_" + re.sub(r"\W", "_", relative.removesuffix(".py"))
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    assert spec is not None and spec.loader is not None, relative
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # fifty clicks connect at once; the default backlog of 5 resets some


@contextlib.contextmanager
def serve(handler_cls: type) -> Iterator[str]:
    """Run `handler_cls` on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    server = _Server(("127.0.0.1", 0), handler_cls)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class FakeClock:
    """Stands in for a module's clock and sleep (`monkeypatch.setattr(mod, "clock", fake)`, `..."sleep", fake.sleep`).

    Only the test moves it: `advance(seconds)`, or a sleep, which is recorded (so a test asserts a
    retry schedule exactly) and runs the next of `during_sleep` (what happens meanwhile).
    """

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []
        self.during_sleep: list[Callable[[], object]] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.during_sleep:
            self.during_sleep.pop(0)()


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Poll `predicate` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def show(request: pytest.FixtureRequest, lines: list[str]) -> None:
    """Print `lines` on the terminal past pytest's capture (a fixture's teardown: a table of what ran)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not lines:
        return
    with capture.global_and_fixture_disabled():  # fd 1 is redirected while a fixture runs
        reporter.write("\n")  # off the line of progress dots
        for line in lines:
            reporter.write_line(line)
