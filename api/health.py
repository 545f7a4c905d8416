"""GET /api/health: the API is up; Redis and the database are probed, each within about a second."""

from lib import health
from lib.http import Endpoint, Reply
from lib.request import Request


class handler(Endpoint):
    def get(self, req: Request) -> Reply:
        body, database_up = health.check()
        return Reply(body, 200 if database_up else 503)
