"""lib/edge/valkey, what only the TCP transport has: when it is chosen, its URL, its scripts' text, its pool.

The contract it shares with Upstash REST is tests/lib/edge/test_transports.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_py

from devstack.redis_server import RedisServer, free_port
from lib import config
from lib.edge import upstash, valkey
from lib.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("VERCEL", raising=False)
    monkeypatch.delenv("VALKEY_URL", raising=False)
    upstash.breaker.reset()
    yield
    upstash.breaker.reset()


def test_nothing_of_valkey_is_imported_by_the_edge_or_a_handler_until_a_call_needs_it():
    code = ("import sys, importlib.util as u; import lib.edge.upstash, lib.web.ratelimit, lib.cache.aside;"
            "s = u.spec_from_file_location('h', 'api/properties/index.py'); s.loader.exec_module(u.module_from_spec(s));"
            "print(sorted(m for m in sys.modules if m == 'valkey' or m.startswith(('valkey.', 'lib.edge.valkey'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "VALKEY_URL": "redis://127.0.0.1:1/0"})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_valkey_url_is_ignored_on_vercel_where_only_upstash_rest_is_spoken(monkeypatch):
    monkeypatch.setenv("VALKEY_URL", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", "t")
    with pytest.raises(upstash.RedisUnavailable, match="Valkey"):
        upstash.execute(["GET", "k"])
    upstash.breaker.reset()
    monkeypatch.setenv("VERCEL", "1")
    assert config.valkey_url() is None
    with pytest.raises(upstash.RedisUnavailable, match="Upstash"):
        upstash.execute(["GET", "k"])


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "127.0.0.1:6379", "unix:///tmp/v.sock"])
def test_a_url_that_is_not_redis_or_rediss_is_a_configuration_error_naming_the_variable(monkeypatch, url):
    monkeypatch.setenv("VALKEY_URL", url)
    with pytest.raises(ConfigurationError) as raised:
        upstash.execute(["GET", "k"])
    assert "VALKEY_URL" in str(raised.value.to_body())
    assert upstash.probe() is False
    assert upstash.breaker.state == "closed", "a configuration mistake is not an outage"


def test_nothing_is_connected_when_the_client_is_built_and_its_bounds_are_the_edges():
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    client = valkey.client(url)
    assert client is valkey.client(url), "one client per process"
    pool = client.connection_pool
    assert pool.max_connections == valkey.MAX_CONNECTIONS
    assert (pool.connection_kwargs["socket_connect_timeout"], pool.connection_kwargs["socket_timeout"]) == (
        upstash.CONNECT_TIMEOUT, upstash.CACHE_TIMEOUT)


@pytest.fixture
def guarded(valkey: RedisServer) -> Iterator[RedisServer]:
    """The test Valkey with a password, as the Dakar server's is (taken off afterwards)."""
    with redis_py.Redis(host=valkey.host, port=valkey.port) as direct:
        direct.config_set("requirepass", "s3cret")
        try:
            yield valkey
        finally:
            direct.auth("s3cret")
            direct.config_set("requirepass", "")


def test_password_and_database_come_from_the_url(monkeypatch, guarded):
    monkeypatch.setenv("VALKEY_URL", f"redis://:s3cret@{guarded.host}:{guarded.port}/3")
    assert upstash.execute(["SET", "k", "in db 3"]) == "OK"
    with redis_py.Redis(host=guarded.host, port=guarded.port, password="s3cret", db=3, decode_responses=True) as db3:
        assert db3.get("k") == "in db 3"


def test_a_wrong_password_is_refused_before_anything_runs_and_opens_the_breaker(monkeypatch, guarded):
    monkeypatch.setenv("VALKEY_URL", f"redis://:wrong@{guarded.host}:{guarded.port}/0")
    with pytest.raises(upstash.RedisRejected):
        upstash.execute(["SET", "k", "v"])
    assert upstash.breaker.state == "open"


def test_scripts_reach_valkey_without_upstash_only_flags_and_keep_no_writes(monkeypatch, valkey):
    read = upstash.Script("return redis.call('GET', KEYS[1])", writes=False)
    write = upstash.Script("return redis.call('SET', KEYS[1], ARGV[1])", writes=True)
    assert valkey_text(read).startswith("#!lua flags=no-writes\n")
    assert valkey_text(write).startswith("#!lua\n")
    monkeypatch.setenv("VALKEY_URL", valkey.url)
    with redis_py.Redis(host=valkey.host, port=valkey.port) as direct:
        direct.script_flush()
        assert upstash.run(write, ["dousell:k"], ["v"]) == "OK"
        assert upstash.run(read, ["dousell:k"], []) == "v"
        assert direct.script_exists(lib_sha(read), lib_sha(write)) == [True, True]
    # A script sent as text (upstash-ratelimit's EVAL) loses the flag the same way
    text = "#!lua flags=allow-key-locking\nreturn 1"
    assert upstash.execute(["EVAL", text, 0]) == 1


def valkey_text(script: upstash.Script) -> str:
    return valkey.for_valkey(script.text)[0]


def lib_sha(script: upstash.Script) -> str:
    return valkey.for_valkey(script.text)[1]


def test_a_configured_valkey_is_a_configured_cache_without_upstash_variables(monkeypatch):
    for name in ("UPSTASH_REDIS_REST_URL", "UPSTASH_REDIS_REST_TOKEN", "KV_REST_API_URL", "KV_REST_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigurationError):
        config.require_cache()
    monkeypatch.setenv("VALKEY_URL", "redis://127.0.0.1:6379/0")
    config.require_cache()
    monkeypatch.setenv("VERCEL", "1")  # on Vercel only Upstash counts
    with pytest.raises(ConfigurationError):
        config.require_cache()


def test_trusted_proxies_are_read_as_a_comma_separated_list(monkeypatch):
    monkeypatch.delenv("TRUSTED_PROXIES", raising=False)
    assert config.trusted_proxies() == ()
    monkeypatch.setenv("TRUSTED_PROXIES", " 127.0.0.1, ::1 ,,10.0.0.0/8 ")
    assert config.trusted_proxies() == ("127.0.0.1", "::1", "10.0.0.0/8")
