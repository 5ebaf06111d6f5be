"""The bootstrap peers at runtime: Go v0.2.3's ``/bootstrap/list``, ``/add`` and ``/rm``.

The list starts as the node's ``Bootstrap`` setting.  Adding dials the
address (60 s, as Go), and once connected keeps its addresses permanently,
protects the peer from trimming (as the startup dials do) and hands it to
the DHT and the relay client as they got the configured ones.  Removing
hangs up, forgets the peer's addresses and drops its protection.  As Go
does, both write the change to the config file the node was started with
(only its ``Bootstrap`` list changes, :func:`aicn.config.update_bootstrap`);
a node started without one keeps the change in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from twisted.internet.defer import Deferred

from aicn.config import ConfigError, parse_bootstrap_addr, update_bootstrap
from aicn.errors import AICNError, ErrorCode, parameter_error
from aicn.log import Logger
from aicn.node.dialhistory import BOOTSTRAP_TAG
from aicn.p2p import maddr
from aicn.p2p.peerid import PeerID
from aicn.p2p.peerstore import PERMANENT_ADDR_TTL

__all__ = ["BOOTSTRAP_DIAL_TIMEOUT", "BootstrapPeers"]

log = Logger()

#: How long ``/bootstrap/add`` waits for its dial (the Go node: 60 s).
BOOTSTRAP_DIAL_TIMEOUT = 60.0


class BootstrapPeers:
    """The node's bootstrap list, changed at runtime.

    :param host: the libp2p host (dials, peerstore).
    :param addrs: the configured list.
    :param connmgr: protects bootstrap peers (optional).
    :param dht: its ``bootstrap_peers`` gain the added ones (optional).
    :param relay_client: uses added peers as relays, as the configured ones (optional).
    :param config_path: the config file to write changes to, or None.
    """

    def __init__(self, host, clock, addrs: Iterable[str] = (), *, connmgr=None, dht=None, relay_client=None,
                 config_path: str | Path | None = None, dial_timeout: float = BOOTSTRAP_DIAL_TIMEOUT) -> None:
        self.host = host
        self.clock = clock
        self._addrs: list[str] = list(dict.fromkeys(addrs))
        self.connmgr = connmgr
        self.dht = dht
        self.relay_client = relay_client
        self.config_path = Path(config_path) if config_path is not None else None
        self.dial_timeout = dial_timeout

    def list(self) -> list[str]:
        """The bootstrap multiaddrs, configured ones first."""
        return list(self._addrs)

    def _parse(self, text: str) -> tuple[str, object, PeerID]:
        try:
            canonical = parse_bootstrap_addr(text)
            transport, peer = maddr.split_peer(canonical)
        except (ValueError, maddr.InvalidMultiaddr) as exc:
            raise parameter_error(f"invalid node_addr: {exc}") from None
        if peer == self.host.peer_id:
            raise parameter_error("Cannot connect to the node itself")
        return canonical, transport, peer

    async def add(self, text: str) -> None:
        """Dial ``text``; once connected keep it (see the module docstring).  1001 for an address
        that is not ``…/p2p/<id>`` or is ours, 5000 when the dial or the config write fails."""
        canonical, transport, peer = self._parse(text)
        addrs = [transport] if str(transport) else []
        if addrs:
            self.host.peerstore.add_addrs(peer, [transport.to_bytes()], PERMANENT_ADDR_TTL)
        if not self.host.is_connected(peer):
            try:
                d = Deferred.fromCoroutine(self.host.connect(peer, addrs or None))
                await d.addTimeout(self.dial_timeout, self.clock)
            except Exception as exc:  # DialError, timeout: the reason goes to the client
                log.info("bootstrap/add {addr}: dial failed: {error}", addr=canonical, error=exc)
                raise AICNError(ErrorCode.INTERNAL, f"Internal server error: {exc}") from None
        if self.connmgr is not None:
            self.connmgr.protect(peer, BOOTSTRAP_TAG)
        if self.dht is not None and all(p != peer for p, _ in self.dht.bootstrap_peers):
            self.dht.bootstrap_peers.append((peer, addrs))
        if self.relay_client is not None:
            self.relay_client.add_relay(peer, addrs)
        if canonical not in self._addrs:
            self._save(add=canonical)
            self._addrs.append(canonical)
            log.info("Bootstrap peer added: {addr}", addr=canonical)

    async def remove(self, text: str) -> None:
        """Hang up on the peer of ``text`` and forget it (see the module docstring)."""
        canonical, _transport, peer = self._parse(text)
        if self.host.is_connected(peer):
            self.host.disconnect(peer)
        self.host.peerstore.clear_addrs(peer)
        if self.connmgr is not None:
            self.connmgr.unprotect(peer, BOOTSTRAP_TAG)
        if self.dht is not None:
            self.dht.bootstrap_peers[:] = [(p, a) for p, a in self.dht.bootstrap_peers if p != peer]
        if canonical in self._addrs:
            self._save(remove=canonical)
            self._addrs.remove(canonical)
            log.info("Bootstrap peer removed: {addr}", addr=canonical)

    def _save(self, **change) -> None:
        if self.config_path is None:
            return
        try:
            update_bootstrap(self.config_path, **change)
        except (ConfigError, OSError) as exc:
            log.error("Cannot save the bootstrap list to {path}: {error}", path=str(self.config_path),
                      error=exc)
            raise AICNError(ErrorCode.INTERNAL, f"config save err {exc}") from None
