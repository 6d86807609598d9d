"""
Client addresses: parsing what a peer or ``X-Forwarded-For`` names, and the
trusted proxies whose ``X-Forwarded-For`` is believed. No Twisted here, so
that the configuration can validate entries with the same code.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Optional, Union


def parse_address(
    text: str,
) -> Optional[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]]:
    """
    The address ``text`` names (an IPv4-mapped IPv6 address as its IPv4
    address; brackets and a zone allowed), or ``None``.
    """
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        parsed = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


class TrustedProxies:
    """
    The peers whose ``X-Forwarded-For`` is believed: addresses and networks
    (``10.0.0.0/8``, ``fd00::/8``), tested with ``in``.

    A peer's address is first looked up as written (the common case, a set
    lookup); only when that misses and networks were given is it parsed.

    :param entries: addresses or networks in CIDR notation.
    :raises ValueError: for an entry that is neither.
    """

    def __init__(self, entries: Iterable[str]) -> None:
        networks = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                raise ValueError(
                    "%r is not an IP address or network" % (entry,)
                ) from None
        self._exact = frozenset(
            str(n.network_address) for n in networks if n.num_addresses == 1
        )
        self._networks = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __contains__(self, host: object) -> bool:
        if host in self._exact:
            return True
        if not self._networks or not isinstance(host, str):
            return False
        address = parse_address(host.strip())
        if address is None:
            return False
        return any(address in network for network in self._networks)
