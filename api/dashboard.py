"""GET /api/dashboard: an owner's figures (cached 30 min, invalidated by their writes and payments)."""

from typing import Any

from lib.domain import account
from lib.web.http import Endpoint
from lib.web.request import Request


class handler(Endpoint):
    def get(self, req: Request) -> dict[str, Any]:
        return {"dashboard": account.dashboard(req.user())}
