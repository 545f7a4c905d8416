"""Our own Redis for the local stack: redis-server with the Upstash-like
settings, stop/start on the same port, the CLI the make drills use, and the
embedded fakeredis fallback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import redis

from devstack import redis_server as rs
from devstack.redis_server import RedisServer, free_port, ping

needs_redis_server = pytest.mark.skipif(
    rs.find_redis_server() is None, reason="redis-server is not installed"
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devstack.redis_server", *args],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
def upstash_backend(tmp_path):
    """A RedisServer on a free port; always stopped afterwards."""
    servers: list[RedisServer] = []

    def make(**kwargs) -> RedisServer:
        server = RedisServer(free_port(), tmp_path / f"redis{len(servers)}", **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@needs_redis_server
def test_redis_server_runs_with_persistence_off_and_upstash_like_memory_limits(
    upstash_backend,
):
    server = upstash_backend().start()
    assert server.kind == "redis-server" and not server.embedded
    with redis.Redis(
        host=server.host, port=server.port, decode_responses=True
    ) as client:
        config = client.config_get("*")
        memory = client.info("memory")
    assert config["save"] == ""
    assert config["appendonly"] == "no"
    assert config["maxmemory"] == str(100 * 1024 * 1024)
    assert config["maxmemory-policy"] == "allkeys-lru"
    assert config["bind"] == "127.0.0.1"
    assert config["dir"] == str(server.state_dir.resolve())
    assert memory["maxmemory"] == 100 * 1024 * 1024 and memory["used_memory"] > 0
    assert server.pidfile.read_text().strip() == str(server.pid)
    assert server.logfile.exists()


@needs_redis_server
def test_stop_then_start_serves_again_on_the_same_port_with_empty_data(upstash_backend):
    server = upstash_backend().start()
    port = server.port
    with redis.Redis(host=server.host, port=port) as client:
        client.set("k", "v")
    server.stop()
    assert not server.is_running()
    assert not ping(server.host, port)
    assert not server.pidfile.exists()
    server.start()
    assert server.port == port and server.is_running()
    with redis.Redis(host=server.host, port=port) as client:
        assert client.get("k") is None


@needs_redis_server
def test_start_refuses_a_port_where_another_redis_already_answers(
    upstash_backend, tmp_path
):
    first = upstash_backend().start()
    second = RedisServer(first.port, tmp_path / "other")
    with pytest.raises(RuntimeError, match="already answers"):
        second.start()
    assert first.is_running()


@needs_redis_server
def test_start_reports_a_redis_server_that_cannot_bind(upstash_backend):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        server = RedisServer(blocker.getsockname()[1], upstash_backend().state_dir)
        with pytest.raises(RuntimeError, match="exited"):
            server.start(timeout=5)


def test_stop_is_a_no_op_when_nothing_runs(tmp_path):
    server = RedisServer(free_port(), tmp_path)
    server.stop(timeout=1)
    assert not server.is_running()


def test_without_a_redis_server_binary_the_embedded_fakeredis_is_used(
    upstash_backend, monkeypatch, caplog
):
    monkeypatch.setattr(rs, "find_redis_server", lambda: None)
    caplog.set_level("INFO", logger="devstack.redis")
    server = upstash_backend().start()
    assert server.embedded and server.kind == "fakeredis"
    assert "embedded fakeredis" in caplog.text
    with redis.Redis(host=server.host, port=server.port) as client:
        assert client.set("k", "v", nx=True, px=1000) is True
        assert client.eval("return redis.call('GET', KEYS[1])", 1, "k") == b"v"


def test_the_embedded_redis_restarts_on_the_same_port(upstash_backend):
    server = upstash_backend(embedded=True).start()
    port = server.port
    server.stop()
    assert not ping(server.host, port)
    server.start()
    assert server.port == port and server.is_running()


def test_asking_for_the_binary_when_none_is_installed_fails_clearly(
    monkeypatch, tmp_path
):
    monkeypatch.setattr(rs, "find_redis_server", lambda: None)
    with pytest.raises(FileNotFoundError, match="redis-server"):
        RedisServer(free_port(), tmp_path, embedded=False)


@needs_redis_server
def test_the_cli_starts_redis_in_the_background_and_another_process_stops_it(tmp_path):
    port, state = str(free_port()), str(tmp_path / "redis")
    started = _cli("start", "--port", port, "--state-dir", state)
    try:
        assert started.returncode == 0, started.stderr
        assert "redis-server" in started.stdout
        assert ping("127.0.0.1", int(port))
        assert _cli("status", "--port", port, "--state-dir", state).returncode == 0
    finally:
        stopped = _cli("stop", "--port", port, "--state-dir", state)
    assert stopped.returncode == 0, stopped.stderr
    assert not ping("127.0.0.1", int(port))
    assert _cli("status", "--port", port, "--state-dir", state).returncode == 1


def test_the_cli_can_run_the_embedded_redis_in_the_background_too(tmp_path):
    port, state = str(free_port()), str(tmp_path / "redis")
    started = _cli("start", "--embedded", "--port", port, "--state-dir", state)
    try:
        assert started.returncode == 0, started.stderr
        assert "fakeredis" in started.stdout
        assert ping("127.0.0.1", int(port))
    finally:
        stopped = _cli("stop", "--port", port, "--state-dir", state)
    assert stopped.returncode == 0, stopped.stderr
    assert not ping("127.0.0.1", int(port))
