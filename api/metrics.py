"""GET /api/metrics?window=1h|24h|7d: the KPIs, their series and the alerts, for `Authorization: Bearer $METRICS_TOKEN`."""

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
        window = req.query.get("window", "1h")
        if report.window_name(window) is None:  # `last_hour`, `last_24h`: the first page's names, still answered
            raise InvalidFilter(details=[{"field": "window", "code": "literal_error",
                                          "message": "Fenêtre attendue : 1h, 24h ou 7d."}])
        return report.report(window)
