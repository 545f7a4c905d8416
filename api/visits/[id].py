"""DELETE /api/visits/{id}: the visitor or the property's owner cancels a visit; its slot is free again at once."""

from typing import Any

from lib.domain import visits
from lib.web.http import Endpoint
from lib.web.request import Request


class handler(Endpoint):
    path_param = "id"

    def delete(self, req: Request) -> dict[str, Any]:
        user = req.user()
        req.rate_limit(user)
        req.refuse_unknown_query(set())
        return {"visit": visits.cancel(user, req.path_id())}
