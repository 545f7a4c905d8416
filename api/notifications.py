"""GET /api/notifications: the signed-in user's notifications, newest first (cached 1 min)."""

from typing import Any

from lib.domain import account
from lib.web.http import Endpoint
from lib.web.request import Request


class handler(Endpoint):
    def get(self, req: Request) -> dict[str, Any]:
        return {"notifications": account.notifications(req.user())}
