"""POST /api/paydunya/ipn: PayDunya's callback (form-encoded, no Authorization; the hash is checked).

Callbacks whose hash is wrong are rate-limited per client address (someone guessing it); a valid
one is never counted, so PayDunya is never throttled.
"""

from typing import Any

from lib import ratelimit, settle
from lib.errors import InvalidSignature
from lib.http import Endpoint
from lib.request import Request


class handler(Endpoint):
    def post(self, req: Request) -> dict[str, Any]:
        try:
            return settle.receive_ipn(req.body, req.header("Content-Type"))
        except InvalidSignature:
            ratelimit.hit("ipn", ratelimit.client_ip(req.headers))  # 429 once past the limit
            raise
