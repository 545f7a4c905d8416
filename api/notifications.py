"""GET /api/notifications: the signed-in user's notifications, newest first (cached 1 min)."""

from typing import Any

from lib import account
from lib.http import Endpoint
from lib.request import Request


class handler(Endpoint):
    def get(self, req: Request) -> dict[str, Any]:
        return {"notifications": account.notifications(req.user())}
