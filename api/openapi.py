"""GET /api/openapi: the OpenAPI 3.1 document of the contract (`openapi.json`, bundled with every function).

Read and parsed once per warm instance. `Cache-Control: no-store` like every answer: the
document is small, rarely fetched, and a deploy that changes the contract must show at once.
"""

import json
from pathlib import Path
from typing import Any

from lib.web.http import Endpoint
from lib.web.request import Request

DOCUMENT = Path(__file__).resolve().parent.parent / "openapi.json"
_document: dict[str, Any] | None = None


def document() -> dict[str, Any]:
    global _document
    if _document is None:
        _document = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    return _document


class handler(Endpoint):
    def get(self, req: Request) -> dict[str, Any]:
        return document()
