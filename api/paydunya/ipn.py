"""POST /api/paydunya/ipn: PayDunya's callback (form-encoded, no Authorization; the hash is checked)."""

from lib import payments
from lib.http import Endpoint


class handler(Endpoint):
    def post(self, req):
        return payments.receive_ipn(req.body, req.header("Content-Type"))
