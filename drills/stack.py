"""The whole local stack for one drills run: `python -m devstack up` WITH the API (vercel dev) on free ports.

bench/stack.py starts only the stand-ins (`--no-api`); the drills go through the real API, so this
starts the same way but with `vercel dev`, and reuses bench's LocalStack (ports, admin client, stop).
"""

from __future__ import annotations

from bench.stack import LocalStack
from devstack import child
from devstack.__main__ import ANON_KEY, SERVICE_ROLE_KEY, UPSTASH_TOKEN

START_TIMEOUT = 600.0  # vercel dev, and the build and first answer of every function


class DrillStack(LocalStack):
    """LocalStack plus what the drills need: the API, sign-in, Redis commands, the other switches."""

    ADMIN_TIMEOUT = 30.0

    @property
    def api_url(self) -> str:
        return self.url("api")

    def user_id(self, email: str) -> str:
        r = self.admin.get(f"{self.supabase_url}/auth/v1/user",
                           headers={"apikey": ANON_KEY, "Authorization": f"Bearer {self.token(email)}"})
        r.raise_for_status()
        return r.json()["id"]

    def redis_delay(self, ms: float) -> None:
        self.admin.post(f"{self.upstash_url}/__devstack/delay", json={"ms": ms},
                        headers={"Authorization": f"Bearer {UPSTASH_TOKEN}"}).raise_for_status()

    def db_mode(self, mode: str, hang_seconds: float | None = None) -> None:
        body: dict = {"mode": mode}
        if hang_seconds is not None:
            body["hang_seconds"] = hang_seconds
        self._supabase("POST", "mode", body)

    def paydunya(self, method: str, path: str, payload: dict | None = None) -> dict:
        r = self.admin.request(method, f"{self.paydunya_url}/__devstack/{path}", json=payload)
        r.raise_for_status()
        return r.json() if r.content else {}

    def rows(self, table: str, select: str = "*", **filters: str) -> list[dict]:
        """Rows as the service role (no RLS): the ground truth the drills count."""
        r = self.admin.get(f"{self.supabase_url}/rest/v1/{table}", params={"select": select, **filters},
                           headers={"apikey": SERVICE_ROLE_KEY, "Authorization": f"Bearer {SERVICE_ROLE_KEY}"})
        r.raise_for_status()
        return r.json()


def start(timeout: float = START_TIMEOUT) -> DrillStack:
    """`python -m devstack up` on free ports (as bench/stack.py, but with the API); waits for `ready`."""
    return child.start(api=True, purpose="drills", timeout=timeout, cls=DrillStack)
