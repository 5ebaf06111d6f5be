"""Multiaddr helpers for the TCP transport, on top of the ``multiaddr`` package."""

from __future__ import annotations

import functools
import ipaddress
import socket

from multiaddr import Multiaddr
from multiaddr.exceptions import Error as _MultiaddrError

from aicn.p2p.peerid import InvalidPeerID, PeerID


class InvalidMultiaddr(ValueError):
    """A multiaddr is malformed or not one this transport can use."""


def parse(text: str | bytes | Multiaddr) -> Multiaddr:
    """Parse text or binary multiaddr; :class:`InvalidMultiaddr` on failure."""
    if isinstance(text, Multiaddr):
        return text
    try:
        return Multiaddr(text)
    except (_MultiaddrError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise InvalidMultiaddr(f"invalid multiaddr {text!r}: {exc}") from None


@functools.lru_cache(maxsize=4096)
def _text_of(binary: bytes) -> str:
    return str(Multiaddr(binary))


def to_text(addr: Multiaddr) -> str:
    """``str(addr)``, memoised: the ``multiaddr`` package re-decodes the binary
    form on every ``str()``, which dominated ``/api/v0/id``."""
    return _text_of(addr.to_bytes())


def split_peer(addr: str | Multiaddr) -> tuple[Multiaddr, PeerID | None]:
    """Split ``…/p2p/<id>`` into the transport part and the peer ID.

    A circuit address keeps its relay part: for
    ``/ip4/…/tcp/…/p2p/R/p2p-circuit/p2p/T`` the result is the address up to
    ``/p2p-circuit`` and ``T``.
    """
    ma = parse(addr)
    items = list(ma.items())
    if not items or items[-1][0].name != "p2p":
        return ma, None
    try:
        peer = PeerID.from_string(items[-1][1])
    except InvalidPeerID as exc:
        raise InvalidMultiaddr(f"invalid peer ID in {ma}: {exc}") from None
    transport = ma.decapsulate(Multiaddr(f"/p2p/{items[-1][1]}"))
    return transport, peer


def tcp_target(addr: Multiaddr) -> tuple[str, str, int]:
    """``(kind, host, port)`` of a ``/ip4|ip6|dns|dns4|dns6/…/tcp/…`` address.

    ``kind`` is the first protocol's name.  Anything else (extra components,
    other transports) raises :class:`InvalidMultiaddr`.
    """
    items = list(parse(addr).items())
    if len(items) != 2 or items[1][0].name != "tcp":
        raise InvalidMultiaddr(f"{addr} is not a TCP address")
    kind, host = items[0][0].name, items[0][1]
    if kind not in ("ip4", "ip6", "dns", "dns4", "dns6"):
        raise InvalidMultiaddr(f"{addr} has an unsupported network protocol {kind}")
    port = int(items[1][1])
    return kind, host, port


def _ip_address(host: str):
    """An IP address from text, without an IPv6 zone, IPv4-mapped addresses unmapped."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip


def ip_of(addr):
    """The IP address of a ``/ip4|ip6/…/tcp/…`` multiaddr, or ``None`` (DNS names,
    other transports, malformed addresses)."""
    if addr is None:
        return None
    try:
        kind, host, _ = tcp_target(parse(addr))
        if kind not in ("ip4", "ip6"):
            return None
        return _ip_address(host)
    except (InvalidMultiaddr, ValueError):
        return None


def tcp_multiaddr(host: str, port: int) -> Multiaddr:
    """The ``/ip4|ip6/<host>/tcp/<port>`` multiaddr of an IP address."""
    ip = _ip_address(host)
    family = "ip4" if ip.version == 4 else "ip6"
    return Multiaddr(f"/{family}/{ip}/tcp/{port}")


def is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::")


def interface_addresses(version: int) -> list[str]:
    """Addresses of this host's interfaces for IP ``version`` (4 or 6), loopback first."""
    import psutil

    family = socket.AF_INET if version == 4 else socket.AF_INET6
    found = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family != family:
                continue
            host = a.address.split("%", 1)[0]
            ip = ipaddress.ip_address(host)
            if ip.is_link_local:  # needs a zone; useless in a multiaddr
                continue
            found.append(ip)
    found = sorted(set(found), key=lambda ip: (not ip.is_loopback, ip.packed))
    return [str(ip) for ip in found]


def expand_wildcard(addr: Multiaddr) -> list[Multiaddr]:
    """Replace a ``0.0.0.0``/``::`` listen address by one per interface address."""
    kind, host, port = tcp_target(addr)
    if not is_wildcard(host):
        return [addr]
    return [tcp_multiaddr(ip, port) for ip in interface_addresses(4 if kind == "ip4" else 6)]


def is_public(addr: Multiaddr) -> bool:
    """Whether an IP multiaddr is globally routable (not loopback/private/link-local)."""
    try:
        kind, host, _ = tcp_target(addr)
    except InvalidMultiaddr:
        return False
    if kind.startswith("dns"):
        return True
    return ipaddress.ip_address(host).is_global
