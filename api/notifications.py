"""GET /api/notifications: the signed-in user's notifications, newest first (cached 1 min)."""

from lib import account
from lib.http import Endpoint


class handler(Endpoint):
    def get(self, req):
        return {"notifications": account.notifications(req.user())}
