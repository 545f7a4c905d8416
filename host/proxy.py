"""The client's address behind the reverse proxy: `X-Forwarded-For` believed only from TRUSTED_PROXIES.

Vercel overwrites `X-Forwarded-For` with the client's address, so lib/web/ratelimit.client_ip reads
its first entry. The host does the same before a handler sees the request: it replaces the header
with the one address it resolved here, so the rate limits and the IPN limit count the same thing on
both homes and a caller can never choose the address it is counted under.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(entries: Sequence[str]) -> tuple[Network, ...]:
    """TRUSTED_PROXIES' entries as networks (`10.0.0.1`, `10.0.0.0/8`, `::1`); ValueError names a bad one."""
    out: list[Network] = []
    for entry in entries:
        try:
            out.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as exc:
            raise ValueError(f"TRUSTED_PROXIES: {entry!r} is not an address or a CIDR") from exc
    return tuple(out)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address, trusted: tuple[Network, ...]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def client_address(peer: str, forwarded_for: Sequence[str], trusted: tuple[Network, ...]) -> str:
    """Who sent the request: `peer` (the connecting address) unless it is a trusted proxy; then the
    nearest `X-Forwarded-For` hop (read right to left, each appended by the proxy after it) that is
    not one of ours. An unreadable hop stops the walk at the last address vouched for."""
    current = _address(peer)
    if current is None:
        return peer
    hops = [hop for header in forwarded_for for hop in header.split(",") if hop.strip()]
    while _trusted(current, trusted) and hops:
        previous = _address(hops.pop())
        if previous is None:
            break
        current = previous
    return str(current)
