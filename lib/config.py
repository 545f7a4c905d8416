"""Settings read from the environment, and where we are running.

Nothing is read at import time. Each accessor reads `os.environ` when called (a few
microseconds), so tests use `monkeypatch.setenv` and a warm instance sees no stale value.
A variable a feature needs but that is unset raises `ConfigurationError` naming it, at the
first request that needs it; endpoints that do not need it are unaffected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from lib.errors import ConfigurationError

PAYDUNYA_ROOTS = {
    "test": "https://app.paydunya.com/sandbox-api/v1",
    "live": "https://app.paydunya.com/api/v1",
}


def _get(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def require(name: str, hint: str | None = None) -> str:
    """The value of `name`, or `ConfigurationError` naming it."""
    value = _get(name)
    if value is None:
        raise ConfigurationError(name, hint)
    return value


def environment() -> str:
    """`vercel-production|preview|development`, `dakar` or `local` (reported by /api/health)."""
    if _get("VERCEL") == "1":
        return f"vercel-{_get('VERCEL_ENV') or 'development'}"
    if (_get("DOUSELL_DEPLOYMENT") or "").lower() == "dakar":
        return "dakar"
    return "local"


def namespace() -> str:
    """Prefix of every Redis key (`CACHE_NAMESPACE`, default `dousell`)."""
    return _get("CACHE_NAMESPACE") or "dousell"


@dataclass(frozen=True)
class Upstash:
    url: str
    token: str


def upstash() -> Upstash:
    """Upstash REST endpoint; falls back to the `KV_REST_API_*` names of Vercel's integration."""
    url = _get("UPSTASH_REDIS_REST_URL") or _get("KV_REST_API_URL")
    token = _get("UPSTASH_REDIS_REST_TOKEN") or _get("KV_REST_API_TOKEN")
    if url is None:
        raise ConfigurationError("UPSTASH_REDIS_REST_URL", "or KV_REST_API_URL")
    if token is None:
        raise ConfigurationError("UPSTASH_REDIS_REST_TOKEN", "or KV_REST_API_TOKEN")
    return Upstash(url.rstrip("/"), token)


def supabase_url() -> str:
    return require("SUPABASE_URL").rstrip("/")


def supabase_anon_key() -> str:
    return require("SUPABASE_ANON_KEY")


def supabase_service_role_key() -> str:
    return require("SUPABASE_SERVICE_ROLE_KEY")


def supabase_jwt_issuer() -> str:
    """The `iss` of the project's tokens. Supabase keeps `https://<ref>.supabase.co/auth/v1` behind a
    custom domain, so a SUPABASE_URL on one needs SUPABASE_JWT_ISSUER beside it."""
    explicit = _get("SUPABASE_JWT_ISSUER")
    return explicit.rstrip("/") if explicit else f"{supabase_url()}/auth/v1"


def supabase_jwt_secret() -> str | None:
    """Only legacy HS256 projects set it; otherwise tokens are checked against the JWKS."""
    return _get("SUPABASE_JWT_SECRET")


_YES = frozenset({"1", "true", "yes", "on"})
_NO = frozenset({"0", "false", "no", "off"})


def supabase_jwt_keep_legacy_hs256() -> bool:
    """SUPABASE_JWT_KEEP_LEGACY_HS256: accept HS256 tokens even though the project's JWKS serves
    signing keys (the weeks of a migration while old sessions expire). Unset: no."""
    raw = (_get("SUPABASE_JWT_KEEP_LEGACY_HS256") or "").lower()
    if raw and raw not in _YES | _NO:
        raise ConfigurationError("SUPABASE_JWT_KEEP_LEGACY_HS256", "'true' or 'false'")
    return raw in _YES


@dataclass(frozen=True)
class PayDunya:
    master_key: str
    private_key: str
    token: str
    mode: str
    base_url: str


# Where a sandbox "completed" would be taken as rent paid: PAYDUNYA_MODE must be said there.
PAYDUNYA_MODE_REQUIRED_IN = frozenset({"vercel-production", "dakar"})


def paydunya_mode() -> str:
    """`test` or `live`. Unset means `test` only where no real rent is paid (local, previews); in
    `vercel-production` and `dakar` an unset value is a ConfigurationError naming PAYDUNYA_MODE,
    so sandbox keys can never settle real rent by default."""
    raw = _get("PAYDUNYA_MODE")
    if raw is None:
        if environment() in PAYDUNYA_MODE_REQUIRED_IN:
            raise ConfigurationError("PAYDUNYA_MODE", f"'test' or 'live', required in {environment()}")
        return "test"
    mode = raw.lower()
    if mode not in PAYDUNYA_ROOTS:
        raise ConfigurationError("PAYDUNYA_MODE", "must be 'test' or 'live'")
    return mode


def paydunya() -> PayDunya:
    mode = paydunya_mode()
    return PayDunya(
        master_key=require("PAYDUNYA_MASTER_KEY"),
        private_key=require("PAYDUNYA_PRIVATE_KEY"),
        token=require("PAYDUNYA_TOKEN"),
        mode=mode,
        base_url=(_get("PAYDUNYA_BASE_URL") or PAYDUNYA_ROOTS[mode]).rstrip("/"),
    )


def public_base_url() -> str:
    """Base of the return/cancel/callback URLs given to PayDunya."""
    explicit = _get("PUBLIC_BASE_URL")
    if explicit:
        return explicit.rstrip("/")
    host = _get("VERCEL_PROJECT_PRODUCTION_URL") if _get("VERCEL_ENV") == "production" else None
    host = host or _get("VERCEL_URL")
    if host:
        return f"https://{host}"
    raise ConfigurationError("PUBLIC_BASE_URL", "or VERCEL_URL on Vercel")


def valkey_url() -> str | None:
    """The Dakar server's Valkey (`redis://[:password@]host:port/db`, `rediss://` for TLS): when set
    outside Vercel, the edge speaks RESP over TCP to it (lib/edge/valkey). Ignored on Vercel, where
    only Upstash REST is used. A scheme other than redis:// or rediss:// is a ConfigurationError."""
    if _get("VERCEL") == "1":
        return None
    url = _get("VALKEY_URL")
    if url is not None and not url.startswith(("redis://", "rediss://")):
        raise ConfigurationError("VALKEY_URL", "redis://[:password@]host:port/db or rediss://")
    return url


def trusted_proxies() -> tuple[str, ...]:
    """`TRUSTED_PROXIES`: the addresses or CIDRs of the reverse proxy in front of the Dakar server,
    comma-separated; `X-Forwarded-For` is believed only from them. Empty when unset."""
    return tuple(part.strip() for part in (_get("TRUSTED_PROXIES") or "").split(",") if part.strip())


def require_cache() -> None:
    """ConfigurationError unless a Redis is configured: VALKEY_URL outside Vercel, else Upstash's variables."""
    if valkey_url() is None:
        upstash()


def alert_webhook_url() -> str | None:
    """Where the cron POSTs alerts as `{"text": ...}` (Slack, Mattermost, Discord's /slack); None: log only."""
    return _get("ALERT_WEBHOOK_URL")
