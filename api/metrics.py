"""GET /api/metrics?window=last_hour|last_24h: the seed's KPIs, for `Authorization: Bearer $METRICS_TOKEN`."""

from typing import Any

from lib import bearer
from lib.errors import InvalidFilter
from lib.ops import report
from lib.web.http import Endpoint
from lib.web.request import Request


class handler(Endpoint):
    def get(self, req: Request) -> dict[str, Any]:
        bearer.require_secret(req.header("Authorization"), "METRICS_TOKEN", "metrics", label="Jeton de métriques")
        req.refuse_unknown_query({"window"}, InvalidFilter)
        window = req.query.get("window", "last_hour")
        if window not in report.WINDOWS:
            raise InvalidFilter(details=[{"field": "window", "code": "literal_error",
                                          "message": "Fenêtre attendue : last_hour ou last_24h."}])
        return report.report(window)
