"""POST /api/paydunya/ipn: PayDunya's callback (form-encoded, no Authorization; the hash is checked).

Callbacks whose hash is wrong are rate-limited per client address (someone guessing it); a valid
one is never counted, so PayDunya is never throttled.
"""

from typing import Any

from lib.domain import settle
from lib.errors import InvalidSignature
from lib.web import ratelimit
from lib.web.http import Endpoint
from lib.web.request import Request


class handler(Endpoint):
    def post(self, req: Request) -> dict[str, Any]:
        return receive(req.body, req.header("Content-Type"), req.headers)


def receive(body: bytes, content_type: str | None, headers: Any) -> dict[str, Any]:
    """The callback applied (lib/domain/settle); a refused one counted against its address (bench/costs runs this too)."""
    try:
        return settle.receive_ipn(body, content_type)
    except InvalidSignature:
        ratelimit.hit("ipn", ratelimit.client_ip(headers))  # 429 once past the limit
        raise
