"""host/proxy: X-Forwarded-For is believed only from TRUSTED_PROXIES, read from the right."""

from __future__ import annotations

import pytest

from host import proxy

PROXY = proxy.networks(["127.0.0.1", "10.0.0.0/8", "::1"])


@pytest.mark.parametrize(("peer", "forwarded", "client"), [
    ("203.0.113.7", ["198.51.100.1"], "203.0.113.7"),  # not through our proxy: the header is the caller's word
    ("127.0.0.1", ["198.51.100.1"], "198.51.100.1"),  # our proxy says who connected to it
    ("127.0.0.1", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),  # the caller's own entry is left of what the proxy adds
    ("127.0.0.1", ["198.51.100.1, 10.1.2.3"], "198.51.100.1"),  # two of our proxies in a row
    ("127.0.0.1", ["6.6.6.6", "198.51.100.1"], "198.51.100.1"),  # the header twice: read as one list
    ("127.0.0.1", [], "127.0.0.1"),  # a request made on the server itself
    ("127.0.0.1", ["not-an-address"], "127.0.0.1"),  # unreadable: the last address vouched for
    ("127.0.0.1", ["198.51.100.1:4711"], "198.51.100.1"),
    ("::ffff:127.0.0.1", ["2001:db8::5"], "2001:db8::5"),  # IPv4 mapped in IPv6 is the same proxy
    ("::1", ["[2001:db8::5]:443"], "2001:db8::5"),
])
def test_the_client_is_the_nearest_hop_that_is_not_our_proxy(peer, forwarded, client):
    assert proxy.client_address(peer, forwarded, PROXY) == client


def test_without_trusted_proxies_the_connecting_address_is_the_client():
    assert proxy.client_address("127.0.0.1", ["198.51.100.1"], ()) == "127.0.0.1"


def test_a_bad_entry_in_trusted_proxies_is_named():
    with pytest.raises(ValueError, match="'10.0.0.300'"):
        proxy.networks(["10.0.0.1", "10.0.0.300"])
