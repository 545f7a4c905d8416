"""GET /api/cron/reconcile: Vercel Cron, every minute (`crons` in vercel.json); each job catches up on what was missed."""

from typing import Any

from lib import bearer
from lib.cache import outbox
from lib.domain import settle
from lib.ops import alerts, cron
from lib.web.http import Endpoint
from lib.web.request import Request

JOBS: list[cron.Job] = [
    ("invalidations", outbox.reconcile),  # the outbox: lost webhooks, changes made while Redis was down
    ("payments", settle.reconcile),  # lost IPNs: pending invoices older than 10 minutes asked again
    ("alerts", alerts.run),  # objectives missed for minutes in a row: logged, shown, POSTed to ALERT_WEBHOOK_URL
]


class handler(Endpoint):
    def get(self, req: Request) -> dict[str, Any]:
        bearer.require_secret(req.header("Authorization"), "CRON_SECRET", "cron")
        req.refuse_unknown_query(set())
        return cron.run_jobs(JOBS)
