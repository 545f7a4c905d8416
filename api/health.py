"""GET /api/health: the API is up; Redis and the database are probed, each within about a second."""

from lib.ops import health
from lib.web.http import Endpoint, Reply
from lib.web.request import Request


class handler(Endpoint):
    def get(self, req: Request) -> Reply:
        body, database_up = health.check()
        return Reply(body, 200 if database_up else 503)
