"""The Supabase stand-in's /auth/v1 (GoTrue's password grant, refresh, user, JWKS) over the seeded
database, driven by raw HTTP, PyJWT, the real supabase_auth client and lib/auth.py itself."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from supabase_auth import SyncGoTrueClient
from supabase_auth.errors import AuthApiError

from devstack.postgres import REPO_ROOT, free_port
from devstack.supabase import SupabaseStandIn, serve_in_thread
from devstack.supabase_auth import SigningKey, TokenError, verify_token
from lib import auth as lib_auth
from lib.errors import InvalidToken
from tests.sql.demo import AWA, MOUSSA, PASSWORD, USERS
from tests.support import wait_for

ANON = "test-anon-key"
SERVICE = "test-service-role-key"
MOUSSA_EMAIL = USERS[MOUSSA][0]
TLS = ssl.create_default_context()  # built once: a default httpx.Client reloads the CA bundle each time


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_dsn(pg_cluster: Any, pg_template: str) -> Iterator[str]:
    name = f"test_auth_{uuid.uuid4().hex[:12]}"
    dsn = pg_cluster.create_database(name, template=pg_template)
    yield dsn
    pg_cluster.drop_database(name)


@pytest.fixture(scope="module")
def standin(auth_dsn: str) -> Iterator[SupabaseStandIn]:
    server, _ = serve_in_thread("127.0.0.1", 0, dsn=auth_dsn, anon_key=ANON, service_role_key=SERVICE, delay_ms=0)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def http(standin: SupabaseStandIn) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=standin.url, timeout=10.0, verify=TLS) as client:
        yield client


@pytest.fixture
def sign_in(http: httpx.Client) -> Callable[..., httpx.Response]:
    def post(email: str = MOUSSA_EMAIL, password: str = PASSWORD, apikey: str | None = ANON) -> httpx.Response:
        headers = {"apikey": apikey} if apikey is not None else {}
        return http.post("/auth/v1/token", params={"grant_type": "password"},
                         json={"email": email, "password": password}, headers=headers)

    return post


@pytest.fixture
def lib_auth_on(standin: SupabaseStandIn, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """lib/auth.py pointed at the stand-in, with a cold JWKS cache."""
    monkeypatch.setenv("SUPABASE_URL", standin.url)
    monkeypatch.delenv("SUPABASE_JWT_SECRET", raising=False)
    keys = lib_auth.JWKS()
    with lib_auth.using(keys):
        yield
    keys.close()


# -- password grant -----------------------------------------------------------------------


def test_signing_in_with_the_demo_password_returns_a_supabase_session(sign_in: Callable[..., httpx.Response]) -> None:
    before = int(time.time())
    response = sign_in()
    assert response.status_code == 200
    session = response.json()
    assert session["token_type"] == "bearer"
    assert session["expires_in"] == 3600
    assert before + 3600 <= session["expires_at"] <= int(time.time()) + 3600
    assert session["refresh_token"] and session["access_token"].count(".") == 2
    user = session["user"]
    assert (user["id"], user["email"], user["role"], user["aud"]) == (MOUSSA, MOUSSA_EMAIL, "authenticated", "authenticated")
    assert user["user_metadata"]["full_name"] == "Moussa Diop"
    assert user["app_metadata"]["provider"] == "email"


def test_the_access_token_verifies_with_pyjwt_against_the_served_jwks(
    standin: SupabaseStandIn, http: httpx.Client, sign_in: Callable[..., httpx.Response]
) -> None:
    token = sign_in().json()["access_token"]
    header = jwt.get_unverified_header(token)
    keys = {k["kid"]: k for k in http.get("/auth/v1/.well-known/jwks.json").json()["keys"]}
    assert header["alg"] == "ES256" and header["kid"] in keys
    claims = jwt.decode(token, jwt.PyJWK(keys[header["kid"]]), algorithms=["ES256"], audience="authenticated",
                        issuer=f"{standin.url}/auth/v1")
    assert (claims["sub"], claims["email"], claims["role"]) == (MOUSSA, MOUSSA_EMAIL, "authenticated")
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["aal"] == "aal1" and claims["is_anonymous"] is False
    assert uuid.UUID(claims["session_id"])


def test_the_jwks_is_public_and_holds_one_es256_p256_key(http: httpx.Client) -> None:
    response = http.get("/auth/v1/.well-known/jwks.json")  # no apikey, as lib/auth.py fetches it
    assert response.status_code == 200
    (key,) = response.json()["keys"]
    assert {k: key[k] for k in ("kty", "crv", "alg", "use", "key_ops")} == {
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "key_ops": ["verify"]}
    assert key["kid"] and key["x"] and key["y"] and "d" not in key


def test_an_email_is_matched_whatever_its_case(sign_in: Callable[..., httpx.Response]) -> None:
    assert sign_in(MOUSSA_EMAIL.upper()).json()["user"]["id"] == MOUSSA


@pytest.mark.parametrize(("email", "password"), [
    (MOUSSA_EMAIL, "not-the-password"),
    ("nobody@example.sn", PASSWORD),
    (MOUSSA_EMAIL, "dousell-demo' or '1'='1"),
])
def test_wrong_credentials_are_400_invalid_credentials(sign_in: Callable[..., httpx.Response], email: str,
                                                       password: str) -> None:
    response = sign_in(email, password)
    assert response.status_code == 400
    body = response.json()
    assert (body["error"], body["error_description"]) == ("invalid_grant", "Invalid login credentials")
    assert (body["code"], body["msg"]) == ("invalid_credentials", "Invalid login credentials")


@pytest.mark.parametrize(("apikey", "message"), [(None, "No API key found in request"), ("wrong", "Invalid API key")])
def test_sign_in_without_the_right_apikey_is_401(sign_in: Callable[..., httpx.Response], apikey: str | None,
                                                  message: str) -> None:
    response = sign_in(apikey=apikey)
    assert (response.status_code, response.json()["message"]) == (401, message)


def test_the_service_role_key_is_an_accepted_apikey_too(sign_in: Callable[..., httpx.Response]) -> None:
    assert sign_in(apikey=SERVICE).status_code == 200


# -- user, refresh, logout ----------------------------------------------------------------


def test_get_user_answers_the_tokens_user_and_403_for_a_bad_token(
    http: httpx.Client, sign_in: Callable[..., httpx.Response]
) -> None:
    token = sign_in().json()["access_token"]
    user = http.get("/auth/v1/user", headers={"apikey": ANON, "Authorization": f"Bearer {token}"})
    assert (user.status_code, user.json()["id"]) == (200, MOUSSA)
    bad = http.get("/auth/v1/user", headers={"apikey": ANON, "Authorization": f"Bearer {token[:-4]}AAAA"})
    assert (bad.status_code, bad.json()["code"]) == (403, "bad_jwt")


def test_a_refresh_token_is_swapped_once_for_a_new_session(http: httpx.Client,
                                                           sign_in: Callable[..., httpx.Response]) -> None:
    first = sign_in().json()

    def refresh(token: str) -> httpx.Response:
        return http.post("/auth/v1/token", params={"grant_type": "refresh_token"}, json={"refresh_token": token},
                         headers={"apikey": ANON})

    second = refresh(first["refresh_token"])
    assert second.status_code == 200
    assert second.json()["refresh_token"] != first["refresh_token"]
    assert jwt.decode(second.json()["access_token"], options={"verify_signature": False})["session_id"] == \
        jwt.decode(first["access_token"], options={"verify_signature": False})["session_id"]
    reused = refresh(first["refresh_token"])
    assert (reused.status_code, reused.json()["code"]) == (400, "refresh_token_not_found")


def test_logout_forgets_the_sessions_refresh_tokens(http: httpx.Client, sign_in: Callable[..., httpx.Response]) -> None:
    session = sign_in().json()
    out = http.post("/auth/v1/logout", headers={"apikey": ANON, "Authorization": f"Bearer {session['access_token']}"})
    assert out.status_code == 204
    again = http.post("/auth/v1/token", params={"grant_type": "refresh_token"},
                      json={"refresh_token": session["refresh_token"]}, headers={"apikey": ANON})
    assert again.status_code == 400


def test_the_down_drill_stops_sign_in_but_not_the_jwks(standin: SupabaseStandIn, http: httpx.Client,
                                                       sign_in: Callable[..., httpx.Response]) -> None:
    standin.set_mode("down")
    try:
        assert sign_in().status_code == 503
        assert http.get("/auth/v1/.well-known/jwks.json").status_code == 200
    finally:
        standin.set_mode("normal")
    assert sign_in().status_code == 200


# -- real clients ---------------------------------------------------------------------------


def test_the_supabase_auth_client_signs_in_and_reads_the_user(standin: SupabaseStandIn) -> None:
    client = SyncGoTrueClient(url=f"{standin.url}/auth/v1", headers={"apikey": ANON},
                              auto_refresh_token=False, persist_session=False)
    response = client.sign_in_with_password({"email": MOUSSA_EMAIL, "password": PASSWORD})
    assert response.user is not None and response.user.id == MOUSSA
    assert response.session is not None
    assert client.get_user(response.session.access_token).user.email == MOUSSA_EMAIL
    with pytest.raises(AuthApiError) as caught:
        client.sign_in_with_password({"email": MOUSSA_EMAIL, "password": "wrong"})
    assert (caught.value.status, caught.value.code) == (400, "invalid_credentials")


def test_lib_auth_accepts_the_token_of_a_password_sign_in(lib_auth_on: None,
                                                          sign_in: Callable[..., httpx.Response]) -> None:
    token = sign_in().json()["access_token"]
    user = lib_auth.authenticate(f"Bearer {token}")
    assert (user.id, user.email, user.role) == (MOUSSA, MOUSSA_EMAIL, "authenticated")


def test_lib_auth_refuses_an_expired_stand_in_token(lib_auth_on: None, standin: SupabaseStandIn) -> None:
    with pytest.raises(InvalidToken) as caught:
        lib_auth.authenticate(f"Bearer {standin.mint_token(AWA, USERS[AWA][0], expires_in=-120)}")
    assert caught.value.reason == "expired"  # type: ignore[attr-defined]


# -- tokens and keys ------------------------------------------------------------------------


def test_mint_token_issues_sign_in_claims_and_takes_overrides(standin: SupabaseStandIn) -> None:
    token = standin.mint_token(AWA, USERS[AWA][0], expires_in=60, role="service_role", custom="x")
    claims = verify_token(standin.signing_key, token)
    assert (claims["sub"], claims["email"], claims["iss"]) == (AWA, USERS[AWA][0], f"{standin.url}/auth/v1")
    assert (claims["role"], claims["custom"], claims["exp"] - claims["iat"]) == ("service_role", "x", 60)
    with pytest.raises(TokenError) as caught:
        verify_token(standin.signing_key, standin.mint_token(AWA, expires_in=-120))
    assert (caught.value.code, caught.value.message) == ("PGRST303", "JWT expired")


def test_public_url_sets_the_issuer(auth_dsn: str) -> None:
    server, _ = serve_in_thread("127.0.0.1", 0, dsn=auth_dsn, anon_key=ANON, service_role_key=SERVICE,
                                public_url="http://localhost:54321/")
    try:
        claims = jwt.decode(server.mint_token(AWA), options={"verify_signature": False})
        assert claims["iss"] == "http://localhost:54321/auth/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_a_saved_signing_key_keeps_its_kid_so_tokens_survive_a_restart() -> None:
    key = SigningKey.generate()
    reloaded = SigningKey.from_pem(key.pem())
    assert reloaded.kid == key.kid and reloaded.jwk == key.jwk
    assert verify_token(reloaded, key.sign({"sub": AWA, "aud": "authenticated", "exp": time.time() + 60}))["sub"] == AWA


def test_the_cli_serves_with_a_key_file_it_creates(auth_dsn: str, tmp_path: Path) -> None:
    port, key_file = free_port(), tmp_path / "signing-key.pem"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack.supabase", "--port", str(port), "--dsn", auth_dsn,
         "--anon-key", ANON, "--service-role-key", SERVICE, "--signing-key", str(key_file)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        def jwks() -> Any:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/auth/v1/.well-known/jwks.json", timeout=1, verify=TLS)
            except httpx.TransportError:
                return None

        response = wait_for(jwks, timeout=20, what="the CLI stand-in to answer")
        assert response.json()["keys"][0]["kid"] == SigningKey.from_pem(key_file.read_bytes()).kid
        assert key_file.stat().st_mode & 0o077 == 0
    finally:
        process.terminate()
        process.wait(timeout=10)
