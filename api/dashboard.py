"""GET /api/dashboard: an owner's figures (cached 30 min, invalidated by their writes and payments)."""

from lib import account
from lib.http import Endpoint


class handler(Endpoint):
    def get(self, req):
        return {"dashboard": account.dashboard(req.user())}
