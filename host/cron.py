"""`python -m host.cron URL`: one cron call, as Vercel Cron makes it (the systemd timer of deploy/dakar runs it).

`GET URL` with `Authorization: Bearer $CRON_SECRET` (read from the environment, never from the
command line) and its own user agent; prints the answer's status and body on one line and
exits 0 on a 2xx, 1 otherwise (systemd then records the run as failed; the next minute retries).
"""

from __future__ import annotations

import sys

import httpx

from lib import config
from lib.errors import ConfigurationError


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].startswith(("http://", "https://")):
        print("usage: python -m host.cron http://127.0.0.1:3100/api/cron/reconcile", file=sys.stderr)
        return 2
    try:
        secret = config.require("CRON_SECRET")
    except ConfigurationError:
        print("CRON_SECRET is not set: the cron endpoint would refuse the call", file=sys.stderr)
        return 1
    try:
        response = httpx.get(args[0], headers={"Authorization": f"Bearer {secret}", "User-Agent": "dousell-cron/1.0 (systemd timer)"},
                             timeout=45)
    except httpx.HTTPError as exc:
        print(f"GET {args[0]} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"GET {args[0]} -> {response.status_code} {response.text[:500]}")
    return 0 if response.is_success else 1


if __name__ == "__main__":
    sys.exit(main())
