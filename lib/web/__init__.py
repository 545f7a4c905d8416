"""The web layer: the handler base, request parsing, the Idempotency-Key replay, the rate limits."""
