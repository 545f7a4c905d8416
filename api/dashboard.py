"""GET /api/dashboard: an owner's figures (cached 30 min, invalidated by their writes and payments)."""

from typing import Any

from lib import account
from lib.http import Endpoint
from lib.request import Request


class handler(Endpoint):
    def get(self, req: Request) -> dict[str, Any]:
        return {"dashboard": account.dashboard(req.user())}
