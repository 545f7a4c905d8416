"""The edge: transports to the outside services (Upstash REST, its SDK adapter, the breaker, PayDunya)."""
