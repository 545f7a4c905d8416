"""lib/config: environment detection, the Upstash fallback, and errors that name the missing variable."""

from __future__ import annotations

import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from lib import config
from lib.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[2]

ALL_VARIABLES = [
    "VERCEL", "VERCEL_ENV", "VERCEL_URL", "VERCEL_PROJECT_PRODUCTION_URL", "DOUSELL_DEPLOYMENT",
    "UPSTASH_REDIS_REST_URL", "UPSTASH_REDIS_REST_TOKEN", "KV_REST_API_URL", "KV_REST_API_TOKEN",
    "SUPABASE_URL", "SUPABASE_ANON_KEY", "SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_JWT_SECRET", "SUPABASE_JWT_ISSUER",
    "PAYDUNYA_MASTER_KEY", "PAYDUNYA_PRIVATE_KEY", "PAYDUNYA_TOKEN", "PAYDUNYA_MODE", "PAYDUNYA_BASE_URL",
    "PUBLIC_BASE_URL", "CACHE_NAMESPACE", "METRICS_TOKEN", "SUPABASE_JWT_KEEP_LEGACY_HS256",
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ALL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("env, expected", [
    ({"VERCEL": "1", "VERCEL_ENV": "production"}, "vercel-production"),
    ({"VERCEL": "1", "VERCEL_ENV": "preview"}, "vercel-preview"),
    ({"VERCEL": "1", "VERCEL_ENV": "development"}, "vercel-development"),
    ({"VERCEL": "1"}, "vercel-development"),  # `vercel dev` may leave VERCEL_ENV unset
    ({"DOUSELL_DEPLOYMENT": "dakar"}, "dakar"),
    ({"DOUSELL_DEPLOYMENT": "Dakar"}, "dakar"),  # operators type it by hand
    ({"VERCEL": "1", "VERCEL_ENV": "production", "DOUSELL_DEPLOYMENT": "dakar"}, "vercel-production"),  # Vercel wins
    ({}, "local"),
    ({"VERCEL": "0"}, "local"),
])
def test_the_environment_is_detected(monkeypatch, env, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert config.environment() == expected


def test_upstash_prefers_its_own_names_then_falls_back_to_vercel_kv(monkeypatch):
    monkeypatch.setenv("KV_REST_API_URL", "https://kv.example/")
    monkeypatch.setenv("KV_REST_API_TOKEN", "kv-token")
    assert config.upstash() == config.Upstash("https://kv.example", "kv-token")
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", "https://up.example")
    monkeypatch.setenv("UPSTASH_REDIS_REST_TOKEN", "up-token")
    assert config.upstash() == config.Upstash("https://up.example", "up-token")


@pytest.mark.parametrize("accessor, env, missing", [
    (config.upstash, {}, "UPSTASH_REDIS_REST_URL"),
    (config.upstash, {"UPSTASH_REDIS_REST_URL": "https://x"}, "UPSTASH_REDIS_REST_TOKEN"),
    (config.supabase_url, {}, "SUPABASE_URL"),
    (config.supabase_anon_key, {}, "SUPABASE_ANON_KEY"),
    (config.supabase_service_role_key, {}, "SUPABASE_SERVICE_ROLE_KEY"),
    (config.paydunya, {"PAYDUNYA_PRIVATE_KEY": "p", "PAYDUNYA_TOKEN": "t"}, "PAYDUNYA_MASTER_KEY"),
    (config.paydunya, {"PAYDUNYA_MASTER_KEY": "m", "PAYDUNYA_TOKEN": "t"}, "PAYDUNYA_PRIVATE_KEY"),
    (config.paydunya, {"PAYDUNYA_MASTER_KEY": "m", "PAYDUNYA_PRIVATE_KEY": "p"}, "PAYDUNYA_TOKEN"),
    (config.public_base_url, {}, "PUBLIC_BASE_URL"),
    (partial(config.require, "METRICS_TOKEN"), {"METRICS_TOKEN": "   "}, "METRICS_TOKEN"),  # blank counts as unset
])
def test_a_missing_variable_is_named_in_the_error(monkeypatch, accessor, env, missing):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as raised:
        accessor()
    assert raised.value.variable == missing
    assert missing in str(raised.value)
    assert raised.value.to_body()["error"]["details"] == {"variable": missing}


def test_a_missing_variable_never_leaks_another_ones_value(monkeypatch):
    monkeypatch.setenv("PAYDUNYA_MASTER_KEY", "super-secret-master")
    monkeypatch.setenv("PAYDUNYA_PRIVATE_KEY", "super-secret-private")
    with pytest.raises(ConfigurationError) as raised:
        config.paydunya()
    assert "super-secret" not in str(raised.value) + str(raised.value.to_body())


def test_paydunya_mode_picks_the_root_and_an_override_wins(monkeypatch):
    for name, value in {"PAYDUNYA_MASTER_KEY": "m", "PAYDUNYA_PRIVATE_KEY": "p", "PAYDUNYA_TOKEN": "t"}.items():
        monkeypatch.setenv(name, value)
    assert config.paydunya().base_url == "https://app.paydunya.com/sandbox-api/v1"
    monkeypatch.setenv("PAYDUNYA_MODE", "live")
    assert config.paydunya().base_url == "https://app.paydunya.com/api/v1"
    monkeypatch.setenv("PAYDUNYA_BASE_URL", "http://127.0.0.1:8089/sandbox-api/v1/")
    assert config.paydunya().base_url == "http://127.0.0.1:8089/sandbox-api/v1"
    monkeypatch.setenv("PAYDUNYA_MODE", "prod")
    with pytest.raises(ConfigurationError, match="PAYDUNYA_MODE"):
        config.paydunya()


@pytest.mark.parametrize("env", [
    {"VERCEL": "1", "VERCEL_ENV": "production"},
    {"DOUSELL_DEPLOYMENT": "dakar"},
])
def test_where_real_rent_is_paid_an_unset_paydunya_mode_is_a_configuration_error_naming_it(monkeypatch, env):
    # The attack: a production deploy with sandbox keys and no PAYDUNYA_MODE would take the sandbox's
    # "completed" as rent paid. It must not even reach PayDunya.
    for name, value in {**env, "PAYDUNYA_MASTER_KEY": "m", "PAYDUNYA_PRIVATE_KEY": "p", "PAYDUNYA_TOKEN": "t"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as raised:
        config.paydunya()
    assert raised.value.variable == "PAYDUNYA_MODE"
    assert raised.value.to_body()["error"]["details"] == {"variable": "PAYDUNYA_MODE"}
    monkeypatch.setenv("PAYDUNYA_MODE", "live")
    assert config.paydunya().base_url == "https://app.paydunya.com/api/v1"
    monkeypatch.setenv("PAYDUNYA_MODE", "test")  # said explicitly: an operator's choice (a dry run)
    assert config.paydunya().mode == "test"


@pytest.mark.parametrize("env", [
    {},                                            # a laptop
    {"VERCEL": "1", "VERCEL_ENV": "preview"},      # a preview deploy: sandbox by default
    {"VERCEL": "1", "VERCEL_ENV": "development"},  # vercel dev
])
def test_elsewhere_an_unset_paydunya_mode_is_the_sandbox(monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert config.paydunya_mode() == "test"


@pytest.mark.parametrize("raw, expected", [
    (None, False),     # unset: HS256 goes once the JWKS serves keys
    ("true", True),
    ("TRUE", True),    # typed by hand
    ("1", True),
    ("false", False),
    ("0", False),
])
def test_keeping_legacy_hs256_is_an_explicit_yes(monkeypatch, raw, expected):
    if raw is not None:
        monkeypatch.setenv("SUPABASE_JWT_KEEP_LEGACY_HS256", raw)
    assert config.supabase_jwt_keep_legacy_hs256() is expected


def test_a_keep_legacy_hs256_that_is_neither_yes_nor_no_names_the_variable(monkeypatch):
    monkeypatch.setenv("SUPABASE_JWT_KEEP_LEGACY_HS256", "maybe")
    with pytest.raises(ConfigurationError, match="SUPABASE_JWT_KEEP_LEGACY_HS256"):
        config.supabase_jwt_keep_legacy_hs256()


@pytest.mark.parametrize("env, expected", [
    ({"PUBLIC_BASE_URL": "https://api.dousell.sn/"}, "https://api.dousell.sn"),
    ({"VERCEL_URL": "dousell-git-x.vercel.app"}, "https://dousell-git-x.vercel.app"),
    ({"VERCEL_ENV": "production", "VERCEL_URL": "dousell-abc.vercel.app",
      "VERCEL_PROJECT_PRODUCTION_URL": "dousell.vercel.app"}, "https://dousell.vercel.app"),
    ({"VERCEL_ENV": "preview", "VERCEL_URL": "dousell-abc.vercel.app",
      "VERCEL_PROJECT_PRODUCTION_URL": "dousell.vercel.app"}, "https://dousell-abc.vercel.app"),  # previews call back to themselves
])
def test_the_public_base_url_is_derived(monkeypatch, env, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert config.public_base_url() == expected


@pytest.mark.parametrize("env, expected", [
    ({"SUPABASE_URL": "https://abcd.supabase.co/"}, "https://abcd.supabase.co/auth/v1"),  # the default
    ({"SUPABASE_URL": "https://api.dousell.sn", "SUPABASE_JWT_ISSUER": "https://abcd.supabase.co/auth/v1/"},
     "https://abcd.supabase.co/auth/v1"),  # a custom domain keeps the project's issuer
    ({"SUPABASE_URL": "https://api.dousell.sn", "SUPABASE_JWT_ISSUER": "  "}, "https://api.dousell.sn/auth/v1"),
])
def test_the_jwt_issuer_defaults_to_the_supabase_url_and_can_be_set(monkeypatch, env, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert config.supabase_jwt_issuer() == expected


def test_the_jwt_issuer_without_supabase_url_names_the_missing_variable():
    with pytest.raises(ConfigurationError) as raised:
        config.supabase_jwt_issuer()
    assert raised.value.variable == "SUPABASE_URL"


def test_env_example_lists_every_variable_lib_and_the_handlers_read():
    # Platform-set variables (VERCEL, VERCEL_ENV, VERCEL_URL...) are not the operator's to write.
    # The shared secrets are named by their handlers: `bearer.require_secret(header, "CRON_SECRET", ...)`.
    read = set()
    for path in [*(ROOT / "lib").glob("*.py"), *(ROOT / "api").rglob("*.py")]:
        read |= set(re.findall(r"(?:_get|require|environ\.get|ConfigurationError)\(\s*\"([A-Z][A-Z0-9_]+)\"", path.read_text()))
        read |= set(re.findall(r"require_secret\([^,]+,\s*\"([A-Z][A-Z0-9_]+)\"", path.read_text()))
    listed = set(re.findall(r"^([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    operator_set = {name for name in read if not name.startswith("VERCEL")}
    assert {"SUPABASE_JWT_ISSUER", "METRICS_TOKEN", "CRON_SECRET", "DATABASE_WEBHOOK_SECRET"} <= operator_set
    assert operator_set - listed == set()


def test_the_namespace_defaults_to_dousell(monkeypatch):
    assert config.namespace() == "dousell"
    monkeypatch.setenv("CACHE_NAMESPACE", "staging")
    assert config.namespace() == "staging"


def test_importing_every_lib_and_api_module_needs_no_variable_and_no_network():
    # A fresh interpreter, an empty environment, and sockets that refuse to connect.
    code = (
        "import socket\n"
        "def refuse(*args): raise AssertionError('network touched at import')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "import importlib, importlib.util, pathlib, sys\n"
        "for path in sorted(pathlib.Path('lib').glob('*.py')):\n"
        "    importlib.import_module('lib.' + path.stem)\n"
        "for n, path in enumerate(sorted(pathlib.Path('api').rglob('*.py'))):\n"
        "    spec = importlib.util.spec_from_file_location(f'endpoint{n}', path)\n"
        "    sys.modules[spec.name] = module = importlib.util.module_from_spec(spec)\n"
        "    spec.loader.exec_module(module)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
